-- What an evaluation chunk needs of each customer besides its state: the previous
-- evaluation and the customer's dense index (for the day bitmaps).
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, then customer ids. Returns, per customer, the previous
-- evaluation as a flat list of (name, value) and its index ('' without one). The
-- evaluation is the customer hash's `ev` field, values joined by '|' in the order of NAMES
-- (store_evaluations.lua); earlier versions kept it in a hash `ev:<customer>`.
local NAMES = {'st', 'sc', 'rr', 'hv', 'at', 'no', 'cl', 'cr'}
local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local found = redis.call('HMGET', P .. 'c:' .. ARGV[i], 'ev', 'ix')
  local flat = {}
  if found[1] then
    local n = 0
    for value in string.gmatch(found[1] .. '|', '([^|]*)|') do
      n = n + 1
      if NAMES[n] then
        flat[#flat + 1] = NAMES[n]
        flat[#flat + 1] = value
      end
    end
  else
    flat = redis.call('HGETALL', P .. 'ev:' .. ARGV[i])
  end
  out[#out + 1] = flat
  out[#out + 1] = found[2] or ''
end
return out
