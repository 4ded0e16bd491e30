-- Store an evaluation chunk's results and move the totals kept in step, atomically.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV[1] the shard's prefix; ARGV[2] JSON list of results, each
--   [customer, st, sc, rr, hv, at, no, cl, cr, bd] (status, risk score, reasons, high
--   value, evaluated at, orders, predicted CLTV, CLTV at risk (both empty without a
--   fitted model), risk band l/m/h; as text);
-- ARGV[3] JSON object: each result at risk's customer -> its rank in `atrisk`, as text;
-- ARGV[4] JSON list of the alerts these results raised, each [key, "kind|band|at|customer"]:
--   logged in `alog` once (a repeat after a crash keeps the first), for their outcomes.
-- One JSON argument each: far cheaper for the client to send than a command per customer.
--
-- The totals (lifecycle counts, customers and CLTV at risk per reason, high-value
-- customers at risk, predicted CLTV) move by each customer's new result minus the one
-- stored now, read here, in the same atomic call: whatever another evaluator stored in
-- between (two workers holding a shard for a moment during a rebalance, a lease that ran
-- out), the totals stay the sum over the stored evaluations. A customer whose hash is gone
-- (a rebuild wiped it) gets no result and moves nothing. Returns the results stored.
local P = ARGV[1]
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
local results = cjson.decode(ARGV[2])
local raised = cjson.decode(ARGV[4] or '[]')
for _, r in ipairs(results) do r[10] = r[10] or '' end
local ranks = cjson.decode(ARGV[3])
local NAMES = {'ev', 'ev2', 'ev3', 'ev4', 'ev5', 'ev6'}

