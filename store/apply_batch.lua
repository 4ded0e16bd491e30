#!lua
-- The shebang (no flags) makes Redis refuse the whole script up front when it is over
-- maxmemory with noeviction, instead of failing at a write halfway through.
--
-- Applies one batch of consumed messages atomically: offset check, dedupe, state update.
-- The rules are those of processors/state.py (apply_event); keep the two in step.
-- Nothing in here may fail halfway (Redis keeps the writes made before an error): inputs
-- are bounded by validation, and money sums are kept in two parts (see Money) that no
-- real shop can run out of.
--
-- KEYS[1] the shard's offsets hash (P .. 'offsets:' .. scope): declared so that a Redis
--   Cluster routes the call to the node holding the shard; every key the script builds
--   carries the same hash tag, so they all lie in that slot
-- ARGV[1] the shard's key prefix   ARGV[2] offsets scope (broker cluster id)
-- ARGV[3] now (ms)          ARGV[4] dedupe bucket width (ms)   ARGV[5] buckets kept
-- ARGV[6] activity kinds, letters: o=order l=login s=support
-- ARGV[7] the shard's records, a JSON array of arrays of 15 strings:
--   kind(o|l|s|x) topic partition offset dedupe_id customer_id ts_ms d w m a1 a2 a3 a4 stamp
--   dedupe_id: a digest of event type, customer and event id (the worker computes it)
--   d w m: epoch-day numbers of the start of the event's day, ISO week and month
--   order:   a1=status a2=amount_micros in the reporting currency a3=original currency
--            (may be empty) a4=amount_micros as sent, in that currency (decimal digits,
--            up to 10^19)
--   support: a1=action a2=ticket a3=survey a4=score
--   rejected (x): a1=reason
--   stamp: the Kafka timestamp (ms) of the message, kept with the partition's offset so a
--   recreated topic can be told from the one the offset belongs to
-- ARGV[8] JSON object topic|partition -> lowest offset the broker still holds, or "" to
--   take any offset above the stored one. With it, offsets must follow the stored one
--   without a gap: a gap means the store lost what it had applied (restore, failover,
--   flush), and the records of that partition are refused so the worker can seek back.
-- ARGV[9] JSON object topic|partition -> the runs of consecutive offsets of the whole
--   batch, over every shard, in order: {{first, last, stamp of the last}, ...}. A shard's
--   own records of a partition are not consecutive, so the gap check and the stored offset
--   follow the batch's runs, as if the records came one by one: a run that does not
--   continue the stored offset (or what the runs before it reached) is a gap, and the
--   partition's records from there on are refused. Every shard is called for every batch,
--   with or without records, and stores the offset the runs reached: a batch spread over
--   shards stays exactly-once when the worker stops between two shards, since each shard
--   skips what it has already applied.
-- Returns {applied, duplicates, redelivered, rejected, gaps, set aside}: gaps is a flat
-- list {tp, next offset wanted, ...}; set aside lists the events ('tp|offset') of
-- customers whose stored state cannot be read (see below).

local P = ARGV[1]
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
local offsets_key = KEYS[1]
local stats_key = P .. 'stats'
local meta_key = P .. 'meta'
local newest_key = P .. 'newest:' .. ARGV[2]
local stamps_key = P .. 'stamps:' .. ARGV[2]
local now = tonumber(ARGV[3])
local width = tonumber(ARGV[4])
local nbuckets = tonumber(ARGV[5])
local kinds = ARGV[6]
local bucket = math.floor(now / width)

local applied, duplicates, redelivered, rejected = 0, 0, 0, 0
local last_offsets = {}
local newest = {}
local batch_first, batch_last, batch_first_n, batch_last_n
local kind_counts_activity = {
  o = string.find(kinds, 'o', 1, true) ~= nil,
  l = string.find(kinds, 'l', 1, true) ~= nil,
  s = string.find(kinds, 's', 1, true) ~= nil,
}

