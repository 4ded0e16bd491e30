-- Whether customers had any activity day in [from, to), read from the day bitmaps.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, from day, to day, then customer indexes. Returns 1 or 0 per customer.
local P = ARGV[1]
local from, to = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local found = 0
  if ARGV[i] ~= '' then
    for day = from, to - 1 do
      if redis.call('GETBIT', P .. 'act:d:' .. day, ARGV[i]) == 1 then
        found = 1
        break
      end
    end
  end
  out[#out + 1] = found
end
return out
