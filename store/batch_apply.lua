-- The batch script, part 7 of 7: applying each event, the batch's loop and its writes.

local function apply(kind, cid, ts, days, a1, a2, a3, a4, dims)
  local c = customer(cid)
  local t = tonumber(ts)
  local idx = customer_index(c, t)
  c.touched = true
  if dims ~= '' then attributes(c, idx, t, dims) end
  if not batch_first or t < batch_first_n then batch_first, batch_first_n = ts, t end
  if not batch_last or t > batch_last_n then batch_last, batch_last_n = ts, t end
  if kind == 'o' then
    if a3 ~= '' then attribute(c, idx, t, CURRENCY, a3) end
    if a1 == 'placed' then
      local hi, lo = money(a2)
      local bd, bw, bm = placed_in_periods(c, days)
      local count, d = c.f.d, days.dn
      if count[d] == nil then
        fit_grid_day(c, d)
        count[d] = 1
      else
        count[d] = count[d] + 1
      end
      add(c, 'o', 1)
      add_money(c.f, 'pm', 'ph', hi, lo)
      if a3 ~= '' then add_money(c.f, 'pm:' .. a3, 'ph:' .. a3, money(a4)) end
      last_order(c, t, a2)
      placed_sales(days, hi, lo, bd, bw, bm)
      day_revenue(days, idx, hi, lo, true)
      if kind_counts_activity.o then activity(c, idx, t, days) end
    elseif a1 == 'refunded' then
      local hi, lo = money(a2)
      add(c, 'rf', 1)
      add_money(c.f, 'rm', 'rh', hi, lo)
      if a3 ~= '' then add_money(c.f, 'rm:' .. a3, 'rh:' .. a3, money(a4)) end
      refunded_sales(days, hi, lo)
      day_revenue(days, idx, hi, lo, false)
    else
      add(c, 'cx', 1)
    end
  elseif kind == 'l' then
    add(c, 'lg', 1)
    put_max(c, 'll', t)
    if kind_counts_activity.l then activity(c, idx, t, days) end
  else
    if a1 == 'rated' then
      local cur = c.f[a3 .. 't']
      if not cur or t >= cur then
        survey_totals(a3, c.f[a3], a4)
        put(c, a3, tonumber(a4))
        put(c, a3 .. 't', t)
      end
    else
      apply_ticket(c, cid, ts, a1, a2)
    end
    if kind_counts_activity.s then activity(c, idx, t, days) end
  end
end

