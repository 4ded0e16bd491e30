-- Customers' three hashes (counters, orders per day, tickets), read in one moment.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV[1] the shard's key prefix, then customer ids. Returns, per customer, the flat
-- HGETALL replies of c:, od: and tk:.
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local cid = ARGV[i]
  out[#out + 1] = redis.call('HGETALL', P .. 'c:' .. cid)
  out[#out + 1] = redis.call('HGETALL', P .. 'od:' .. cid)
  out[#out + 1] = redis.call('HGETALL', P .. 'tk:' .. cid)
end
return out
