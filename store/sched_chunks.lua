#!lua
-- A shard's scheduled rechecks, in chunks: what take_due.lua and reschedule.lua share
-- (store/evaluations.py puts this text before each of them). ARGV[1] the shard's prefix.
--
-- One sorted set of every customer would be a skiplist (~100 B an entry). Instead the
-- entries (customer -> recheck time, ms, exact) are spread over chunks `sched:<n>` of at
-- most CHUNK entries, so that each stays a listpack (Redis's compact encoding, up to 128
-- entries by default). The index `sched:at` ranks the chunks by their bound: every entry
-- of a chunk is at or after its bound, and at or before the next chunk's, so walking the
-- chunks in the index's order reads the entries in time order. Time buckets would not
-- do: a whole evaluation round gets one recheck time (now + max_recheck_days), and
-- buckets either overflow the compact encoding or hold a few entries each.
-- `sched:next` numbers the chunks. The customer hash's `r` says where the customer's
-- entry is (its time), so that a change can move it.
local P = ARGV[1]
local INDEX = P .. 'sched:at'
local CHUNK = 128
local HALF = 64

local function chunk_key(chunk)
  return P .. 'sched:' .. chunk
end

local function new_chunk(bound)
  -- fixed width: chunks with the same bound rank oldest first, as their entries do
  local chunk = string.format('%012d', redis.call('INCR', P .. 'sched:next'))
  redis.call('ZADD', INDEX, bound, chunk)
  return chunk
end

-- Drops an emptied chunk from the index (Redis deleted the key with its last entry).
local function chunk_left(chunk)
  if redis.call('EXISTS', chunk_key(chunk)) == 0 then redis.call('ZREM', INDEX, chunk) end
end

-- Schedules customer `cid` at `t` (ms, as text); the customer has no entry.
local function sched_insert(cid, t)
  local chunk = redis.call('ZRANGE', INDEX, t, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1)[1]
  if not chunk then
    -- before every chunk's bound: the first chunk's bound moves down to t
    chunk = redis.call('ZRANGE', INDEX, 0, 0)[1]
    if chunk then
      redis.call('ZADD', INDEX, t, chunk)
    else
      chunk = new_chunk(t)
    end
  end
  local key = chunk_key(chunk)
  if redis.call('ZCARD', key) >= CHUNK then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if tonumber(t) >= tonumber(last[2]) then
      -- past the full chunk's end (times mostly grow): a new chunk starts at t, and the
      -- full one stays full
      chunk = new_chunk(t)
    else
      -- its upper half moves to a new chunk, bounded by the first time moved
      local upper = redis.call('ZRANGE', key, HALF, -1, 'WITHSCORES')
      local moved = new_chunk(upper[2])
      local args = {}
      for i = 1, #upper, 2 do
        args[#args + 1] = upper[i + 1]
        args[#args + 1] = upper[i]
      end
      redis.call('ZADD', chunk_key(moved), unpack(args))
      redis.call('ZREMRANGEBYRANK', key, HALF, -1)
      if tonumber(t) >= tonumber(upper[2]) then chunk = moved end
    end
    key = chunk_key(chunk)
  end
  redis.call('ZADD', key, t, cid)
end

-- Removes customer `cid`'s entry if it is at `t` (text); whether it was. Its chunk is
-- the last whose bound is at or before t, or one before it whose entries end at t.
local function sched_remove(cid, t)
  local want = tonumber(t)
  local offset = 0
  while true do
    local found = redis.call('ZRANGE', INDEX, t, '-inf', 'BYSCORE', 'REV', 'LIMIT', offset, 8,
      'WITHSCORES')
    if #found == 0 then return false end
    for i = 1, #found, 2 do
      local key = chunk_key(found[i])
      local score = redis.call('ZSCORE', key, cid)
      if score then
        if tonumber(score) ~= want then return false end
        redis.call('ZREM', key, cid)
        chunk_left(found[i])
        return true
      end
      if tonumber(found[i + 1]) < want then return false end
    end
    offset = offset + 8
  end
end