-- `text` cut at each `sep` (a plain character), empty parts included.
local function split(text, sep)
  local out, from = {}, 1
  while true do
    local at = string.find(text, sep, from, true)
    if not at then
      out[#out + 1] = string.sub(text, from)
      return out
    end
    out[#out + 1] = string.sub(text, from, at - 1)
    from = at + 1
  end
end

-- A customer's stored evaluation {st, rr, hv, cl, cr, bd}, from the customer hash's
-- pieces; nil without one.
local function stored(cid)
  local pieces = redis.call('HMGET', P .. 'c:' .. cid, unpack(NAMES))
  if not pieces[1] then return nil end
  local v = split(joined(pieces), '|')
  return {st = v[1], rr = v[3], hv = v[4], cl = v[7], cr = v[8], bd = v[9]}
end

-- Sums of whole micros, exact: a running sum is set aside as a part of its own before it
-- would pass 2^52, where doubles stop counting every unit. Each part is one INCRBY.
local EXACT = 2 ^ 52
local function exact_sum()
  return {parts = {}, acc = 0, touched = false}
end
local function add_exact(t, delta)
  t.touched = true
  if math.abs(t.acc) + math.abs(delta) >= EXACT then
    t.parts[#t.parts + 1] = t.acc
    t.acc = 0
  end
  t.acc = t.acc + delta
end

local counts = {life = {}, reasons = {}, bands = {}}
local cltv_total, cltv_risk, high = exact_sum(), {}, 0
local high_touched = false
local function bump(family, name, delta)
  counts[family][name] = (counts[family][name] or 0) + delta
end
local function at_risk_moves(ev, sign)
  if ev.st ~= 'at_risk' then return end
  local cr = tonumber(ev.cr ~= '' and ev.cr or '0') or 0
  for _, reason in ipairs(split(ev.rr or '', ',')) do
    if reason ~= '' then
      bump('reasons', reason, sign)
      if cr ~= 0 then
        cltv_risk[reason] = cltv_risk[reason] or exact_sum()
        add_exact(cltv_risk[reason], sign * cr)
      end
    end
  end
  if ev.hv == '1' then
    high = high + sign
    high_touched = true
  end
end

-- every stored evaluation read before anything is written
local keep, before = {}, {}
for _, r in ipairs(results) do
  if redis.call('EXISTS', P .. 'c:' .. r[1]) == 1 then
    keep[#keep + 1] = r
    before[#keep] = stored(r[1])
  end
end
for i, r in ipairs(keep) do
  local old, new = before[i], {st = r[2], rr = r[4], hv = r[5], cl = r[8], cr = r[9], bd = r[10]}
  if old then
    bump('life', old.st, -1)
    if old.bd and old.bd ~= '' then bump('bands', old.bd, -1) end
    at_risk_moves(old, -1)
  end
  bump('life', new.st, 1)
  if new.bd ~= '' then bump('bands', new.bd, 1) end
  at_risk_moves(new, 1)
  local delta = (tonumber(new.cl) or 0) - (old and tonumber(old.cl) or 0)
  if delta ~= 0 then add_exact(cltv_total, delta) end
end

-- nothing may fail halfway (Redis keeps the writes made before an error): a total that
-- would leave the 64-bit range refuses the whole call before anything is written
local LIMIT = 9.2e18
local function fits(current, t)
  local sum = tonumber(current or '0') + t.acc
  for _, part in ipairs(t.parts) do sum = sum + part end
  return math.abs(sum) < LIMIT
end
local function num(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end
if not fits(redis.call('GET', P .. 'cltv:total'), cltv_total) then
  return redis.error_reply('OVERFLOW cltv:total would leave the 64-bit range')
end
for reason, t in pairs(cltv_risk) do
  if not fits(redis.call('HGET', P .. 'cltv:at_risk', reason), t) then
    return redis.error_reply('OVERFLOW cltv:at_risk would leave the 64-bit range')
  end
end

-- The evaluation is kept in the customer hash, its values joined by '|' in the order above
-- (some 60 bytes, where a hash of its own cost some 170), in fields `ev`, `ev2`, ... of at
-- most 64 bytes each: a longer value would make Redis keep the whole hash as a table of
-- twice the size instead of a listpack (batch_apply.lua cuts the customer's state the
-- same way).
local MOST_PIECES = 6
local function ev_name(i)
  return i == 1 and 'ev' or 'ev' .. i
end
for _, r in ipairs(results) do
  local key = P .. 'c:' .. r[1]
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', P .. 'atrisk', r[1])
  else
    local cut = {}
    local pieces = cut_into(cut, table.concat(r, '|', 2, 10), ev_name)
    redis.call('HSET', key, unpack(cut))
    -- the pieces a longer evaluation left deleted
    local gone = {}
    for i = pieces + 1, MOST_PIECES do gone[#gone + 1] = ev_name(i) end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    if ranks[r[1]] then
      redis.call('ZADD', P .. 'atrisk', ranks[r[1]], r[1])
    else
      redis.call('ZREM', P .. 'atrisk', r[1])
    end
  end
end

local function write_exact(t, incr)
  if not t.touched then return end
  for _, part in ipairs(t.parts) do
    if part ~= 0 then incr(num(part)) end
  end
  incr(num(t.acc))
end
write_exact(cltv_total, function(d) redis.call('INCRBY', P .. 'cltv:total', d) end)
for reason, t in pairs(cltv_risk) do
  write_exact(t, function(d) redis.call('HINCRBY', P .. 'cltv:at_risk', reason, d) end)
end
if high_touched then redis.call('INCRBY', P .. 'risk:high_value', high) end
for _, alert in ipairs(raised) do redis.call('HSETNX', P .. 'alog', alert[1], alert[2]) end
for name, n in pairs(counts.life) do redis.call('HINCRBY', P .. 'life:counts', name, n) end
for name, n in pairs(counts.reasons) do redis.call('HINCRBY', P .. 'risk:reasons', name, n) end
for name, n in pairs(counts.bands) do
  if n ~= 0 then redis.call('HINCRBY', P .. 'risk:bands', name, n) end
end
return #keep
