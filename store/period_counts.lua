-- Counts of periods [start, stop) for their retention rows, from the day bitmaps and the
-- sales hashes, as they are now: late data shows as soon as it is applied.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), churn window W in days, how long (s) to
-- keep the window unions for the next call (0: none kept; window_union.lua keeps them),
-- then each period's start day and stop day (all days counted from 1970-01-01). Active at
-- t = an activity day in [t - W, t), since periods start at midnight and W is whole days.
-- Returns, per period in order, {S, E, S and E, N, orders, placed micros (low part, high
-- part), refunded micros (low, high), buyers, repeaters}, one flat list: a money sum is
-- low + high * 10^12 (batch_state.lua, Money), added up by the caller.
local P, p = ARGV[1], ARGV[2]
local W, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local X = P .. 'tmp:X'

-- The union at each boundary t is computed once per call: a period's end is the next
-- period's start. Unkept unions live in scratch keys, dropped after their last use.
local uses, unions = {}, {}
for i = 5, #ARGV do
  local t = tonumber(ARGV[i])
  uses[t] = (uses[t] or 0) + 1
end

local function active_at(t)
  local key = unions[t]
  if key then return key end
  if keep > 0 then
    key = kept_union(P, t - W, t, keep)
  else
    local _, keys = window_days(P, t - W, t)
    key = P .. 'tmp:U' .. t
    redis.call('BITOP', 'OR', key, unpack(keys))
  end
  unions[t] = key
  return key
end

local function done_with(t)
  uses[t] = uses[t] - 1
  if uses[t] == 0 and keep == 0 then redis.call('DEL', unions[t]) end
end

local function count_and(a, b)
  redis.call('BITOP', 'AND', X, a, b)
  return redis.call('BITCOUNT', X)
end

local result = {}
for i = 5, #ARGV, 2 do
  local start, stop = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local S, E = active_at(start), active_at(stop)
  local suffix = p .. ':' .. ARGV[i]
  local sales = redis.call('HMGET', P .. 'sales:' .. suffix, 'o', 'pm', 'ph', 'rm', 'rh', 'b', 'r')
  local row = {
    redis.call('BITCOUNT', S),
    redis.call('BITCOUNT', E),
    count_and(S, E),
    cohort_and_count(P .. 'coh:' .. suffix, cohort_start(P, suffix), E, X),
    sales[1] or '0',
    sales[2] or '0',
    sales[3] or '0',
    sales[4] or '0',
    sales[5] or '0',
    sales[6] or '0',
    sales[7] or '0',
  }
  for _, value in ipairs(row) do result[#result + 1] = value end
  done_with(start)
  done_with(stop)
end
redis.call('DEL', X)
return result
