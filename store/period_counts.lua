-- Counts of one period [start, stop) for its retention row, from the day bitmaps.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), start day, stop day, churn window W in days
-- (all days counted from 1970-01-01), and how long (s) to keep the window unions for the
-- next call (0: none kept). Active at t = an activity day in [t - W, t), since periods start
-- at midnight and W is whole days.
-- Returns {S, E, S and E, N, orders, placed micros, refunded micros, buyers, repeaters}.
local P, p = ARGV[1], ARGV[2]
local start, stop, W = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local keep = tonumber(ARGV[6] or '0')
local X = P .. 'tmp:X'
local scratch = {X}

local function days_of(t)
  local days = {}
  for day = t - W, t - 1 do days[#days + 1] = day end
  return days
end

local function day_keys(days)
  local keys = {}
  for i, day in ipairs(days) do keys[i] = P .. 'act:d:' .. day end
  return keys
end

-- The union computed afresh, into a scratch key.
local function active_now(t, dest)
  redis.call('BITOP', 'OR', dest, unpack(day_keys(days_of(t))))
  scratch[#scratch + 1] = dest
  return dest
end

-- The union kept in win:<from>:<t>, with each day's count of active customers (act:n) as it
-- was when the day was last ORed in (win:<from>:<t>:n). Bits are only ever added to a day
-- bitmap, and each added bit raises the day's count, so ORing in the days whose count moved
-- (late events, or today's) brings the union up to date exactly.
local function active_kept(t)
  local days = days_of(t)
  local key = P .. 'win:' .. (t - W) .. ':' .. t
  local seen_key = key .. ':n'
  local counts = redis.call('HMGET', P .. 'act:n', unpack(days))
  local seen = redis.call('HMGET', seen_key, unpack(days))
  local whole = redis.call('EXISTS', key) == 0
  local changed, update = {}, {}
  for i, day in ipairs(days) do
    local count = counts[i] or '0'
    if whole or (seen[i] or '0') ~= count then
      changed[#changed + 1] = day
      update[#update + 1] = day
      update[#update + 1] = count
    end
  end
  if whole then
    redis.call('BITOP', 'OR', key, unpack(day_keys(days)))
  elseif #changed > 0 then
    redis.call('BITOP', 'OR', key, key, unpack(day_keys(changed)))
  end
  if #update > 0 then redis.call('HSET', seen_key, unpack(update)) end
  redis.call('EXPIRE', key, keep)
  redis.call('EXPIRE', seen_key, keep)
  return key
end

local function active_at(t, dest)
  if keep > 0 then return active_kept(t) end
  return active_now(t, dest)
end

local function count_and(a, b)
  redis.call('BITOP', 'AND', X, a, b)
  return redis.call('BITCOUNT', X)
end

local S = active_at(start, P .. 'tmp:S')
local E = active_at(stop, P .. 'tmp:E')
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
redis.call('DEL', unpack(scratch))
return result
