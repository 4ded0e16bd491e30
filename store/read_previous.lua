-- Customers' last evaluations, as stored: the customer hash's `ev` field (the values
-- joined by '|', store_evaluations.lua; split by store/evaluations.py), or for a customer
-- without one, the hash `ev:<customer>` earlier versions kept.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, then customer ids. Returns, per customer, its `ev` ('' without
-- one) and the flat HGETALL of its `ev:` hash (empty when it has `ev`).
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local joined = redis.call('HGET', P .. 'c:' .. ARGV[i], 'ev')
  out[#out + 1] = joined or ''
  out[#out + 1] = joined and {} or redis.call('HGETALL', P .. 'ev:' .. ARGV[i])
end
return out
