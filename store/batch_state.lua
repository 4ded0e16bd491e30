-- The batch script, part 2 of 7 (store/store.py joins the parts): the customer's state,
-- its codec (packed in pieces), money in two parts.

-- A customer's hash c:<id> holds its state packed with MessagePack: a map of field ->
-- number, with its placed orders per day under `d` ({day number -> orders}), cut in
-- pieces of at most PIECE bytes in the fields s1, s2, ... (pieces.lua says why). Beside
-- them lie the fields other scripts read and write on their own: `ix` (the customer's
-- number), `q` and `r` (the evaluator's queue marks) and `ev`, `ev2`, ... (its last
-- evaluation). A packed state costs a read and a decode where a field each cost a string
-- each way; read_customers.lua unpacks it for the readers.
local PIECE_NAMES = {}
local function piece_name(i)
  local name = PIECE_NAMES[i]
  if not name then
    name = 's' .. i
    PIECE_NAMES[i] = name
  end
  return name
end

-- The packed state of the hash at key, from the fields got[3], got[4], ... (s1, s2, ...
-- as read with ix and q), and how many pieces it had; nil without one.
local READ_PIECES = 3
local function packed_state(key, got)
  if not got[3] then return nil, 0 end
  local parts = {}
  for i = 1, READ_PIECES do
    if not got[2 + i] then return table.concat(parts), #parts end
    parts[i] = got[2 + i]
  end
  -- a long state: the rest one by one
  while true do
    local more = redis.call('HGET', key, piece_name(#parts + 1))
    if not more then return table.concat(parts), #parts end
    parts[#parts + 1] = more
  end
end

-- Fields that most customers would hold twice are left out while they equal another:
-- {field, the field it then equals, a count that is above 0 whenever the field exists
-- (none: the other field's presence tells)}. The first event seen is mostly the first
-- activity; the latest activity, mostly the latest order or login. A reader takes a
-- missing field as equal to the other (store/store.py reads them the same way).
local SAME_AS = {{'fs', 'fa'}, {'lo', 'la', 'o'}, {'ll', 'la', 'lg'}}

-- Customers are read once per batch (before the first write, see below) into Lua tables,
-- changed there, and written back once at the end when they changed. Returns nil and why
-- for a customer whose packed state cannot be read (a piece lost or changed by hand; a
-- customer with a number has one).
local customers, customer_order = {}, {}
local function customer(cid)
  local c = customers[cid]
  if c then return c end
  local key = P .. 'c:' .. cid
  local got = redis.call('HMGET', key, 'ix', 'q', 's1', 's2', 's3')
  local packed, pieces = packed_state(key, got)
  local f = {d = {}}
  if packed then
    local ok, state = pcall(cmsgpack.unpack, packed)
    if not ok or type(state) ~= 'table' or type(state.d or {}) ~= 'table' then
      return nil, 'CORRUPT the packed state of customer ' .. cid .. ' cannot be read'
    end
    f = state
    if not f.d then f.d = {} end
  elseif got[1] then
    return nil, 'CORRUPT customer ' .. cid .. ' has a number but no packed state'
  end
  for i = 1, #SAME_AS do
    local same = SAME_AS[i]
    local name, other = same[1], f[same[2]]
    if f[name] == nil and other ~= nil and (not same[3] or (f[same[3]] or 0) > 0) then
      f[name] = other
    end
  end
  c = {key = key, f = f, ix = got[1] or nil, q = got[2] or nil, pieces = pieces,
    changed = false}
  customers[cid] = c
  customer_order[#customer_order + 1] = cid
  return c
end

-- Fields hold numbers, each below 2^53, where doubles count every unit.
local function put(c, name, value)
  c.f[name] = value
  c.changed = true
end

local function add(c, name, delta)
  c.f[name] = (c.f[name] or 0) + delta
  c.changed = true
end

-- Money. A sum of micros passes 2^53 (some 9e9 units, US$560k of IDR) long before a shop's
-- revenue does, so each sum is kept as two numbers doubles count exactly: its micros below
-- MEGA under its own name (`pm`), and its whole MEGAs, a million units each, under the
-- name of its high part (`ph`), absent while 0. That counts exactly up to 2^53 MEGAs, some
-- 9e21 units. An amount comes as decimal digits and is cut into the same two parts.
local MEGA = 1e12
local function money(text)
  local n = #text
  if n <= 12 then return 0, tonumber(text) end
  return tonumber(string.sub(text, 1, n - 12)), tonumber(string.sub(text, n - 11))
end

-- Adds (hi, lo) to the sum kept in t[low], t[high], the low part carried into the high.
local function add_money(t, low, high, hi, lo)
  local l, h = (t[low] or 0) + lo, (t[high] or 0) + hi
  if l >= MEGA then
    local carry = math.floor(l / MEGA)
    l, h = l - carry * MEGA, h + carry
  end
  t[low] = l
  if h ~= 0 then t[high] = h end
end

local function put_min(c, name, value)
  local cur = c.f[name]
  if not cur or value < cur then put(c, name, value) end
end

local function put_max(c, name, value)
  local cur = c.f[name]
  if not cur or value > cur then put(c, name, value) end
end

-- The latest order's time (lo) and its amount (lv, reporting micros as digits); of orders
-- at the same millisecond, the largest, so that the outcome does not depend on their order.
local function last_order(c, t, amount)
  local cur, had = c.f.lo, c.f.lv
  if not cur or t > cur or (t == cur and (not had or #amount > #had
      or (#amount == #had and amount > had))) then
    put(c, 'lv', amount)
  end
  put_max(c, 'lo', t)
end

-- Hashes of totals shared by the batch's customers (per-period sales, survey totals,
-- response histogram): deltas summed here, one HINCRBY per field at the end. A field
-- touched by the batch is written even when its delta sums to 0, as one HINCRBY per event
-- would have created it.
local totals, total_keys = {}, {}
local function bump(key, field, delta)
  local t = totals[key]
  if not t then
    t = {fields = {}, order = {}}
    totals[key] = t
    total_keys[#total_keys + 1] = key
  end
  if t.fields[field] == nil then
    t.fields[field] = 0
    t.order[#t.order + 1] = field
  end
  t.fields[field] = t.fields[field] + delta
end

-- The customer attributes (country, channel, shop, and the currency of its orders:
-- fields xc, xh, xs, xy), each one array:
-- the value of the earliest event that carried it and its time, then the latest's, cut
-- short while they repeat: {value, time} while one event is known (or all at the same
-- millisecond with one value), {value, first time, latest time} while the value never
-- changed, else {first value, its time, latest value, its time}. Of events at the same
-- millisecond, the smallest value is the first and the largest the latest, so that the
-- outcome does not depend on their order.
-- Each value also has a bitmap of the customers whose latest value it is, by customer
-- number (dim:<letter>:<value>), which the breakdowns read (period_counts.lua,
-- cohort_row.lua, cohort_revenue.lua).
local ATTRIBUTE_FIELDS = {'xc', 'xh', 'xs', 'xy'}
local ATTRIBUTE_LETTERS = {'c', 'h', 's', 'y'}
-- The attribute numbered i (country, channel, shop, currency) seen with `value` at time t.
local function attribute(c, idx, t, i, value)
  local name = ATTRIBUTE_FIELDS[i]
  local letter = ATTRIBUTE_LETTERS[i]
  local a = c.f[name]
  local v1, t1, v2, t2
  if not a then
    v1, t1, v2, t2 = value, t, value, t
  else
    v1, t1 = a[1], a[2]
    if #a == 2 then v2, t2 = a[1], a[2]
    elseif #a == 3 then v2, t2 = a[1], a[3]
    else v2, t2 = a[3], a[4] end
  end
  if t < t1 or (t == t1 and value < v1) then v1, t1 = value, t end
  if t > t2 or (t == t2 and value > v2) then v2, t2 = value, t end
  local before = a and (#a == 4 and a[3] or a[1])
  if before ~= v2 then
    -- customers per latest value (attrs:<letter>), for the breakdowns' sizes
    if before then
      bump(P .. 'attrs:' .. letter, before, -1)
      redis.call('SETBIT', P .. 'dim:' .. letter .. ':' .. before, idx, '0')
    end
    bump(P .. 'attrs:' .. letter, v2, 1)
    redis.call('SETBIT', P .. 'dim:' .. letter .. ':' .. v2, idx, '1')
  end
  if v1 == v2 and t1 == t2 then put(c, name, {v1, t1})
  elseif v1 == v2 then put(c, name, {v1, t1, t2})
  else put(c, name, {v1, t1, v2, t2}) end
end

-- The attributes an order or a login carries (its record's dims: country, channel, shop).
local function attributes(c, idx, t, dims)
  local i = 1
  for value in string.gmatch(dims .. '\31', '([^\31]*)\31') do
    if value ~= '' and i <= 3 then attribute(c, idx, t, i, value) end
    i = i + 1
  end
end

-- An order's currency, as sent (the fourth attribute, for the breakdowns by currency).
local CURRENCY = 4

