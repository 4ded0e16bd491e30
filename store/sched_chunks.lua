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

-- Schedules customers `cids` (none of them scheduled) at `t` (ms, as text), as few
-- writes as the chunks allow.
local function sched_insert(cids, t)
  local i = 1
  while i <= #cids do
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
    local size = redis.call('ZCARD', key)
    if size >= CHUNK then
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
        for j = 1, #upper, 2 do
          args[#args + 1] = upper[j + 1]
          args[#args + 1] = upper[j]
        end
        redis.call('ZADD', chunk_key(moved), unpack(args))
        redis.call('ZREMRANGEBYRANK', key, HALF, -1)
        if tonumber(t) >= tonumber(upper[2]) then chunk = moved end
      end
      key = chunk_key(chunk)
      size = redis.call('ZCARD', key)
    end
    local args = {}
    local stop = math.min(#cids, i + CHUNK - size - 1)
    for j = i, stop do
      args[#args + 1] = t
      args[#args + 1] = cids[j]
    end
    redis.call('ZADD', key, unpack(args))
    i = stop + 1
  end
end

-- Customer -> chunk, for every entry at `t` (text). They lie in the chunks bound at t,
-- and in the last one bound before it.
local function entries_at(t)
  local found, want, offset = {}, tonumber(t), 0
  while true do
    local chunks = redis.call('ZRANGE', INDEX, t, '-inf', 'BYSCORE', 'REV', 'LIMIT', offset, 8,
      'WITHSCORES')
    if #chunks == 0 then return found end
    for i = 1, #chunks, 2 do
      for _, cid in ipairs(redis.call('ZRANGE', chunk_key(chunks[i]), t, t, 'BYSCORE')) do
        found[cid] = chunks[i]
      end
      if tonumber(chunks[i + 1]) < want then return found end
    end
    offset = offset + 8
  end
end

-- Removes entries, given as chunk -> list of customers.
local function sched_drop(by_chunk)
  for chunk, cids in pairs(by_chunk) do
    for i = 1, #cids, 1000 do
      redis.call('ZREM', chunk_key(chunk), unpack(cids, i, math.min(i + 999, #cids)))
    end
    chunk_left(chunk)
  end
end

-- Adds `item` to the list under `key` in table `t`.
local function push(t, key, item)
  local list = t[key]
  if not list then
    list = {}
    t[key] = list
  end
  list[#list + 1] = item
end
