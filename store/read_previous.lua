-- What an evaluation chunk needs of each customer besides its state: the previous
-- evaluation and the customer's dense index (for the day bitmaps).
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, then customer ids. Returns, per customer, the fields of
-- ev:<customer> (a flat list) and its index ('' without one).
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGETALL', P .. 'ev:' .. ARGV[i])
  out[#out + 1] = redis.call('HGET', P .. 'c:' .. ARGV[i], 'ix') or ''
end
return out
