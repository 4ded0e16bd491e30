-- Whether customers had any activity day in [from, to): one bit each of the union of those
-- days' activity bitmaps, kept and brought up to date by window_union.lua (every customer
-- of an evaluation round asks about the same window).
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, from day, to day, how long (s) to keep the union after this
-- call, then customer indexes ('' for none). Returns 1 or 0 per customer.
local P = ARGV[1]
local from, to, keep = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local union = kept_union(P, from, to, keep)
local out = {}
for i = 5, #ARGV do
  local found = 0
  if ARGV[i] ~= '' then found = redis.call('GETBIT', union, ARGV[i]) end
  out[#out + 1] = found
end
return out
