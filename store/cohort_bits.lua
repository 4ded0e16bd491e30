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
