-- Schedule evaluated customers' next recheck, unless their lease has ended and another
-- evaluator took them since (their recheck is no longer this lease's end). A customer
-- changed while it was evaluated is back in the changed queue, so it is evaluated again
-- anyway. Runs after sched_chunks.lua, which store/evaluations.py puts before it.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, the lease end (ms), then (customer, next recheck) pairs; an
-- empty next recheck drops a customer whose hash is gone (its lease entry, if still
-- this lease's).
local lease = ARGV[2]
for i = 3, #ARGV, 2 do
  local cid, next_at = ARGV[i], ARGV[i + 1]
  local key = P .. 'c:' .. cid
  if next_at == '' then
    sched_remove(cid, lease)
  else
    local current = redis.call('HGET', key, 'r')
    if current and tonumber(current) == tonumber(lease) then
      sched_remove(cid, current)
      redis.call('HSET', key, 'r', next_at)
      sched_insert(cid, next_at)
    end
  end
end
return 0
