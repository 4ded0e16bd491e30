-- Counts of one period [start, stop) for its retention row, from the day bitmaps.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), start day, stop day, churn window W in days
-- (all days counted from 1970-01-01), and how long (s) to keep the window unions for the
-- next call (0: none kept; window_union.lua keeps them). Active at t = an activity day in
-- [t - W, t), since periods start at midnight and W is whole days.
-- Returns {S, E, S and E, N, orders, placed micros, refunded micros, buyers, repeaters}.
local P, p = ARGV[1], ARGV[2]
local start, stop, W = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local keep = tonumber(ARGV[6] or '0')
local X = P .. 'tmp:X'
local scratch = {X}

-- The union computed afresh, into a scratch key.
local function active_now(t, dest)
  local _, keys = window_days(P, t - W, t)
  redis.call('BITOP', 'OR', dest, unpack(keys))
  scratch[#scratch + 1] = dest
  return dest
end

local function active_at(t, dest)
  if keep > 0 then return kept_union(P, t - W, t, keep) end
  return active_now(t, dest)
end

local function count_and(a, b)
  redis.call('BITOP', 'AND', X, a, b)
  return redis.call('BITCOUNT', X)
end

local S = active_at(start, P .. 'tmp:S')
local E = active_at(stop, P .. 'tmp:E')
local suffix = p .. ':' .. start
local sales = redis.call('HMGET', P .. 'sales:' .. suffix, 'o', 'pm', 'rm', 'b', 'r')
local result = {
  redis.call('BITCOUNT', S),
  redis.call('BITCOUNT', E),
  count_and(S, E),
  cohort_and_count(P .. 'coh:' .. suffix, cohort_start(P, suffix), E, X),
  sales[1] or '0',
  sales[2] or '0',
  sales[3] or '0',
  -- buyers and repeat buyers: counted in the sales hash, and in bitmaps by earlier
  -- versions (a customer is in one or the other)
  tonumber(sales[4] or '0') + redis.call('BITCOUNT', P .. 'buy:' .. suffix),
  tonumber(sales[5] or '0') + redis.call('BITCOUNT', P .. 'rep:' .. suffix),
}
redis.call('DEL', unpack(scratch))
return result
