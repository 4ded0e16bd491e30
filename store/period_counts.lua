-- Counts of one period [start, stop) for its retention row, from the day bitmaps.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), start day, stop day, churn window W in days
-- (all days counted from 1970-01-01). Active at t = an activity day in [t - W, t), since
-- periods start at midnight and W is whole days.
-- Returns {S, E, S and E, N, orders, placed micros, refunded micros, buyers, repeaters}.
local P, p = ARGV[1], ARGV[2]
local start, stop, W = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local S, E, X = P .. 'tmp:S', P .. 'tmp:E', P .. 'tmp:X'

local function active_at(dest, t)
  local keys = {}
  for day = t - W, t - 1 do keys[#keys + 1] = P .. 'act:d:' .. day end
  redis.call('BITOP', 'OR', dest, unpack(keys))
end

local function count_and(a, b)
  redis.call('BITOP', 'AND', X, a, b)
  return redis.call('BITCOUNT', X)
end

active_at(S, start)
active_at(E, stop)
local suffix = p .. ':' .. start
local sales = redis.call('HMGET', P .. 'sales:' .. suffix, 'o', 'pm', 'rm')
local result = {
  redis.call('BITCOUNT', S),
  redis.call('BITCOUNT', E),
  count_and(S, E),
  count_and(P .. 'coh:' .. suffix, E),
  sales[1] or '0',
  sales[2] or '0',
  sales[3] or '0',
  redis.call('BITCOUNT', P .. 'buy:' .. suffix),
  redis.call('BITCOUNT', P .. 'rep:' .. suffix),
}
redis.call('DEL', S, E, X)
return result
