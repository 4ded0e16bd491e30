-- Queue a page of the customers in the `atrisk` ranking for an evaluation, as if they had
-- changed: after a refit their predicted CLTV and CLTV at risk are worth telling again.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, now (ms, marks them waiting as the batch script does), the
-- first rank and how many from there. A customer already waiting keeps its place.
-- Returns how many were queued and whether the ranking goes on past this page (1/0).
local P = ARGV[1]
if redis.call('EXISTS', P .. 'rebuilding') == 1 then return {0, 0} end
local now, from, count = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local page = redis.call('ZRANGE', P .. 'atrisk', from, from + count - 1)
local queued = {}
for _, cid in ipairs(page) do
  local key = P .. 'c:' .. cid
  if redis.call('EXISTS', key) == 1 and redis.call('HSETNX', key, 'q', now) == 1 then
    queued[#queued + 1] = cid
  end
end
if #queued > 0 then redis.call('RPUSH', P .. 'dueq', unpack(queued)) end
return {#queued, #page == count and 1 or 0}
