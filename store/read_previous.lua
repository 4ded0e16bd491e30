-- Customers' last evaluations, as stored: the customer hash's `ev` field and its pieces
-- `ev2`, `ev3`, ... (the values joined by '|', store_evaluations.lua; split by
-- store/evaluations.py).
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, then customer ids. Returns, per customer, its `ev` ('' without
-- one).
local P = ARGV[1]
local NAMES = {'ev', 'ev2', 'ev3', 'ev4', 'ev5', 'ev6'}
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = joined(redis.call('HMGET', P .. 'c:' .. ARGV[i], unpack(NAMES)))
end
return out
