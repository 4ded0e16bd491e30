-- The batch script, part 4 of 7: dedupe digests, their layouts and sweeps.

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
