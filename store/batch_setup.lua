#!lua
-- The shebang (no flags) makes Redis refuse the whole script up front when it is over
-- maxmemory with noeviction, instead of failing at a write halfway through.
--
-- The batch script, part 1 of 7: what it takes and returns, and what every part uses.
-- store/store.py joins the parts, in this order, after pieces.lua: setup, state, periods,
-- dedupe, tickets, fit_grid, apply (store/batch_<part>.lua); they share one chunk's locals.
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
-- ARGV[7] the shard's records, a JSON array of arrays of 16 strings:
--   kind(o|l|s|x) topic partition offset dedupe_id customer_id ts_ms d w m a1 a2 a3 a4 stamp dims
--   dedupe_id: a digest of event type, customer and event id (the worker computes it)
--   d w m: epoch-day numbers of the start of the event's day, ISO week and month
--   order:   a1=status a2=amount_micros in the reporting currency a3=original currency
--            (may be empty) a4=amount_micros as sent, in that currency (decimal digits,
--            up to 10^19)
--   support: a1=action a2=ticket a3=survey a4=score
--   rejected (x): a1=reason
--   stamp: the Kafka timestamp (ms) of the message, kept with the partition's offset so a
--   recreated topic can be told from the one the offset belongs to
--   dims: the customer attributes the event carries, country, channel and shop joined by
--   \x1f (each empty when absent), or empty
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
-- ARGV[10] the store format this script writes (store/shards.py, STORE_FORMAT)
-- ARGV[11] the calendar's first day of the week, 0 (Monday) to 6 (Sunday)
-- ARGV[12] '1' when periods are counted in another zone than UTC: the local day of each
--   customer's first and latest activity is then kept beside its time (fields fad, lad),
--   since the script cannot work out a local date from a time (processors/windows.py)
-- Returns {applied, duplicates, redelivered, rejected, gaps, set aside}: gaps is a flat
-- list {tp, next offset wanted, ...}; set aside lists the events ('tp|offset') of
-- customers whose stored state cannot be read (see below).

local P = ARGV[1]
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
-- the shard says which format it is written in, even after Redis was emptied under a
-- running worker (for a store of one shard, this is the store's own format key)
redis.call('SET', P .. 'format', ARGV[10], 'NX')
local offsets_key = KEYS[1]
local week_start = tonumber(ARGV[11])
local zoned = ARGV[12] == '1'
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
