#!lua
-- The shebang (no flags) makes Redis refuse the whole script up front when it is over
-- maxmemory with noeviction, instead of failing at a write halfway through.
--
-- Applies one batch of consumed messages atomically: offset check, dedupe, state update.
-- The rules are those of processors/state.py (apply_event); keep the two in step.
-- Nothing in here may fail halfway (Redis keeps the writes made before an error): inputs
-- are bounded by validation, and sums are checked against SUM_LIMIT before they are made.
--
-- KEYS[1] the shard's offsets hash (P .. 'offsets:' .. scope): declared so that a Redis
--   Cluster routes the call to the node holding the shard; every key the script builds
--   carries the same hash tag, so they all lie in that slot
-- ARGV[1] the shard's key prefix   ARGV[2] offsets scope (broker cluster id)
-- ARGV[3] now (ms)          ARGV[4] dedupe bucket width (ms)   ARGV[5] buckets kept
-- ARGV[6] activity kinds, letters: o=order l=login s=support
-- ARGV[7] the shard's records, a JSON array of arrays of 15 strings:
--   kind(o|l|s|x) topic partition offset dedupe_id customer_id ts_ms d w m a1 a2 a3 a4 stamp
--   dedupe_id: a digest of event type, customer and event id (the worker computes it)
--   d w m: epoch-day numbers of the start of the event's day, ISO week and month
--   order:   a1=status a2=amount_micros in the reporting currency a3=original currency
--            (may be empty) a4=amount_micros as sent, in that currency
--   support: a1=action a2=ticket a3=survey a4=score
--   rejected (x): a1=reason
--   stamp: the Kafka timestamp (ms) of the message, kept with the partition's offset so a
--   recreated topic can be told from the one the offset belongs to
-- ARGV[8] JSON object topic|partition -> lowest offset the broker still holds, or "" to
--   take any offset above the stored one. With it, offsets must follow the stored one
--   without a gap: a gap means the store lost what it had applied (restore, failover,
--   flush), and the records of that partition are refused so the worker can seek back.
-- ARGV[9] JSON object topic|partition -> the runs of consecutive offsets of the whole
--   batch, over every shard, in order: {{first, last, stamp of the last}, ...}. A shard's
--   own records of a partition are not consecutive, so the gap check and the stored offset
--   follow the batch's runs, as if the records came one by one: a run that does not
--   continue the stored offset (or what the runs before it reached) is a gap, and the
--   partition's records from there on are refused. Every shard is called for every batch,
--   with or without records, and stores the offset the runs reached: a batch spread over
--   shards stays exactly-once when the worker stops between two shards, since each shard
--   skips what it has already applied.
-- Returns {applied, duplicates, redelivered, rejected, gaps, overflows}: gaps is a flat
-- list {tp, next offset wanted, ...}; overflows lists the offsets ("tp|offset") of events
-- refused because a sum would leave the exact range.

local P = ARGV[1]
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
local offsets_key = KEYS[1]
local stats_key = P .. 'stats'
local meta_key = P .. 'meta'
local newest_key = P .. 'newest:' .. ARGV[2]
local ids_key = P .. 'ids'
local stamps_key = P .. 'stamps:' .. ARGV[2]
-- money sums stay below 2^53 micros, where Lua's doubles still count every unit
local SUM_LIMIT = 9007199254740991
local now = tonumber(ARGV[3])
local width = tonumber(ARGV[4])
local nbuckets = tonumber(ARGV[5])
local kinds = ARGV[6]
local bucket = math.floor(now / width)
local touched_customers = {}
local seen_ttl = math.ceil(width * (nbuckets + 1) / 1000)

local applied, duplicates, redelivered, rejected = 0, 0, 0, 0
local last_offsets = {}
local newest = {}
local batch_first, batch_last

local function set_min(key, field, value)
  local cur = redis.call('HGET', key, field)
  if not cur or tonumber(value) < tonumber(cur) then redis.call('HSET', key, field, value) end
end

