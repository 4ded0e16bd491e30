-- Schedule evaluated customers' next recheck, unless their lease has ended and another
-- evaluator took them since (their recheck is no longer this lease's end). A customer
-- changed while it was evaluated is back in the changed queue, so it is evaluated again
-- anyway. Runs after sched_chunks.lua, which store/evaluations.py puts before it.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, the lease end (ms), then (customer, next recheck) pairs; an
-- empty next recheck drops a customer whose hash is gone (its lease entry, if still
-- this lease's).
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then return 0 end
local lease = ARGV[2]
local want = tonumber(lease)
-- where the entries at the lease are, read once for all the customers
local at_lease = entries_at(lease)
-- the removals first, then the insertions (which may split the chunks read)
local removed, moves = {}, {}
for i = 3, #ARGV, 2 do
  local cid, next_at = ARGV[i], ARGV[i + 1]
  local chunk = at_lease[cid]
  local ours = next_at == ''
  if not ours then
    local current = redis.call('HGET', P .. 'c:' .. cid, 'r')
    ours = current ~= false and tonumber(current) == want
  end
  if chunk and ours then
    at_lease[cid] = nil
    push(removed, chunk, cid)
    if next_at ~= '' then
      redis.call('HSET', P .. 'c:' .. cid, 'r', next_at)
      push(moves, next_at, cid)
    end
  end
end
sched_drop(removed)
for next_at, cids in pairs(moves) do sched_insert(cids, next_at) end
return 0
