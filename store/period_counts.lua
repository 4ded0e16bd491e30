-- Counts of periods [start, stop) for their retention rows, from the day bitmaps and the
-- sales hashes, as they are now: late data shows as soon as it is applied.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), churn window W in days, how long (s) to
-- keep the window unions for the next call (0: none kept; window_union.lua keeps them),
-- the breakdown: an attribute's letter ('' for none) and how many of its values follow,
-- those values, then each period's start day and stop day (all days counted from
-- 1970-01-01). Active at t = an activity day in [t - W, t), since periods start at
-- midnight and W is whole days.
-- Returns, per period in order, {S, E, S and E, N, orders, placed micros (low part, high
-- part), refunded micros (low, high), buyers, repeaters}, one flat list: a money sum is
-- low + high * 10^12 (batch_state.lua, Money), added up by the caller. With a breakdown,
-- each period has one such row for all customers, then one for each value's customers
-- (those whose latest value it is: the bitmap dim:<letter>:<value>), its sales summed
-- from the customers' days (rv:d:<day>).
local P, p = ARGV[1], ARGV[2]
local W, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local letter, k = ARGV[5], tonumber(ARGV[6])
local first_pair = 7 + k
local X = P .. 'tmp:X'
local MEGA = 1e12

-- The union at each boundary t is computed once per call: a period's end is the next
-- period's start. Unkept unions live in scratch keys, dropped after their last use.
local uses, unions = {}, {}
for i = first_pair, #ARGV do
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

-- The breakdown's values: their bitmaps, and which value each customer number holds.
local masks, value_of = {}, {}
for j = 1, k do
  masks[j] = P .. 'dim:' .. letter .. ':' .. ARGV[6 + j]
  mark_members(redis.call('GET', masks[j]) or '', 0, value_of, j)
end
local MS, ME = P .. 'tmp:MS', P .. 'tmp:ME'

-- A sum in two parts {low, high}, its low part kept within (-MEGA, MEGA).
local function add_parts(sum, lo, hi)
  local l = sum[1] + lo
  local carry = 0
  if l >= MEGA then carry = math.floor(l / MEGA) elseif l <= -MEGA then carry = -math.floor(-l / MEGA) end
  sum[1], sum[2] = l - carry * MEGA, sum[2] + hi + carry
end

-- Each value's sales in days [start, stop), from its customers' days: {orders, placed
-- (low, high), refunded (low, high), buyers, repeaters} per value.
local function value_sales(start, stop)
  local per = {}
  for j = 1, k do per[j] = {orders = 0, net = {0, 0}, refunded = {0, 0}, placed = {}} end
  for day = start, stop - 1 do
    local flat = redis.call('HGETALL', P .. 'rv:d:' .. day)
    -- a customer's placed orders that day: <number>:o, else 1 (batch_apply.lua)
    local orders = {}
    for f = 1, #flat, 2 do
      local idx, what = revenue_field(flat[f])
      local j = idx and value_of[idx]
      if j then
        local s, v = per[j], tonumber(flat[f + 1])
        if what == '' then
          add_parts(s.net, v, 0)
          if orders[idx] == nil then orders[idx] = 1 end
        elseif what == 'h' then add_parts(s.net, 0, v)
        elseif what == 'r' then add_parts(s.refunded, v, 0)
        elseif what == 'rh' then add_parts(s.refunded, 0, v)
        elseif what == 'o' then orders[idx] = v end
      end
    end
    for idx, n in pairs(orders) do
      local s = per[value_of[idx]]
      s.orders = s.orders + n
      s.placed[idx] = (s.placed[idx] or 0) + n
    end
  end
  local out = {}
  for j = 1, k do
    local s = per[j]
    local buyers, repeaters = 0, 0
    for _, n in pairs(s.placed) do
      if n >= 1 then buyers = buyers + 1 end
      if n >= 2 then repeaters = repeaters + 1 end
    end
    -- placed = net + refunded
    local placed = {s.net[1], s.net[2]}
    add_parts(placed, s.refunded[1], s.refunded[2])
    out[j] = {
      s.orders, placed[1], placed[2], s.refunded[1], s.refunded[2], buyers, repeaters,
    }
  end
  return out
end

local function fmt(n) return string.format('%.0f', n) end

local result = {}
for i = first_pair, #ARGV, 2 do
  local start, stop = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local S, E = active_at(start), active_at(stop)
  local suffix = p .. ':' .. ARGV[i]
  local sales = redis.call('HMGET', P .. 'sales:' .. suffix, 'o', 'pm', 'ph', 'rm', 'rh', 'b', 'r')
  local coh = P .. 'coh:' .. suffix
  local coh_start = cohort_start(P, suffix)
  local row = {
    redis.call('BITCOUNT', S),
    redis.call('BITCOUNT', E),
    count_and(S, E),
    cohort_and_count(coh, coh_start, E, X),
    sales[1] or '0',
    sales[2] or '0',
    sales[3] or '0',
    sales[4] or '0',
    sales[5] or '0',
    sales[6] or '0',
    sales[7] or '0',
  }
  for _, value in ipairs(row) do result[#result + 1] = value end
  if k > 0 then
    local by_value = value_sales(start, stop)
    for j = 1, k do
      redis.call('BITOP', 'AND', MS, S, masks[j])
      redis.call('BITOP', 'AND', ME, E, masks[j])
      local part = {
        redis.call('BITCOUNT', MS),
        redis.call('BITCOUNT', ME),
        count_and(MS, E),
        cohort_and_count(coh, coh_start, ME, X),
      }
      for _, value in ipairs(part) do result[#result + 1] = value end
      for _, value in ipairs(by_value[j]) do result[#result + 1] = fmt(value) end
    end
  end
  done_with(start)
  done_with(stop)
end
redis.call('DEL', X, MS, ME)
return result