local function set_max(key, field, value)
  local cur = redis.call('HGET', key, field)
  if not cur or tonumber(value) > tonumber(cur) then redis.call('HSET', key, field, value) end
end

-- Activity bitmaps (bit = the customer's dense index) per day, week and month, and the
-- cohort bitmaps: a customer sits in the cohort of its first activity, and moves when an
-- earlier activity arrives late.
local function activity(ckey, idx, ts, days)
  for p, day in pairs(days) do
    local was = redis.call('SETBIT', P .. 'act:' .. p .. ':' .. day, idx, 1)
    -- a day's count of active customers moves with every bit its bitmap gains, which
    -- tells the period readers' window unions (period_counts.lua) which days to OR again
    if was == 0 and p == 'd' then redis.call('HINCRBY', P .. 'act:n', day, 1) end
  end
  local first = redis.call('HGET', ckey, 'fa')
  if not first or tonumber(ts) < tonumber(first) then
    local old = redis.call('HMGET', ckey, 'fad', 'faw', 'fam')
    if first then
      redis.call('SETBIT', P .. 'coh:d:' .. old[1], idx, 0)
      redis.call('SETBIT', P .. 'coh:w:' .. old[2], idx, 0)
      redis.call('SETBIT', P .. 'coh:m:' .. old[3], idx, 0)
    end
    redis.call('HSET', ckey, 'fa', ts, 'fad', days.d, 'faw', days.w, 'fam', days.m)
    for p, day in pairs(days) do
      redis.call('SETBIT', P .. 'coh:' .. p .. ':' .. day, idx, 1)
    end
  end
  set_max(ckey, 'la', ts)
end

-- Orders and money per period; a second order in a period marks a repeat buyer.
local function period_sales(idx, days, status, amount)
  for p, day in pairs(days) do
    local suffix = p .. ':' .. day
    if status == 'placed' then
      redis.call('HINCRBY', P .. 'sales:' .. suffix, 'o', 1)
      redis.call('HINCRBY', P .. 'sales:' .. suffix, 'pm', amount)
      if redis.call('SETBIT', P .. 'buy:' .. suffix, idx, 1) == 1 then
        redis.call('SETBIT', P .. 'rep:' .. suffix, idx, 1)
      end
    else
      redis.call('HINCRBY', P .. 'sales:' .. suffix, 'rm', amount)
    end
  end
end

-- Only buckets that exist can hold an id: look them up once per batch.
local seen_buckets = {}
for b = bucket - nbuckets, bucket - 1 do
  if redis.call('EXISTS', P .. 'seen:' .. b) == 1 then seen_buckets[#seen_buckets + 1] = P .. 'seen:' .. b end
end
local current_seen = P .. 'seen:' .. bucket

local function is_duplicate(event_id)
  -- SADD answers 0 when the id is already in the current bucket
  if redis.call('SADD', current_seen, event_id) == 0 then return true end
  for _, key in ipairs(seen_buckets) do
    if redis.call('SISMEMBER', key, event_id) == 1 then
      redis.call('SREM', current_seen, event_id)
      return true
    end
  end
  return false
end

-- Counters are summed in the script and written once per batch.
local counts = {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- Totals over all customers, kept as customers' latest scores change: sum and count per
-- survey, and NPS promoters (9-10) and detractors (0-6), so the averages need no scan.
local function survey_totals(survey, old, new)
  local key = P .. 'surveys'
  local function nps_class(score)
    if survey ~= 'nps' or not score then return nil end
    score = tonumber(score)
    if score >= 9 then return 'promoters' elseif score <= 6 then return 'detractors' end
    return nil
  end
  if old then
    -- 0 - x, not -x: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
    redis.call('HINCRBY', key, survey .. '|sum', 0 - tonumber(old))
    redis.call('HINCRBY', key, survey .. '|n', -1)
    local class = nps_class(old)
    if class then redis.call('HINCRBY', key, 'nps|' .. class, -1) end
  end
  redis.call('HINCRBY', key, survey .. '|sum', tonumber(new))
  redis.call('HINCRBY', key, survey .. '|n', 1)
  local class = nps_class(new)
  if class then redis.call('HINCRBY', key, 'nps|' .. class, 1) end
end

-- First-response times of all tickets, as histogram buckets (upper bounds in seconds)
-- plus their sum in ms; a ticket's time moves between buckets when an earlier event lands.
local RESPONSE_BOUNDS = {300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800}
local function response_buckets(ms, delta)
  if not ms then return end
  local key = P .. 'responses'
  local bucket = '+Inf'
  for _, bound in ipairs(RESPONSE_BOUNDS) do
    if ms <= bound * 1000 then
      bucket = tostring(bound)
      break
    end
  end
  redis.call('HINCRBY', key, bucket, delta)
  redis.call('HINCRBY', key, 'sum_ms', delta > 0 and ms or 0 - ms)
  redis.call('HINCRBY', key, 'count', delta)
end

local function response_ms(tkey, ticket)
  local opened = redis.call('HGET', tkey, ticket .. '|o')
  local reply = redis.call('HGET', tkey, ticket .. '|r')
  if not opened or not reply then return nil end
  opened, reply = tonumber(opened), tonumber(reply)
  if reply < opened then return nil end
  return reply - opened
end

local function set_status(ckey, tkey, ticket, is_open, ts)
  local st = redis.call('HGET', tkey, ticket .. '|t')
  if st and tonumber(ts) < tonumber(st) then return end
  local old = redis.call('HGET', tkey, ticket .. '|s')
  redis.call('HSET', tkey, ticket .. '|s', is_open, ticket .. '|t', ts)
  if is_open == '1' and old ~= '1' then redis.call('HINCRBY', ckey, 'ot', 1) end
  if is_open == '0' and old == '1' then redis.call('HINCRBY', ckey, 'ot', -1) end
end

-- At most MAX_TICKETS tickets per customer (processors/state.py keeps the same rule): at
-- the cap, tickets not open whose latest time is TICKET_HORIZON_MS older than this event
-- make room, else the new ticket is counted in 'tu' and not tracked.
local MAX_TICKETS = 1000
local TICKET_HORIZON_MS = 90 * 86400000
local function room_for_ticket(ckey, tkey, ts)
  local tracked = tonumber(redis.call('HGET', ckey, 'tn') or '0')
  if tracked < MAX_TICKETS then return true end
  local fields = redis.call('HGETALL', tkey)
  local tickets = {}
  for i = 1, #fields, 2 do
    local name, attr = string.match(fields[i], '^(.*)|(%a)$')
    if name then  -- every field is "<ticket>|<letter>"; anything else is left alone
      tickets[name] = tickets[name] or {}
      tickets[name][attr] = fields[i + 1]
    end
  end
  tracked = 0
  local horizon = tonumber(ts) - TICKET_HORIZON_MS
  for name, t in pairs(tickets) do
    local last = math.max(tonumber(t.o or '-1'), tonumber(t.r or '-1'), tonumber(t.t or '-1'))
    if t.s ~= '1' and last < horizon then
      redis.call('HDEL', tkey, name .. '|o', name .. '|r', name .. '|s', name .. '|t')
    else
      tracked = tracked + 1
    end
  end
  redis.call('HSET', ckey, 'tn', tracked)
  return tracked < MAX_TICKETS
end

local function apply_ticket(ckey, cid, ts, action, ticket)
  local tkey = P .. 'tk:' .. cid
  local known = redis.call('HMGET', tkey, ticket .. '|o', ticket .. '|r', ticket .. '|s')
  if not known[1] and not known[2] and not known[3] then
    if not room_for_ticket(ckey, tkey, ts) then
      redis.call('HINCRBY', ckey, 'tu', 1)
      return
    end
    redis.call('HINCRBY', ckey, 'tn', 1)
  end
  local before = response_ms(tkey, ticket)
  if action == 'opened' then
    if redis.call('HSETNX', tkey, ticket .. '|o', ts) == 1 then
      redis.call('HINCRBY', ckey, 'to', 1)
    else
      set_min(tkey, ticket .. '|o', ts)
    end
    set_status(ckey, tkey, ticket, '1', ts)
  elseif action == 'reopened' then
    set_status(ckey, tkey, ticket, '1', ts)
  elseif action == 'resolved' then
    redis.call('HINCRBY', ckey, 'tr', 1)
    set_status(ckey, tkey, ticket, '0', ts)
  elseif action == 'agent_replied' then
    set_min(tkey, ticket .. '|r', ts)
  end
  local after = response_ms(tkey, ticket)
  if before ~= after then
    redis.call('HINCRBY', ckey, 'rs', (after or 0) - (before or 0))
    redis.call('HINCRBY', ckey, 'rn', (after and 1 or 0) - (before and 1 or 0))
    response_buckets(before, -1)
    response_buckets(after, 1)
  end
end

local function customer_index(ckey, cid, ts)
  if redis.call('HSETNX', ckey, 'fs', ts) == 1 then
    -- a dense index per customer, for bitmaps keyed by customer number
    local idx = redis.call('HGET', ids_key, cid)
    if not idx then
      idx = redis.call('INCR', P .. 'ids:next') - 1
      redis.call('HSET', ids_key, cid, idx)
    end
    redis.call('HSET', ckey, 'ix', idx)
    return idx
  end
  set_min(ckey, 'fs', ts)
  return redis.call('HGET', ckey, 'ix')
end

-- Would adding this amount push the customer's or a period's sum out of the exact range?
-- A day's sum is part of its week's, so the week and the month are the ones to check.
local function sums_overflow(cid, days, status, amount, currency, original)
  if status ~= 'placed' and status ~= 'refunded' then return false end
  local field = status == 'placed' and 'pm' or 'rm'
  local ckey = P .. 'c:' .. cid
  local sums = {
    {redis.call('HGET', ckey, field), amount},
    {redis.call('HGET', P .. 'sales:w:' .. days.w, field), amount},
    {redis.call('HGET', P .. 'sales:m:' .. days.m, field), amount},
  }
  if currency ~= '' then
    sums[#sums + 1] = {redis.call('HGET', ckey, field .. ':' .. currency), original}
  end
  for _, sum in ipairs(sums) do
    if tonumber(sum[1] or '0') + tonumber(sum[2]) > SUM_LIMIT then return true end
  end
  return false
end

-- The fit grid: buyers counted by (first order day, last order day, distinct order days),
-- all a P(alive) fit needs, so a refit reads this small hash per shard instead of every
-- customer (store/models.py). Called when a placed order adds a distinct day to the
-- customer's orders per day, the only change that moves those three; the buyer's previous
-- cell comes from its other days.
local function fit_grid_day(cid, day)
  local grid = P .. 'fitgrid'
  local d = tonumber(day)
  local days = redis.call('HKEYS', P .. 'od:' .. cid)
  local first, last
  for _, k in ipairs(days) do
    local v = tonumber(k)
    if v ~= d then
      if not first or v < tonumber(first) then first = k end
      if not last or v > tonumber(last) then last = k end
    end
  end
  if first then
    local old = first .. ':' .. last .. ':' .. (#days - 1)
    if redis.call('HINCRBY', grid, old, -1) <= 0 then redis.call('HDEL', grid, old) end
    if d < tonumber(first) then first = day end
    if d > tonumber(last) then last = day end
  else
    first, last = day, day
  end
  redis.call('HINCRBY', grid, first .. ':' .. last .. ':' .. #days, 1)
end

local function apply(kind, cid, ts, days, a1, a2, a3, a4)
  local ckey = P .. 'c:' .. cid
  local idx = customer_index(ckey, cid, ts)
  touched_customers[cid] = true
  local t = tonumber(ts)
  if not batch_first or t < tonumber(batch_first) then batch_first = ts end
  if not batch_last or t > tonumber(batch_last) then batch_last = ts end
  if kind == 'o' then
    if a1 == 'placed' then
      redis.call('HINCRBY', ckey, 'o', 1)
      redis.call('HINCRBY', ckey, 'pm', a2)
      if a3 ~= '' then redis.call('HINCRBY', ckey, 'pm:' .. a3, a4) end
      set_max(ckey, 'lo', ts)
      if redis.call('HINCRBY', P .. 'od:' .. cid, days.d, 1) == 1 then fit_grid_day(cid, days.d) end
      period_sales(idx, days, a1, a2)
      if string.find(kinds, 'o', 1, true) then activity(ckey, idx, ts, days) end
    elseif a1 == 'refunded' then
      redis.call('HINCRBY', ckey, 'rf', 1)
      redis.call('HINCRBY', ckey, 'rm', a2)
      if a3 ~= '' then redis.call('HINCRBY', ckey, 'rm:' .. a3, a4) end
      period_sales(idx, days, a1, a2)
    else
      redis.call('HINCRBY', ckey, 'cx', 1)
    end
  elseif kind == 'l' then
    redis.call('HINCRBY', ckey, 'lg', 1)
    set_max(ckey, 'll', ts)
    if string.find(kinds, 'l', 1, true) then activity(ckey, idx, ts, days) end
  else
    if a1 == 'rated' then
      local cur = redis.call('HGET', ckey, a3 .. 't')
      if not cur or tonumber(ts) >= tonumber(cur) then
        survey_totals(a3, redis.call('HGET', ckey, a3), a4)
        redis.call('HSET', ckey, a3, a4, a3 .. 't', ts)
      end
    else
      apply_ticket(ckey, cid, ts, a1, a2)
    end
    if string.find(kinds, 's', 1, true) then activity(ckey, idx, ts, days) end
  end
end

local records = cjson.decode(ARGV[7])
local floors = nil
if ARGV[8] ~= '' then floors = cjson.decode(ARGV[8]) end
local ranges = cjson.decode(ARGV[9])
-- each partition's fate for this batch is decided once, from the stored offset: records
-- up to `reach` are taken, those above it wait for the worker to seek back
local gaps, gap_list, overflows = {}, {}, {}
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
for _, r in ipairs(records) do
  local kind, topic, partition = r[1], r[2], r[3]
  local offset = tonumber(r[4])
  local tp = topic .. '|' .. partition
  if offset <= last_offsets[tp] then
    redelivered = redelivered + 1
  elseif offset > reach[tp] then
    -- beyond a gap: refused with the rest of its partition
  else
    local days = {d = r[8], w = r[9], m = r[10]}
    if kind == 'x' then
      count('rejected|' .. topic .. '|' .. r[11])
      rejected = rejected + 1
    elseif kind == 'o' and sums_overflow(r[6], days, r[11], r[12], r[13], r[14]) then
      count('rejected|' .. topic .. '|sum_overflow')
      rejected = rejected + 1
      overflows[#overflows + 1] = tp .. '|' .. offset
    elseif is_duplicate(r[5]) then
      count('duplicate|' .. topic)
      duplicates = duplicates + 1
    else
      local ts = r[7]
      apply(kind, r[6], ts, days, r[11], r[12], r[13], r[14])
      count('accepted|' .. topic)
      applied = applied + 1
      if not newest[tp] or tonumber(ts) > tonumber(newest[tp]) then newest[tp] = ts end
    end
  end
end

for name, n in pairs(counts) do
  redis.call('HINCRBY', stats_key, name, n)
end
if applied + duplicates > 0 then redis.call('EXPIRE', current_seen, seen_ttl) end
-- customers whose state changed are due for a lifecycle and risk evaluation: NX keeps
-- the time of the first change since their last evaluation, and the evaluator serves
-- that queue oldest first (take_due.lua)
for cid, _ in pairs(touched_customers) do
  redis.call('ZADD', P .. 'due', 'NX', now, cid)
end
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
  set_max(newest_key, tp, ts)
end
return {applied, duplicates, redelivered, rejected, gap_list, overflows}
