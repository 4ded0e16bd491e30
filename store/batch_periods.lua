-- The batch script, part 3 of 7: period keys, activity and cohort bitmaps, sales sums.

-- Keys per period (family:p:day), named once per batch.
local PERIODS = {'d', 'w', 'm'}
local period_keys = {}
local function period_key(family, p, day)
  local by_period = period_keys[family]
  if not by_period then
    by_period = {d = {}, w = {}, m = {}}
    period_keys[family] = by_period
  end
  local key = by_period[p][day]
  if not key then
    key = P .. family .. ':' .. p .. ':' .. day
    by_period[p][day] = key
  end
  return key
end

-- Activity bitmaps (bit = the customer's dense index) per day, week and month, and the
-- cohort bitmaps: a customer sits in the cohort of its first activity, and moves when an
-- earlier activity arrives late (in the periods that change).
local act_counts_key = P .. 'act:n'

-- The first days (epoch-day numbers, as text) of the day, week and month of the local
-- date numbered `day`, as the worker computes them for an event (processors/windows.py):
-- day 0, 1970-01-01, was a Thursday, and a week starts on the calendar's week_start
-- (0 Monday); the month comes from the proleptic Gregorian calendar (days to civil date,
-- counted in 400-year eras from 0000-03-01).
local function periods_of(day)
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local dom = doy - math.floor((153 * mp + 2) / 5)  -- day of the month, from 0
  return {d = num(day), w = num(day - (day + 3 - week_start) % 7), m = num(day - dom)}
end

-- The local date number of a customer's stored activity time `ms`: kept beside it (field
-- `name`) when the calendar is not UTC's, else the UTC date.
local function activity_day(c, ms, name)
  if not ms then return nil end
  return c.f[name] or math.floor(ms / 86400000)
end

-- The first day of the month after the one starting on day m (a month has 28 to 31 days,
-- so day m + 31 lies in the next one), once per month and batch.
local month_ends = {}
local function month_end(m)
  local e = month_ends[m]
  if not e then
    e = tonumber(periods_of(m + 31).m)
    month_ends[m] = e
  end
  return e
end

-- Whether a day (an epoch-day number, or nil) lies in the day, the week and the month
-- of an event (first days d, w, m, with m_end the first day after the month): the bits of
-- the customer's first and latest activity are set already in those periods.
local function same_periods(day, d, w, m, m_end)
  if not day then return false, false, false end
  return day == d, day - (day + 3 - week_start) % 7 == w, day >= m and day < m_end
end

-- A cohort bitmap starts at the number of the first customer put in it, rounded down to a
-- whole byte: customers are numbered as they first appear, so a cohort's members mostly
-- lie close together, and its bitmap keeps no room for everyone numbered before them. The
-- start (a bit number) is kept in the hash coh:base under '<p>:<day>' when it is above 0
-- (cohort_bits.lua reads it; none means 0).
local coh_base_key = P .. 'coh:base'
local coh_bases = {}
local function cohort_base(key, name, idx)
  local base = coh_bases[name]
  if base then return base end
  base = tonumber(redis.call('HGET', coh_base_key, name) or '-1')
  if base < 0 then
    base = 0
    if redis.call('EXISTS', key) == 0 then
      base = idx - idx % 8
      if base > 0 then redis.call('HSET', coh_base_key, name, num(base)) end
    end
  end
  coh_bases[name] = base
  return base
end

-- Sets (bit '1') or clears ('0') the customer numbered idx in the cohort of period p that
-- starts on day. A customer numbered below the bitmap's start moves the start down to it:
-- the bits already there shift up by the bytes added in front.
local function cohort_bit(p, day, idx, bit)
  local key = period_key('coh', p, day)
  local name = p .. ':' .. day
  local n = tonumber(idx)
  local base = cohort_base(key, name, n)
  if n < base then
    local start = n - n % 8
    local bits = redis.call('GET', key) or ''
    redis.call('SET', key, string.rep('\0', (base - start) / 8) .. bits)
    redis.call('HSET', coh_base_key, name, num(start))
    coh_bases[name] = start
    base = start
  end
  redis.call('SETBIT', key, num(n - base), bit)
end

