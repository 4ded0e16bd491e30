#!lua flags=no-writes
-- How far behind a shard's evaluation runs: customers waiting and the longest wait's start.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, now on the evaluation clock (ms).
-- Returns {changed customers waiting, batch time of the oldest first change or '',
-- rechecks due by now, the earliest due recheck or ''} (layout: take_due.lua and
-- sched_chunks.lua).
local P, now = ARGV[1], ARGV[2]
local function earlier(a, b)
  if not a then return b end
  if b and tonumber(b) < tonumber(a) then return b end
  return a
end
local queue = P .. 'dueq'
local changed = redis.call('LLEN', queue)
local first_changed = nil
-- the first entry still marked waiting is the oldest (one whose hash went is skipped)
for _, cid in ipairs(redis.call('LRANGE', queue, 0, 15)) do
  local q = redis.call('HGET', P .. 'c:' .. cid, 'q')
  if q then
    first_changed = earlier(first_changed, q)
    break
  end
end
local scheduled = 0
local first_scheduled = nil
for _, chunk in ipairs(redis.call('ZRANGE', P .. 'sched:at', '-inf', now, 'BYSCORE')) do
  local key = P .. 'sched:' .. chunk
  local n = redis.call('ZCOUNT', key, '-inf', now)
  if n > 0 then
    scheduled = scheduled + n
    first_scheduled = earlier(first_scheduled, redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  end
end
return {changed, first_changed or '', scheduled, first_scheduled or ''}
