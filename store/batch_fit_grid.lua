-- The batch script, part 6 of 7: customer numbers, the fit grid and order days.

-- A dense number per customer, for the bitmaps keyed by customer number: the shard's next
-- free number (`ids:next`, read once and written back at the end) when the customer is
-- first seen, kept in its hash as `ix`.
local ids_key = P .. 'ids:next'
local next_id, first_id = nil, nil
local function customer_index(c, t)
  if c.f.fs then
    put_min(c, 'fs', t)
    return c.ix
  end
  put(c, 'fs', t)
  if not next_id then
    next_id = tonumber(redis.call('GET', ids_key) or '0')
    first_id = next_id
  end
  -- as text: a number passed to redis.call is formatted again on every call
  c.ix = tostring(next_id)
  c.new_ix = true
  next_id = next_id + 1
  return c.ix
end

-- The fit grid: buyers counted by (first order day, last order day, distinct order days),
-- all a P(alive) fit needs, so a refit reads this small hash per shard instead of every
-- customer (store/models.py). A placed order on a day new to the customer moves it from
-- its cell to the next; the moves are summed over the batch and written at its end.
local grid_key = P .. 'fitgrid'
local grid_deltas, grid_cells = {}, {}
local function grid_move(cell, delta)
  if grid_deltas[cell] == nil then
    grid_deltas[cell] = 0
    grid_cells[#grid_cells + 1] = cell
  end
  grid_deltas[cell] = grid_deltas[cell] + delta
end

-- The first and last of the customer's days with placed orders, and how many there are
-- ({first, last, n}), worked out on its first placed order in the batch and followed from
-- there. Its orders per day (`d`) count every placed order (they sum to `o`).
local function order_days(c)
  if c.days then return c.days end
  local first, last, n = nil, nil, 0
  for d in pairs(c.f.d) do
    n = n + 1
    if not first or d < first then first = d end
    if not last or d > last then last = d end
  end
  c.days = {first = first, last = last, n = n}
  return c.days
end

-- The customer's placed orders in the day, week and month of `days`, before this order.
local function placed_in_periods(c, days)
  local d, w, m = days.dn, days.wn, days.mn
  local m_end = month_end(m)
  local nd, nw, nm = 0, 0, 0
  for day, k in pairs(c.f.d) do
    if day == d then nd = k end
    if day >= w and day < w + 7 then nw = nw + k end
    if day >= m and day < m_end then nm = nm + k end
  end
  return nd, nw, nm
end

-- Called before a placed order is counted, when its day d has no orders yet.
local function fit_grid_day(c, d)
  local days = order_days(c)
  if days.first then
    grid_move(string.format('%d:%d:%d', days.first, days.last, days.n), -1)
    days.first, days.last = math.min(days.first, d), math.max(days.last, d)
  else
    days.first, days.last = d, d
  end
  days.n = days.n + 1
  grid_move(string.format('%d:%d:%d', days.first, days.last, days.n), 1)
end