-- Integers are Lua doubles here, exact below 2^53 (money sums are kept in two parts below
-- it); written back as plain digits (tostring would round to 14 digits), and never as "-0".
local function num(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end

local function set_min(key, field, value)
  local cur = redis.call('HGET', key, field)
  if not cur or tonumber(value) < tonumber(cur) then redis.call('HSET', key, field, value) end
end

local function set_max(key, field, value)
  local cur = redis.call('HGET', key, field)
  if not cur or tonumber(value) > tonumber(cur) then redis.call('HSET', key, field, value) end
end

-- A customer's hash c:<id> holds its state packed with MessagePack: a map of field ->
-- number, with its placed orders per day under `d` ({day number -> orders}), cut in
-- pieces of at most PIECE bytes in the fields s1, s2, ... (pieces.lua says why). Beside them lie the
-- fields other scripts read and write on their own: `ix` (the customer's number), `q` and
-- `r` (the evaluator's queue marks) and `ev`, `ev2`, ... (its last evaluation). A packed state costs a
-- read and a decode where a field each cost a string each way; read_customers.lua
-- unpacks it for the readers.
-- Hashes of earlier versions hold every field as text, the days as fields named by the
-- day number: they are read as such, and packed at their next write.
local HASH_FIELDS = {ix = true, q = true, r = true, ev = true}
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

-- A hash of an earlier version as a state, and the names of its fields to delete once the
-- state is packed.
local function unpacked_state(key)
  local flat = redis.call('HGETALL', key)
  local f, d, names = {}, {}, {}
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    -- the evaluation's pieces after `ev` (store_evaluations.lua) stay too
    if not HASH_FIELDS[name] and not string.match(name, '^ev%d+$') then
      names[#names + 1] = name
      local b = string.byte(name, 1)
      if b and b >= 48 and b <= 57 then  -- only the day fields' names are digits
        d[tonumber(name)] = tonumber(value)
      else
        f[name] = tonumber(value) or value
      end
    end
  end
  -- the periods of the first activity, which the earliest versions kept, go
  f.fad, f.faw, f.fam = nil, nil, nil
  f.d = d
  return f, names
end

-- Customers are read once per batch (before the first write, see below) into Lua tables,
-- changed there, and written back once at the end when they changed. Returns nil and why
-- for a customer whose packed state cannot be read (a piece lost or changed by hand).
local customers, customer_order = {}, {}
local function customer(cid)
  local c = customers[cid]
  if c then return c end
  local key = P .. 'c:' .. cid
  local got = redis.call('HMGET', key, 'ix', 'q', 's1', 's2', 's3')
  local packed, pieces = packed_state(key, got)
  local f, old_names = nil, nil
  if packed then
    local ok, state = pcall(cmsgpack.unpack, packed)
    if not ok or type(state) ~= 'table' or type(state.d or {}) ~= 'table' then
      return nil, 'CORRUPT the packed state of customer ' .. cid .. ' cannot be read'
    end
    f = state
    if not f.d then f.d = {} end
  elseif got[1] then
    f, old_names = unpacked_state(key)
  else
    f = {d = {}}
  end
  for i = 1, #SAME_AS do
    local same = SAME_AS[i]
    local name, other = same[1], f[same[2]]
    if f[name] == nil and other ~= nil and (not same[3] or (f[same[3]] or 0) > 0) then
      f[name] = other
    end
  end
  c = {key = key, f = f, ix = got[1] or nil, q = got[2] or nil, pieces = pieces,
    old_names = old_names, changed = old_names ~= nil}
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

-- The first days (epoch-day numbers, as text) of the day, ISO week and month that hold
-- time ts (ms), as the worker computes them for an event. Periods are UTC; day 0,
-- 1970-01-01, was a Thursday; the month comes from the proleptic Gregorian calendar
-- (days to civil date, counted in 400-year eras from 0000-03-01).
local function periods_of(ts)
  local day = math.floor(tonumber(ts) / 86400000)
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local dom = doy - math.floor((153 * mp + 2) / 5)  -- day of the month, from 0
  return {d = num(day), w = num(day - (day + 3) % 7), m = num(day - dom)}
end

-- The first day of the month after the one starting on day m (a month has 28 to 31 days,
-- so day m + 31 lies in the next one), once per month and batch.
local month_ends = {}
local function month_end(m)
  local e = month_ends[m]
  if not e then
    e = tonumber(periods_of((m + 31) * 86400000).m)
    month_ends[m] = e
  end
  return e
end

-- Whether a day (an epoch-day number, or nil) lies in the day, the ISO week and the month
-- of an event (first days d, w, m, with m_end the first day after the month): the bits of
-- the customer's first and latest activity are set already in those periods.
local function same_periods(day, d, w, m, m_end)
  if not day then return false, false, false end
  return day == d, day - (day + 3) % 7 == w, day >= m and day < m_end
end

-- A cohort bitmap starts at the number of the first customer put in it, rounded down to a
-- whole byte: customers are numbered as they first appear, so a cohort's members mostly
-- lie close together, and its bitmap keeps no room for everyone numbered before them. The
-- start (a bit number) is kept in the hash coh:base under '<p>:<day>'; a bitmap without
-- one starts at 0, as those of earlier versions do (cohort_bits.lua reads them).
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
  local fd, fw, fm = same_periods(first and math.floor(first / 86400000), d, w, m, m_end)
  local ld, lw, lm = same_periods(la and math.floor(la / 86400000), d, w, m, m_end)
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
    local old = first and periods_of(first)
    for _, p in ipairs(PERIODS) do
      local day = days[p]
      if not old or old[p] ~= day then
        if old then cohort_bit(p, old[p], idx, '0') end
        cohort_bit(p, day, idx, '1')
      end
    end
  end
  if not la or t > la then put(c, 'la', t) end
end

-- Orders and money per period. Buyers (`b`) and repeat buyers (`r`, two placed orders or
-- more) are counted in the period's sales hash when the customer's placed orders in the
-- period reach one and two (`before`: its placed orders in the period before this one).
-- Earlier versions kept bitmaps `buy:` and `rep:` instead; a customer reaches one and two
-- once per period, so a period's readers add the two.
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

-- Dedupe digests (event type, customer, event id: 64 bits in base64, computed by the
-- worker). Each is kept with the bucket of time it arrived in (bucket = now // width); it
-- makes a later event a duplicate while that bucket is the current one or one of the
-- `nbuckets` before it. Digests are spread over 2^k small hashes `dg:<k>:<n>`: n = the
-- top k bits of the digest's first five characters (30 bits), field = the digest, value =
-- the bucket. Small hashes stay listpacks (some 16 bytes a digest, where a set costs
-- some 60), and one command looks a digest up however many buckets the horizon holds.
-- Digests past the horizon are swept a few hashes per batch: a round over a layout's
-- hashes for every eighth of its digests that arrive, so none outlives the horizon by much
-- more than a bucket. k grows with the digests kept (about PER_HASH a hash at most): the
-- digests of the previous layout are then moved over by a sweep round, while a new digest
-- is also looked for there. The marker hash `dg` holds k, `old` (the previous k, while it
-- is being moved) and per layout L: nL digests kept, cL the sweep's next hash, sL the
-- oldest bucket of the horizon when the sweep's round began, fL a bucket no digest kept is
-- older than; and `t`, the time of the last batch (ms).
-- Stores written before kept a bucket's digests in hashes of their own, `dd:<bucket>:<n>`
-- (with a marker `dd:<bucket>` and the set `dd:buckets`), and before that in sets
-- `seen:<bucket>`: those are still looked at, and deleted past the horizon.
local DIGEST_VALUES = {}
do
  local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  for i = 1, 64 do DIGEST_VALUES[string.byte(chars, i)] = i - 1 end
end
local PER_HASH = 64
local FIRST_BITS = 10  -- a new store: up to some 65,000 digests before k grows
local MAX_BITS = 24
local SWEEP_MAX = 4096  -- hashes swept per batch at most
local oldest = bucket - nbuckets
local bucket_text = num(bucket)
local dd_buckets_key = P .. 'dd:buckets'
local dg_key = P .. 'dg'

-- The top k bits of a digest's first five characters: the number of its hash.
local function digest_hash(digest, k)
  local V = DIGEST_VALUES
  local a, b, c, d, e = string.byte(digest, 1, 5)
  local v = ((((V[a] or 0) * 64 + (V[b] or 0)) * 64 + (V[c] or 0)) * 64 + (V[d] or 0)) * 64
    + (V[e] or 0)
  return math.floor(v / 2 ^ (30 - k))
end

local dg = {}
do
  local flat = redis.call('HGETALL', dg_key)
  for i = 1, #flat, 2 do dg[flat[i]] = tonumber(flat[i + 1]) end
end
local dg_changed = {}
local function dg_set(name, value)
  dg[name] = value
  dg_changed[name] = true
end
if not dg.k then
  dg_set('k', FIRST_BITS)
  dg_set('f' .. FIRST_BITS, bucket)
end
local current_k, old_k = dg.k, dg.old
local dg_names = {}
local function dg_hash(k, n)
  local of_k = dg_names[k]
  if not of_k then
    of_k = {}
    dg_names[k] = of_k
  end
  local key = of_k[n]
  if not key then
    key = P .. 'dg:' .. k .. ':' .. n
    of_k[n] = key
  end
  return key
end

-- the formats of earlier versions, while they hold digests of the horizon
local past, old_sets = {}, {}
for b = oldest, bucket do
  local mark = redis.call('HGET', P .. 'dd:' .. b, 'k')
  if mark then past[#past + 1] = {k = tonumber(mark), key = P .. 'dd:' .. b .. ':'} end
  if redis.call('EXISTS', P .. 'seen:' .. b) == 1 then old_sets[#old_sets + 1] = P .. 'seen:' .. b end
end

local new_digests = 0
local function is_duplicate(digest)
  local key = dg_hash(current_k, digest_hash(digest, current_k))
  if redis.call('HSETNX', key, digest, bucket_text) == 0 then
    if tonumber(redis.call('HGET', key, digest)) >= oldest then return true end
    -- kept from before the horizon, not swept yet: remembered anew (counted already)
    redis.call('HSET', key, digest, bucket_text)
    return false
  end
  local found = false
  if old_k then
    local at = redis.call('HGET', dg_hash(old_k, digest_hash(digest, old_k)), digest)
    found = at and tonumber(at) >= oldest
  end
  if not found then
    for _, b in ipairs(past) do
      -- those hashes' fields are the digest without the characters the hash number holds
      local rest = string.sub(digest, math.floor(b.k / 6) + 1)
      if redis.call('HEXISTS', b.key .. digest_hash(digest, b.k), rest) == 1 then
        found = true
        break
      end
    end
  end
  if not found then
    for _, set in ipairs(old_sets) do
      if redis.call('SISMEMBER', set, digest) == 1 then
        found = true
        break
      end
    end
  end
  if found then
    redis.call('HDEL', key, digest)
    return true
  end
  new_digests = new_digests + 1
  return false
end

-- Sweeps layout k: up to `budget` hashes from where its sweep stopped, deleting the
-- digests past the horizon, and with `into` moving the others to layout `into`. Returns
-- whether a round ended: no digest older than the horizon at its start is left.
local function sweep(k, budget, into)
  local n, at = 'n' .. k, 'c' .. k
  local cursor, total = dg[at] or 0, 2 ^ k
  if cursor == 0 then dg_set('s' .. k, oldest) end
  local removed, moved, ended = 0, 0, false
  for _ = 1, budget do
    local key = dg_hash(k, cursor)
    local flat = redis.call('HGETALL', key)
    local doomed, kept = {}, {}
    for i = 2, #flat, 2 do
      if tonumber(flat[i]) < oldest then
        doomed[#doomed + 1] = flat[i - 1]
      elseif into then
        local target = dg_hash(into, digest_hash(flat[i - 1], into))
        local pairs_out = kept[target]
        if not pairs_out then
          pairs_out = {}
          kept[target] = pairs_out
        end
        pairs_out[#pairs_out + 1] = flat[i - 1]
        pairs_out[#pairs_out + 1] = flat[i]
      end
    end
    if into then
      for target, pairs_out in pairs(kept) do
        redis.call('HSET', target, unpack(pairs_out))
        moved = moved + #pairs_out / 2
      end
      if #flat > 0 then redis.call('UNLINK', key) end
    elseif #doomed > 0 then
      redis.call('HDEL', key, unpack(doomed))
    end
    removed = removed + #doomed
    cursor = cursor + 1
    if cursor >= total then
      cursor, ended = 0, true
      dg_set('f' .. k, dg['s' .. k])
      break
    end
  end
  dg_set(at, cursor)
  dg_set(n, math.max(0, (dg[n] or 0) - removed - moved))
  if into then dg_set('n' .. into, (dg['n' .. into] or 0) + moved) end
  return ended
end

-- After the batch: count its digests; move the previous layout's over; sweep where
-- digests may have passed the horizon (or a round is under way); grow k when the hashes
-- fill up.
local function keep_digests()
  local n = 'n' .. current_k
  if new_digests > 0 then dg_set(n, (dg[n] or 0) + new_digests) end
  local arrived = math.max(new_digests, 1)
  local elapsed = math.max(0, now - (dg.t or now))
  dg_set('t', now)
  -- a round over all 2^k hashes for every eighth of the digests kept that arrives, or
  -- for every bucket width of time, whichever is more: after a burst, when few digests
  -- arrive, those of the burst still leave about a bucket after the horizon, not once as
  -- many have arrived again
  local function budget(k)
    local kept = math.max(dg['n' .. k] or 0, 1)
    local by_arrivals = 2 ^ k * 8 * arrived / kept
    local by_time = 2 ^ k * elapsed / width
    return math.min(SWEEP_MAX, math.ceil(math.max(by_arrivals, by_time)))
  end
  if old_k and sweep(old_k, budget(old_k), current_k) then
    redis.call('HDEL', dg_key, 'old', 'n' .. old_k, 'c' .. old_k, 's' .. old_k, 'f' .. old_k)
    for _, name in ipairs({'old', 'n' .. old_k, 'c' .. old_k, 's' .. old_k, 'f' .. old_k}) do
      dg[name], dg_changed[name] = nil, nil
    end
    old_k = nil
  end
  if (dg[n] or 0) > 0 and ((dg['c' .. current_k] or 0) > 0 or oldest > (dg['f' .. current_k] or oldest)) then
    sweep(current_k, budget(current_k))
  end
  local kept = dg[n] or 0
  if not old_k and current_k < MAX_BITS and kept > PER_HASH * 2 ^ current_k then
    local k = current_k
    while k < MAX_BITS and kept > PER_HASH / 2 * 2 ^ k do k = k + 1 end
    dg_set('old', current_k)
    dg_set('c' .. current_k, 0)  -- the move is a round of its own, from the first hash
    dg_set('k', k)
    dg_set('f' .. k, math.min(bucket, dg['f' .. current_k] or bucket))
  end
  local out = {}
  for name, _ in pairs(dg_changed) do
    out[#out + 1] = name
    out[#out + 1] = num(dg[name])
  end
  if #out > 0 then redis.call('HSET', dg_key, unpack(out)) end
end

-- Deletes up to DROP_PER_BATCH hashes of earlier versions' buckets past the horizon, then
-- their markers.
local DROP_PER_BATCH = 4096
local function drop_old_buckets()
  local budget = DROP_PER_BATCH
  for _, b in ipairs(redis.call('SMEMBERS', dd_buckets_key)) do
    if budget <= 0 then return end
    if tonumber(b) < oldest then
      local mark = P .. 'dd:' .. b
      local found = redis.call('HMGET', mark, 'k', 'next')
      local total = found[1] and 2 ^ tonumber(found[1]) or 0
      local next_hash = tonumber(found[2] or '0')
      local stop = math.min(total, next_hash + budget)
      if stop > next_hash then
        local doomed = {}
        for n = next_hash, stop - 1 do doomed[#doomed + 1] = mark .. ':' .. n end
        redis.call('UNLINK', unpack(doomed))
        budget = budget - (stop - next_hash)
      end
      if stop >= total then
        redis.call('UNLINK', mark)
        redis.call('SREM', dd_buckets_key, b)
      else
        redis.call('HSET', mark, 'next', stop)
      end
    end
  end
end

-- Counters are summed in the script and written once per batch.
local counts = {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- Totals over all customers, kept as customers' latest scores change: sum and count per
-- survey, and NPS promoters (9-10) and detractors (0-6), so the averages need no scan.
local surveys_key = P .. 'surveys'
local function survey_totals(survey, old, new)
  local function nps_class(score)
    if survey ~= 'nps' or not score then return nil end
    score = tonumber(score)
    if score >= 9 then return 'promoters' elseif score <= 6 then return 'detractors' end
    return nil
  end
  if old then
    bump(surveys_key, survey .. '|sum', 0 - tonumber(old))
    bump(surveys_key, survey .. '|n', -1)
    local class = nps_class(old)
    if class then bump(surveys_key, 'nps|' .. class, -1) end
  end
  bump(surveys_key, survey .. '|sum', tonumber(new))
  bump(surveys_key, survey .. '|n', 1)
  local class = nps_class(new)
  if class then bump(surveys_key, 'nps|' .. class, 1) end
end

-- First-response times of all tickets, as histogram buckets (upper bounds in seconds)
-- plus their sum in ms; a ticket's time moves between buckets when an earlier event lands.
local RESPONSE_BOUNDS = {300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800}
local responses_key = P .. 'responses'
local function response_buckets(ms, delta)
  if not ms then return end
  local bucket = '+Inf'
  for _, bound in ipairs(RESPONSE_BOUNDS) do
    if ms <= bound * 1000 then
      bucket = tostring(bound)
      break
    end
  end
  bump(responses_key, bucket, delta)
  bump(responses_key, 'sum_ms', delta > 0 and ms or 0 - ms)
  bump(responses_key, 'count', delta)
end

local function response_ms(tkey, ticket)
  local known = redis.call('HMGET', tkey, ticket .. '|o', ticket .. '|r')
  local opened, reply = known[1], known[2]
  if not opened or not reply then return nil end
  opened, reply = tonumber(opened), tonumber(reply)
  if reply < opened then return nil end
  return reply - opened
end

local function set_status(c, tkey, ticket, is_open, ts)
  local known = redis.call('HMGET', tkey, ticket .. '|t', ticket .. '|s')
  local st, old = known[1], known[2]
  if st and tonumber(ts) < tonumber(st) then return end
  redis.call('HSET', tkey, ticket .. '|s', is_open, ticket .. '|t', ts)
  if is_open == '1' and old ~= '1' then add(c, 'ot', 1) end
  if is_open == '0' and old == '1' then add(c, 'ot', -1) end
end

-- At most MAX_TICKETS tickets per customer (processors/state.py keeps the same rule): at
-- the cap, tickets not open whose latest time is TICKET_HORIZON_MS older than this event
-- make room, else the new ticket is counted in 'tu' and not tracked.
local MAX_TICKETS = 1000
local TICKET_HORIZON_MS = 90 * 86400000
local function room_for_ticket(c, tkey, ts)
  local tracked = c.f.tn or 0
  if tracked < MAX_TICKETS then return true end
  local fields = redis.call('HGETALL', tkey)
  local tickets = {}
  for i = 1, #fields, 2 do
    local name, attr = string.match(fields[i], '^(.*)|(%a)$')
    if name then  -- every field is "<ticket>|<letter>"; anything else is left alone
      tickets[name] = tickets[name] or {}
      tickets[name][attr] = fields[i + 1]
    end
  end
  tracked = 0
  local horizon = tonumber(ts) - TICKET_HORIZON_MS
  for name, t in pairs(tickets) do
    local last = math.max(tonumber(t.o or '-1'), tonumber(t.r or '-1'), tonumber(t.t or '-1'))
    if t.s ~= '1' and last < horizon then
      redis.call('HDEL', tkey, name .. '|o', name .. '|r', name .. '|s', name .. '|t')
    else
      tracked = tracked + 1
    end
  end
  put(c, 'tn', tracked)
  return tracked < MAX_TICKETS
end

local function apply_ticket(c, cid, ts, action, ticket)
  local tkey = P .. 'tk:' .. cid
  local known = redis.call('HMGET', tkey, ticket .. '|o', ticket .. '|r', ticket .. '|s')
  if not known[1] and not known[2] and not known[3] then
    if not room_for_ticket(c, tkey, ts) then
      add(c, 'tu', 1)
      return
    end
    add(c, 'tn', 1)
  end
  local before = response_ms(tkey, ticket)
  if action == 'opened' then
    if redis.call('HSETNX', tkey, ticket .. '|o', ts) == 1 then
      add(c, 'to', 1)
    else
      set_min(tkey, ticket .. '|o', ts)
    end
    set_status(c, tkey, ticket, '1', ts)
  elseif action == 'reopened' then
    set_status(c, tkey, ticket, '1', ts)
  elseif action == 'resolved' then
    add(c, 'tr', 1)
    set_status(c, tkey, ticket, '0', ts)
  elseif action == 'agent_replied' then
    set_min(tkey, ticket .. '|r', ts)
  end
  local after = response_ms(tkey, ticket)
  if before ~= after then
    add(c, 'rs', (after or 0) - (before or 0))
    add(c, 'rn', (after and 1 or 0) - (before and 1 or 0))
    response_buckets(before, -1)
    response_buckets(after, 1)
  end
end

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
-- there. Its orders per day (`d`) count every placed order (they sum to `o`) unless some
-- still sit in the od: hash of earlier versions: those are moved in here, once.
local function order_days(c, cid)
  if c.days then return c.days end
  local count = c.f.d
  local first, last, n, sum = nil, nil, 0, 0
  for d, k in pairs(count) do
    n, sum = n + 1, sum + k
    if not first or d < first then first = d end
    if not last or d > last then last = d end
  end
  if sum < (c.f.o or 0) then
    local key = P .. 'od:' .. cid
    local flat = redis.call('HGETALL', key)
    for i = 1, #flat, 2 do
      local d, k = tonumber(flat[i]), tonumber(flat[i + 1])
      if count[d] == nil then
        n = n + 1
        if not first or d < first then first = d end
        if not last or d > last then last = d end
      end
      count[d] = (count[d] or 0) + k
    end
    if #flat > 0 then
      c.changed = true
      redis.call('UNLINK', key)
    end
  end
  c.days = {first = first, last = last, n = n}
  return c.days
end

-- The customer's placed orders in the day, week and month of `days`, before this order.
local function placed_in_periods(c, cid, days)
  local d, w, m = days.dn, days.wn, days.mn
  local m_end = month_end(m)
  local nd, nw, nm = 0, 0, 0
  order_days(c, cid)
  for day, k in pairs(c.f.d) do
    if day == d then nd = k end
    if day >= w and day < w + 7 then nw = nw + k end
    if day >= m and day < m_end then nm = nm + k end
  end
  return nd, nw, nm
end

-- Called before a placed order is counted, when its day d has no orders yet once
-- order_days has run (which moves any od: days in).
local function fit_grid_day(c, cid, d)
  local days = order_days(c, cid)
  if days.first then
    grid_move(string.format('%d:%d:%d', days.first, days.last, days.n), -1)
    days.first, days.last = math.min(days.first, d), math.max(days.last, d)
  else
    days.first, days.last = d, d
  end
  days.n = days.n + 1
  grid_move(string.format('%d:%d:%d', days.first, days.last, days.n), 1)
end

local function apply(kind, cid, ts, days, a1, a2, a3, a4)
  local c = customer(cid)
  local t = tonumber(ts)
  local idx = customer_index(c, t)
  c.touched = true
  if not batch_first or t < batch_first_n then batch_first, batch_first_n = ts, t end
  if not batch_last or t > batch_last_n then batch_last, batch_last_n = ts, t end
  if kind == 'o' then
    if a1 == 'placed' then
      local hi, lo = money(a2)
      local bd, bw, bm = placed_in_periods(c, cid, days)
      local count, d = c.f.d, days.dn
      if count[d] == nil then
        fit_grid_day(c, cid, d)
        count[d] = 1
      else
        count[d] = count[d] + 1
      end
      add(c, 'o', 1)
      add_money(c.f, 'pm', 'ph', hi, lo)
      if a3 ~= '' then add_money(c.f, 'pm:' .. a3, 'ph:' .. a3, money(a4)) end
      put_max(c, 'lo', t)
      placed_sales(days, hi, lo, bd, bw, bm)
      if kind_counts_activity.o then activity(c, idx, t, days) end
    elseif a1 == 'refunded' then
      local hi, lo = money(a2)
      add(c, 'rf', 1)
      add_money(c.f, 'rm', 'rh', hi, lo)
      if a3 ~= '' then add_money(c.f, 'rm:' .. a3, 'rh:' .. a3, money(a4)) end
      refunded_sales(days, hi, lo)
    else
      add(c, 'cx', 1)
    end
  elseif kind == 'l' then
    add(c, 'lg', 1)
    put_max(c, 'll', t)
    if kind_counts_activity.l then activity(c, idx, t, days) end
  else
    if a1 == 'rated' then
      local cur = c.f[a3 .. 't']
      if not cur or t >= cur then
        survey_totals(a3, c.f[a3], a4)
        put(c, a3, tonumber(a4))
        put(c, a3 .. 't', t)
      end
    else
      apply_ticket(c, cid, ts, a1, a2)
    end
    if kind_counts_activity.s then activity(c, idx, t, days) end
  end
end

local records = cjson.decode(ARGV[7])
local floors = nil
if ARGV[8] ~= '' then floors = cjson.decode(ARGV[8]) end
local ranges = cjson.decode(ARGV[9])
-- each partition's fate for this batch is decided once, from the stored offset: records
-- up to `reach` are taken, those above it wait for the worker to seek back
local gaps, gap_list = {}, {}
local reach, reach_stamp = {}, {}
for tp, runs in pairs(ranges) do
  local stored = tonumber(redis.call('HGET', offsets_key, tp) or '-1')
  last_offsets[tp] = stored
  local last = stored
  for _, run in ipairs(runs) do
    local first, stop = tonumber(run[1]), tonumber(run[2])
    if floors then
      local wanted = math.max(last + 1, tonumber(floors[tp] or 0))
      if first > wanted then
        gaps[tp] = true
        gap_list[#gap_list + 1] = tp
        gap_list[#gap_list + 1] = wanted
        break
      end
    end
    if stop > last then
      last = stop
      reach_stamp[tp] = run[3]
    end
  end
  reach[tp] = last
end
-- Every customer the batch names is read before anything is written. One whose stored
-- state cannot be read (a piece lost or changed by hand) is set aside, so that it stops
-- nobody else: its events are refused as corrupt_state and listed for the worker to
-- dead-letter, and nothing of them is counted anywhere. The hash `corrupt` records it
-- (customer -> when first set aside, ms) and the set `corrupt:<customer>` its events
-- ('topic|partition|offset'), until `retention restore-customer` rebuilds it from the
-- topics and applies them.
local corrupt, set_aside, corrupt_events = {}, {}, {}
for n = 1, #records do
  local r = records[n]
  if r[1] ~= 'x' and not corrupt[r[6]] and not customer(r[6]) then
    corrupt[r[6]] = true
    corrupt_events[r[6]] = {}
  end
end
-- 'topic|partition' and the per-topic counter names, built once per batch
local tp_names, accepted_names, duplicate_names = {}, {}, {}
-- per 'topic|partition', the offsets of this batch taken so far
local taken = {}
local days_of = {}
for n = 1, #records do
  local r = records[n]
  local kind, topic, partition = r[1], r[2], r[3]
  local offset = tonumber(r[4])
  local of_topic = tp_names[topic]
  if not of_topic then
    of_topic = {}
    tp_names[topic] = of_topic
    accepted_names[topic] = 'accepted|' .. topic
    duplicate_names[topic] = 'duplicate|' .. topic
  end
  local tp = of_topic[partition]
  if not tp then
    tp = topic .. '|' .. partition
    of_topic[partition] = tp
  end
  -- an offset the store holds (at or below the stored one), or one taken earlier in this
  -- batch (read twice around a seek back), is redelivered
  local seen_here = taken[tp]
  if not seen_here then
    seen_here = {}
    taken[tp] = seen_here
  end
  if offset <= last_offsets[tp] or seen_here[offset] then
    redelivered = redelivered + 1
  elseif offset > reach[tp] then
    -- beyond a gap: refused with the rest of its partition
  else
    seen_here[offset] = true
    -- the periods of a day (as text and as numbers), one table for the batch's events of
    -- that day
    local days = days_of[r[8]]
    if not days or days.w ~= r[9] or days.m ~= r[10] then
      days = {d = r[8], w = r[9], m = r[10],
        dn = tonumber(r[8]), wn = tonumber(r[9]), mn = tonumber(r[10])}
      days_of[r[8]] = days
    end
    if kind == 'x' then
      count('rejected|' .. topic .. '|' .. r[11])
      rejected = rejected + 1
    elseif corrupt[r[6]] then
      count('rejected|' .. topic .. '|corrupt_state')
      rejected = rejected + 1
      local where = tp .. '|' .. offset
      set_aside[#set_aside + 1] = where
      local own = corrupt_events[r[6]]
      own[#own + 1] = where
    elseif is_duplicate(r[5]) then
      count(duplicate_names[topic])
      duplicates = duplicates + 1
    else
      local ts = r[7]
      apply(kind, r[6], ts, days, r[11], r[12], r[13], r[14])
      count(accepted_names[topic])
      applied = applied + 1
      local t = tonumber(ts)
      if not newest[tp] or t > newest[tp][1] then newest[tp] = {t, ts} end
    end
  end
end

for name, n in pairs(counts) do
  redis.call('HINCRBY', stats_key, name, n)
end
for _, key in ipairs(total_keys) do
  local t = totals[key]
  for _, field in ipairs(t.order) do
    redis.call('HINCRBY', key, field, num(t.fields[field]))
  end
end
for _, key in ipairs(sales_keys) do
  local s = sales[key]
  for i = 1, #SALES_FIELDS do
    local field = SALES_FIELDS[i]
    if s[field] then redis.call('HINCRBY', key, field, num(s[field])) end
  end
  write_money(key, s, 'pm', 'ph')
  write_money(key, s, 'rm', 'rh')
end
if next_id and next_id > first_id then redis.call('SET', ids_key, num(next_id)) end
for _, cell in ipairs(grid_cells) do
  local delta = grid_deltas[cell]
  if delta ~= 0 and redis.call('HINCRBY', grid_key, cell, delta) <= 0 then
    redis.call('HDEL', grid_key, cell)
  end
end
keep_digests()
drop_old_buckets()
-- each changed customer's hash in one write. A customer whose state changed is due for a
-- lifecycle and risk evaluation: unless already waiting (its hash's `q`, the batch time of
-- its first change since its last evaluation), it joins the end of the changed queue,
-- which the evaluator serves oldest first (take_due.lua)
local queued = {}
for n = 1, #customer_order do
  local cid = customer_order[n]
  local c = customers[cid]
  local out = {}
  if c.touched and not c.q then
    out[1], out[2] = 'q', ARGV[3]  -- now, as text
    queued[#queued + 1] = cid
    if #queued >= 400 then
      redis.call('RPUSH', P .. 'dueq', unpack(queued))
      queued = {}
    end
  end
  if c.new_ix then
    out[#out + 1] = 'ix'
    out[#out + 1] = c.ix
  end
  if c.changed then
    -- the state is packed without the fields equal to their other, nor an empty `d`
    local f = c.f
    for i = 1, #SAME_AS do
      local name = SAME_AS[i][1]
      if f[name] ~= nil and f[name] == f[SAME_AS[i][2]] then f[name] = nil end
    end
    if next(f.d) == nil then f.d = nil end
    local pieces = cut_into(out, cmsgpack.pack(f), piece_name)
    if c.pieces > pieces then
      local gone = {}
      for i = pieces + 1, c.pieces do gone[#gone + 1] = piece_name(i) end
      redis.call('HDEL', c.key, unpack(gone))
    end
  end
  if #out > 0 then redis.call('HSET', c.key, unpack(out)) end
  if c.old_names and #c.old_names > 0 then redis.call('HDEL', c.key, unpack(c.old_names)) end
end
if #queued > 0 then redis.call('RPUSH', P .. 'dueq', unpack(queued)) end
for tp, last in pairs(reach) do
  if last > last_offsets[tp] then
    redis.call('HSET', offsets_key, tp, last)
    if reach_stamp[tp] ~= '' then redis.call('HSET', stamps_key, tp, reach_stamp[tp]) end
  end
end
if batch_first then
  set_min(meta_key, 'first', batch_first)
  set_max(meta_key, 'last', batch_last)
end
-- the newest event time per partition: the event-time watermark is their minimum
for tp, ts in pairs(newest) do
  set_max(newest_key, tp, ts[2])
end
for cid, own in pairs(corrupt_events) do
  redis.call('HSETNX', P .. 'corrupt', cid, ARGV[3])
  if #own > 0 then redis.call('SADD', P .. 'corrupt:' .. cid, unpack(own)) end
end
return {applied, duplicates, redelivered, rejected, gap_list, set_aside}