-- The activity bitmaps of the day, the week and the month of `days`, named once per day and
-- batch; returns the one named by `which` ('ad', 'aw' or 'am', the day's by default).
local function day_activity(days, which)
  days.ad = period_key('act', 'd', days.d)
  days.aw = period_key('act', 'w', days.w)
  days.am = period_key('act', 'm', days.m)
  return days[which or 'ad']
end

-- The event at time t (ms) counts as activity: its day, week and month bits, and the cohort
-- of the customer's first activity.
local function activity(c, idx, t, days)
  local first = c.f.fa
  local la = c.f.la
  local d, w, m = days.dn, days.wn, days.mn
  local m_end = month_end(m)
  local first_day = activity_day(c, first, 'fad')
  local fd, fw, fm = same_periods(first_day, d, w, m, m_end)
  local ld, lw, lm = same_periods(activity_day(c, la, 'lad'), d, w, m, m_end)
  if not (fd or ld) then
    -- a day's count of active customers moves with every bit its bitmap gains, which
    -- tells the period readers' window unions (period_counts.lua) which days to OR again
    if redis.call('SETBIT', days.ad or day_activity(days), idx, '1') == 0 then
      bump(act_counts_key, days.d, 1)
    end
  end
  if not (fw or lw) then redis.call('SETBIT', days.aw or day_activity(days, 'aw'), idx, '1') end
  if not (fm or lm) then redis.call('SETBIT', days.am or day_activity(days, 'am'), idx, '1') end
  if not first or t < first then
    put(c, 'fa', t)
    if zoned then put(c, 'fad', d) end
    local old = first and periods_of(first_day)
    for _, p in ipairs(PERIODS) do
      local day = days[p]
      if not old or old[p] ~= day then
        if old then cohort_bit(p, old[p], idx, '0') end
        cohort_bit(p, day, idx, '1')
      end
    end
  end
  if not la or t > la then
    put(c, 'la', t)
    if zoned then put(c, 'lad', d) end
  end
end

-- Orders and money per period. Buyers (`b`) and repeat buyers (`r`, two placed orders or
-- more) are counted in the period's sales hash when the customer's placed orders in the
-- period reach one and two (`before`: its placed orders in the period before this one).
-- The batch's sums per sales hash, {field -> sum}, are written at its end (SALES_FIELDS
-- in that order, those the batch touched, even when they sum to 0).
local SALES_FIELDS = {'o', 'b', 'r'}
local sales, sales_keys, key_of_sales = {}, {}, {}
local function sales_of(p, day)
  local key = period_key('sales', p, day)
  local s = sales[key]
  if not s then
    s = {}
    sales[key] = s
    sales_keys[#sales_keys + 1] = key
    key_of_sales[s] = key
  end
  return s
end

-- The sums of the day, the week and the month of `days` (a table per day and batch, which
-- keeps them once looked up).
local function day_sales(days)
  local sd = days.sd
  if not sd then
    sd = sales_of('d', days.d)
    days.sd, days.sw, days.sm = sd, sales_of('w', days.w), sales_of('m', days.m)
  end
  return sd, days.sw, days.sm
end

local function placed_sale(s, hi, lo, before)
  s.o = (s.o or 0) + 1
  add_money(s, 'pm', 'ph', hi, lo)
  if before == 0 then s.b = (s.b or 0) + 1 elseif before == 1 then s.r = (s.r or 0) + 1 end
end

local function placed_sales(days, hi, lo, bd, bw, bm)
  local sd, sw, sm = day_sales(days)
  placed_sale(sd, hi, lo, bd)
  placed_sale(sw, hi, lo, bw)
  placed_sale(sm, hi, lo, bm)
end

local function refunded_sales(days, hi, lo)
  local sd, sw, sm = day_sales(days)
  add_money(sd, 'rm', 'rh', hi, lo)
  add_money(sw, 'rm', 'rh', hi, lo)
  add_money(sm, 'rm', 'rh', hi, lo)
end

-- Revenue per customer and day, for the cohorts' revenue and the breakdowns
-- (cohort_revenue.lua and period_counts.lua read it through the cohort and attribute
-- bitmaps, so a customer moved to an earlier cohort by late data, or to another country,
-- takes its revenue along): the hash rv:d:<day> holds, per customer number, the placed
-- minus refunded micros of that day in two parts, field <number> below MEGA and
-- <number>:h the whole MEGAs; its placed orders that day, <number>:o, only when not 1
-- (batch_apply.lua); and its refunded
-- micros, <number>:r and <number>:rh, on days it has refunds. The batch's sums per hash
-- are written at its end.
local revenue, revenue_keys = {}, {}
local function day_revenue(days, idx, hi, lo, placed)
  local key = days.rv
  if not key then
    key = period_key('rv', 'd', days.d)
    days.rv = key
  end
  local r = revenue[key]
  if not r then
    r = {sums = {}, names = {}}
    revenue[key] = r
    revenue_keys[#revenue_keys + 1] = key
  end
  local s = r.sums[idx]
  if s == nil then
    r.names[#r.names + 1] = idx
    -- net low, net high, placed orders, refunded low, refunded high
    s = {0, 0, 0, 0, 0}
    r.sums[idx] = s
  end
  if placed then
    s[1], s[2], s[3] = s[1] + lo, s[2] + hi, s[3] + 1
  else
    s[1], s[2], s[4], s[5] = s[1] - lo, s[2] - hi, s[4] + lo, s[5] + hi
  end
end

-- The whole MEGAs of a low part of either sign, rounded toward 0.
local function mega_carry(l)
  if l >= MEGA then return math.floor(l / MEGA) end
  if l <= -MEGA then return -math.floor(-l / MEGA) end
  return 0
end

-- A batch's money sum added to a sales hash: the stored low part takes the batch's, and
-- what passes MEGA is carried into the high part.
local function write_money(key, s, low, high)
  if s[low] == nil then return end
  local l = redis.call('HINCRBY', key, low, num(s[low]))
  local carry = math.floor(l / MEGA)
  if carry > 0 then redis.call('HINCRBY', key, low, num(-carry * MEGA)) end
  local h = (s[high] or 0) + carry
  if h > 0 then redis.call('HINCRBY', key, high, num(h)) end
end
