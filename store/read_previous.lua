-- Customers' last evaluations, as stored: the customer hash's `ev` field and its pieces
-- `ev2`, `ev3`, ... (the values joined by '|', store_evaluations.lua; split by
-- store/evaluations.py), or for a customer without one, the hash `ev:<customer>` earlier
-- versions kept.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, then customer ids. Returns, per customer, its `ev` ('' without
-- one) and the flat HGETALL of its `ev:` hash (empty when it has `ev`).
local P = ARGV[1]
local NAMES = {'ev', 'ev2', 'ev3', 'ev4', 'ev5', 'ev6'}
local out = {}
for i = 2, #ARGV do
  local pieces = redis.call('HMGET', P .. 'c:' .. ARGV[i], unpack(NAMES))
  out[#out + 1] = joined(pieces)
  out[#out + 1] = pieces[1] and {} or redis.call('HGETALL', P .. 'ev:' .. ARGV[i])
end
return out
