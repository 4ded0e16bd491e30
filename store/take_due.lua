-- Take customers for an evaluation, fairly from two queues, and lease them. Runs after
-- sched_chunks.lua (the rechecks' chunks), which store/evaluations.py puts before it.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, now on the evaluation clock (ms), at most how many, lease end
-- (ms).
-- The changed customers wait in the list `dueq` in the order of their first change since
-- their last evaluation (their hash's `q` marks them waiting), served oldest first
-- whatever the evaluation clock says; the scheduled rechecks (sched_chunks.lua) are
-- served when their time has come, earliest first. Each queue gets half the places, and
-- what one leaves unused goes to the other, so a stream of changes never starves the
-- rechecks (churn, cold, win-back), nor the reverse.
-- Taken customers leave the changed queue and are scheduled at the lease's end: another
-- evaluator leaves them alone, and should this one stop they come back when the lease
-- ends. Customers without a hash any more are dropped. Returns the customer ids taken.
-- `retention rebuild` is wiping the store: take nobody until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then return {} end
local now, limit, lease = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local half = math.ceil(limit / 2)
local QUEUE = P .. 'dueq'

local function customer_key(cid)
  return P .. 'c:' .. cid
end

-- Changed customers, oldest first, added to `out` until it holds `want`. An entry whose
-- customer is no longer marked waiting (its hash gone) is dropped.
local function take_changed(out, want)
  while #out < want do
    local popped = redis.call('LPOP', QUEUE, want - #out)
    if not popped then return end
    for _, cid in ipairs(popped) do
      if redis.call('HDEL', customer_key(cid), 'q') == 1 then out[#out + 1] = cid end
    end
  end
end

-- Up to `n` rechecks due by now, earliest first: {customer, time, chunk}. Every
-- chunk whose bound is at or before now holds due entries, but for the last one.
local function due_rechecks(n)
  local found = {}
  if n <= 0 then return found end
  local offset = 0
  while #found < n do
    local chunks = redis.call('ZRANGE', INDEX, '-inf', now, 'BYSCORE', 'LIMIT', offset, 16)
    if #chunks == 0 then break end
    for _, chunk in ipairs(chunks) do
      local got = redis.call('ZRANGE', chunk_key(chunk), '-inf', now, 'BYSCORE', 'LIMIT', 0,
        n - #found, 'WITHSCORES')
      for i = 1, #got, 2 do found[#found + 1] = {got[i], got[i + 1], chunk} end
      if #found >= n then break end
    end
    offset = offset + 16
  end
  return found
end

local changed = {}
take_changed(changed, half)
local scheduled = due_rechecks(limit - #changed)
if #changed == half and #scheduled < limit - half then
  take_changed(changed, limit - #scheduled)
end

-- every taken customer's recheck leaves its place, then all are leased
local removed, rechecked = {}, {}
for _, s in ipairs(scheduled) do
  rechecked[s[1]] = true
  push(removed, s[3], s[1])
end
-- changed customers' rechecks, found by their time (many share one: a round's)
local by_time = {}
for _, cid in ipairs(changed) do
  if not rechecked[cid] then
    local at = redis.call('HGET', customer_key(cid), 'r')
    if at then push(by_time, at, cid) end
  end
end
for at, cids in pairs(by_time) do
  local where = entries_at(at)
  for _, cid in ipairs(cids) do
    if where[cid] then push(removed, where[cid], cid) end
  end
end
sched_drop(removed)
local taken = {}
for _, cid in ipairs(changed) do taken[#taken + 1] = cid end
local seen = {}
for _, cid in ipairs(changed) do seen[cid] = true end
for _, s in ipairs(scheduled) do
  local cid = s[1]
  if not seen[cid] and redis.call('EXISTS', customer_key(cid)) == 1 then
    seen[cid] = true
    taken[#taken + 1] = cid
  end
end
for _, cid in ipairs(taken) do redis.call('HSET', customer_key(cid), 'r', lease) end
sched_insert(taken, lease)
return taken
