-- The cohorts' revenue on one shard: for each cohort and each period from its own on, the
-- placed minus refunded micros of the cohort's customers in that period.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), the key (after the prefix) of the
-- bitmap of the customers to count ('' for all), then the first days of the periods to
-- report, oldest first (each a cohort, and a column), then the day after the last one.
-- Returns {cohort, period, low, high, ...}: indexes into that list of periods (from 0) and
-- the sum in two parts (micros below 10^12 and whole 10^12s, each of either sign).
local P, p, mask = ARGV[1], ARGV[2], ARGV[3]
local n = #ARGV - 4
local MEGA = 1e12

-- Which listed cohort each customer number belongs to, from the cohort bitmaps (bit i of
-- coh:<p>:<day> stands for the customer numbered start + i); with a breakdown's bitmap
-- (dim:<letter>:<value>, from customer number 0), only its customers.
local owner = {}
for j = 1, n do
  local name = p .. ':' .. ARGV[3 + j]
  local bits = redis.call('GET', P .. 'coh:' .. name)
  if bits then mark_members(bits, cohort_start(P, name), owner, j - 1) end
end
local wanted = nil
if mask ~= '' then
  wanted = {}
  mark_members(redis.call('GET', P .. mask) or '', 0, wanted, true)
end

-- Every day's revenue hash (rv:d:<day>), added to its customer's cohort and the period
-- holding the day; each cell kept in two parts so that no sum leaves the doubles' exact
-- range.
local cells, order = {}, {}
local function add(j, i, lo, hi)
  local key = j * 100000 + i
  local cell = cells[key]
  if not cell then
    cell = {j, i, 0, 0}
    cells[key] = cell
    order[#order + 1] = cell
  end
  local l = cell[3] + lo
  local carry = 0
  if l >= MEGA then carry = math.floor(l / MEGA) elseif l <= -MEGA then carry = -math.floor(-l / MEGA) end
  cell[3], cell[4] = l - carry * MEGA, cell[4] + hi + carry
end

for i = 1, n do
  local from, to = tonumber(ARGV[3 + i]), tonumber(ARGV[4 + i])
  for day = from, to - 1 do
    local flat = redis.call('HGETALL', P .. 'rv:d:' .. day)
    for f = 1, #flat, 2 do
      local idx, what = revenue_field(flat[f])
      local j = idx and owner[idx]
      if j ~= nil and j <= i - 1 and (what == '' or what == 'h')
          and (wanted == nil or wanted[idx]) then
        local value = tonumber(flat[f + 1])
        if what == 'h' then add(j, i - 1, 0, value) else add(j, i - 1, value, 0) end
      end
    end
  end
end

local out = {}
for _, cell in ipairs(order) do
  out[#out + 1] = tostring(cell[1])
  out[#out + 1] = tostring(cell[2])
  out[#out + 1] = string.format('%.0f', cell[3])
  out[#out + 1] = string.format('%.0f', cell[4])
end
return out