local records = cjson.decode(ARGV[7])
local floors = nil
if ARGV[8] ~= '' then floors = cjson.decode(ARGV[8]) end
local ranges = cjson.decode(ARGV[9])
-- each partition's fate for this batch is decided once, from the stored offset: records
-- up to `reach` are taken, those above it wait for the worker to seek back
local gaps, gap_list = {}, {}
local reach, reach_stamp = {}, {}
for tp, runs in pairs(ranges) do
  local stored = tonumber(redis.call('HGET', offsets_key, tp) or '-1')
  last_offsets[tp] = stored
  local last = stored
  for _, run in ipairs(runs) do
    local first, stop = tonumber(run[1]), tonumber(run[2])
    if floors then
      local wanted = math.max(last + 1, tonumber(floors[tp] or 0))
      if first > wanted then
        gaps[tp] = true
        gap_list[#gap_list + 1] = tp
        gap_list[#gap_list + 1] = wanted
        break
      end
    end
    if stop > last then
      last = stop
      reach_stamp[tp] = run[3]
    end
  end
  reach[tp] = last
end
-- Every customer the batch names is read before anything is written. One whose stored
-- state cannot be read (a piece lost or changed by hand) is set aside, so that it stops
-- nobody else: its events are refused as corrupt_state and listed for the worker to
-- dead-letter, and nothing of them is counted anywhere. The hash `corrupt` records it
-- (customer -> when first set aside, ms) and the set `corrupt:<customer>` its events
-- ('topic|partition|offset'), until `retention restore-customer` rebuilds it from the
-- topics and applies them.
-- A customer erased with `retention forget` has a tombstone in the shard's `forgotten`
-- hash: the SHA-1 of the store's tombstone key followed by its id. Its events are skipped,
-- counted as rejected (`forgotten`) and not dead-lettered, and the customer is never read.
local forgotten = {}
local FORGOTTEN = P .. 'forgotten'
if redis.call('EXISTS', FORGOTTEN) == 1 then
  local secret = redis.call('HGET', FORGOTTEN, '\0key') or ''
  for n = 1, #records do
    local cid = records[n][6]
    if records[n][1] ~= 'x' and forgotten[cid] == nil then
      forgotten[cid] = redis.call('HEXISTS', FORGOTTEN, redis.sha1hex(secret .. cid)) == 1
    end
  end
end
local corrupt, set_aside, corrupt_events = {}, {}, {}
for n = 1, #records do
  local r = records[n]
  if r[1] ~= 'x' and not forgotten[r[6]] and not corrupt[r[6]] and not customer(r[6]) then
    corrupt[r[6]] = true
    corrupt_events[r[6]] = {}
  end
end
-- 'topic|partition' and the per-topic counter names, built once per batch
local tp_names, accepted_names, duplicate_names = {}, {}, {}
-- per 'topic|partition', the offsets of this batch taken so far
local taken = {}
local days_of = {}
for n = 1, #records do
  local r = records[n]
  local kind, topic, partition = r[1], r[2], r[3]
  local offset = tonumber(r[4])
  local of_topic = tp_names[topic]
  if not of_topic then
    of_topic = {}
    tp_names[topic] = of_topic
    accepted_names[topic] = 'accepted|' .. topic
    duplicate_names[topic] = 'duplicate|' .. topic
  end
  local tp = of_topic[partition]
  if not tp then
    tp = topic .. '|' .. partition
    of_topic[partition] = tp
  end
  -- an offset the store holds (at or below the stored one), or one taken earlier in this
  -- batch (read twice around a seek back), is redelivered
  local seen_here = taken[tp]
  if not seen_here then
    seen_here = {}
    taken[tp] = seen_here
  end
  if offset <= last_offsets[tp] or seen_here[offset] then
    redelivered = redelivered + 1
  elseif offset > reach[tp] then
    -- beyond a gap: refused with the rest of its partition
  else
    seen_here[offset] = true
    -- the periods of a day (as text and as numbers), one table for the batch's events of
    -- that day
    local days = days_of[r[8]]
    if not days or days.w ~= r[9] or days.m ~= r[10] then
      days = {d = r[8], w = r[9], m = r[10],
        dn = tonumber(r[8]), wn = tonumber(r[9]), mn = tonumber(r[10])}
      days_of[r[8]] = days
    end
    if kind == 'x' then
      count('rejected|' .. topic .. '|' .. r[11])
      rejected = rejected + 1
    elseif forgotten[r[6]] then
      count('rejected|' .. topic .. '|forgotten')
      rejected = rejected + 1
    elseif corrupt[r[6]] then
      count('rejected|' .. topic .. '|corrupt_state')
      rejected = rejected + 1
      local where = tp .. '|' .. offset
      set_aside[#set_aside + 1] = where
      local own = corrupt_events[r[6]]
      own[#own + 1] = where
    elseif is_duplicate(r[5]) then
      count(duplicate_names[topic])
      duplicates = duplicates + 1
    else
      local ts = r[7]
      apply(kind, r[6], ts, days, r[11], r[12], r[13], r[14], r[16])
      count(accepted_names[topic])
      applied = applied + 1
      local t = tonumber(ts)
      if not newest[tp] or t > newest[tp][1] then newest[tp] = {t, ts} end
    end
  end
end

for name, n in pairs(counts) do
  redis.call('HINCRBY', stats_key, name, n)
end
for _, key in ipairs(total_keys) do
  local t = totals[key]
  for _, field in ipairs(t.order) do
    redis.call('HINCRBY', key, field, num(t.fields[field]))
  end
end
for _, key in ipairs(sales_keys) do
  local s = sales[key]
  for i = 1, #SALES_FIELDS do
    local field = SALES_FIELDS[i]
    if s[field] then redis.call('HINCRBY', key, field, num(s[field])) end
  end
  write_money(key, s, 'pm', 'ph')
  write_money(key, s, 'rm', 'rh')
end
-- revenue per customer and day (refunds make it negative), and the day's placed orders
-- and refunded micros: each low part stays within (-MEGA, MEGA), what passes is carried
-- into its high part
local function write_parts(key, low, high, lo, hi)
  local carry = mega_carry(lo)
  lo, hi = lo - carry * MEGA, hi + carry
  local l = redis.call('HINCRBY', key, low, num(lo))
  carry = mega_carry(l)
  if carry ~= 0 then redis.call('HINCRBY', key, low, num(-carry * MEGA)) end
  hi = hi + carry
  if hi ~= 0 then redis.call('HINCRBY', key, high, num(hi)) end
end
-- The placed orders of a customer's day are kept only when they are not 1, the count of
-- most days (`<number>:o` absent with `<number>` present means one order).
for _, key in ipairs(revenue_keys) do
  local r = revenue[key]
  for _, idx in ipairs(r.names) do
    local s = r.sums[idx]
    local was = redis.call('HMGET', key, idx, idx .. ':o')
    local before = 0
    if was[1] then before = tonumber(was[2] or '1') end
    local orders = before + s[3]
    write_parts(key, idx, idx .. ':h', s[1], s[2])
    if orders ~= 1 then
      if orders ~= before or not was[2] then redis.call('HSET', key, idx .. ':o', num(orders)) end
    elseif was[2] then
      redis.call('HDEL', key, idx .. ':o')
    end
    if s[4] ~= 0 or s[5] ~= 0 then write_parts(key, idx .. ':r', idx .. ':rh', s[4], s[5]) end
  end
end
if next_id and next_id > first_id then redis.call('SET', ids_key, num(next_id)) end
for _, cell in ipairs(grid_cells) do
  local delta = grid_deltas[cell]
  if delta ~= 0 and redis.call('HINCRBY', grid_key, cell, delta) <= 0 then
    redis.call('HDEL', grid_key, cell)
  end
end
keep_digests()
-- each changed customer's hash in one write. A customer whose state changed is due for a
-- lifecycle and risk evaluation: unless already waiting (its hash's `q`, the batch time of
-- its first change since its last evaluation), it joins the end of the changed queue,
-- which the evaluator serves oldest first (take_due.lua)
local queued = {}
for n = 1, #customer_order do
  local cid = customer_order[n]
  local c = customers[cid]
  local out = {}
  if c.touched and not c.q then
    out[1], out[2] = 'q', ARGV[3]  -- now, as text
    queued[#queued + 1] = cid
    if #queued >= 400 then
      redis.call('RPUSH', P .. 'dueq', unpack(queued))
      queued = {}
    end
  end
  if c.new_ix then
    out[#out + 1] = 'ix'
    out[#out + 1] = c.ix
  end
  if c.changed then
    -- the state is packed without the fields equal to their other, nor an empty `d`
    local f = c.f
    for i = 1, #SAME_AS do
      local name = SAME_AS[i][1]
      if f[name] ~= nil and f[name] == f[SAME_AS[i][2]] then f[name] = nil end
    end
    if next(f.d) == nil then f.d = nil end
    local pieces = cut_into(out, cmsgpack.pack(f), piece_name)
    if c.pieces > pieces then
      local gone = {}
      for i = pieces + 1, c.pieces do gone[#gone + 1] = piece_name(i) end
      redis.call('HDEL', c.key, unpack(gone))
    end
  end
  if #out > 0 then redis.call('HSET', c.key, unpack(out)) end
end
if #queued > 0 then redis.call('RPUSH', P .. 'dueq', unpack(queued)) end
for tp, last in pairs(reach) do
  if last > last_offsets[tp] then
    redis.call('HSET', offsets_key, tp, last)
    if reach_stamp[tp] ~= '' then redis.call('HSET', stamps_key, tp, reach_stamp[tp]) end
  end
end
if batch_first then
  set_min(meta_key, 'first', batch_first)
  set_max(meta_key, 'last', batch_last)
end
-- the newest event time per partition: the event-time watermark is their minimum
for tp, ts in pairs(newest) do
  set_max(newest_key, tp, ts[2])
end
for cid, own in pairs(corrupt_events) do
  redis.call('HSETNX', P .. 'corrupt', cid, ARGV[3])
  if #own > 0 then redis.call('SADD', P .. 'corrupt:' .. cid, unpack(own)) end
end
return {applied, duplicates, redelivered, rejected, gap_list, set_aside}
