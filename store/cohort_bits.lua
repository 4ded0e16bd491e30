-- Cohort bitmaps against other bitmaps: what period_counts.lua and cohort_row.lua share
-- (store/periods.py puts this text before each of them).

-- Where the cohort bitmap of period '<p>:<day>' starts: bit i stands for the customer
-- numbered start + i. batch_periods.lua keeps the start in coh:base; none means 0.
local function cohort_start(P, name)
  return tonumber(redis.call('HGET', P .. 'coh:base', name) or '0')
end

-- How many customers of the cohort bitmap `cohort` (starting at `start`) are also in
-- `other` (a bitmap starting at 0), with `scratch` as the scratch key. The matching bytes
-- of `other` are copied to the scratch key first, so that both line up.
local function cohort_and_count(cohort, start, other, scratch)
  if start == 0 then
    redis.call('BITOP', 'AND', scratch, cohort, other)
  else
    local len = redis.call('STRLEN', cohort)
    if len == 0 then return 0 end
    local from = start / 8
    local part = redis.call('GETRANGE', other, from, from + len - 1)
    if part == '' then return 0 end
    redis.call('SET', scratch, part)
    redis.call('BITOP', 'AND', scratch, scratch, cohort)
  end
  return redis.call('BITCOUNT', scratch)
end

-- Marks in `into` each customer number whose bit is set in the bitmap text `bits` (bit i
-- standing for the number start + i): into[number] = mark.
local function mark_members(bits, start, into, mark)
  for b = 1, #bits do
    local v = string.byte(bits, b)
    if v ~= 0 then
      local at = start + (b - 1) * 8
      for k = 0, 7 do
        local m = 2 ^ (7 - k)
        if v >= m then
          v = v - m
          into[at + k] = mark
        end
      end
    end
  end
end

-- The fields of a day's revenue hash (rv:d:<day>, batch_periods.lua): a customer number
-- and what the field holds ('' net low part, 'h' net high part, 'o' placed orders, 'r'
-- and 'rh' refunded micros), or nil for a field of another form.
local function revenue_field(field)
  local idx, what = string.match(field, '^(%d+):?(%a*)$')
  if not idx then return nil end
  return tonumber(idx), what
end
