#!lua
-- Store an evaluation chunk's results and move the totals kept in step, atomically.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV[1] the shard's prefix; ARGV[2] JSON list of results, each
--   [customer, st, sc, rr, hv, at, no, cl, cr] (status, risk score, reasons, high value,
--   evaluated at, orders, predicted CLTV, CLTV at risk; as text);
-- ARGV[3] JSON of the moves: {"hincr": [[family, field, delta], ...], "incr": [[name, delta], ...],
--   "rank": [[customer, score], ...], "unrank": [customer, ...]}, numbers as text.
-- One JSON argument each: far cheaper for the client to send than a command per customer.
local P = ARGV[1]
-- `retention rebuild` is wiping the store: write nothing until it is done
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
local results = cjson.decode(ARGV[2])
local moves = cjson.decode(ARGV[3])
-- nothing may fail halfway (Redis keeps the writes made before an error): a total that
-- would leave the 64-bit range refuses the whole call before anything is written
local LIMIT = 9.2e18
local function fits(current, delta)
  local sum = tonumber(current or '0') + tonumber(delta)
  return math.abs(tonumber(delta)) < LIMIT and math.abs(sum) < LIMIT
end
for _, m in ipairs(moves.incr) do
  if not fits(redis.call('GET', P .. m[1]), m[2]) then
    return redis.error_reply('OVERFLOW ' .. m[1] .. ' would leave the 64-bit range')
  end
end
for _, m in ipairs(moves.hincr) do
  if not fits(redis.call('HGET', P .. m[1], m[2]), m[3]) then
    return redis.error_reply('OVERFLOW ' .. m[1] .. ' would leave the 64-bit range')
  end
end
-- The evaluation is kept in the customer hash, its values joined by '|' in the order above
-- (some 60 bytes, where a hash of its own cost some 170), in fields `ev`, `ev2`, ... of at
-- most 64 bytes each: a longer value would make Redis keep the whole hash as a table of
-- twice the size instead of a listpack (apply_batch.lua cuts the customer's state the
-- same way). A customer whose hash is gone (a rebuild wiped it) gets none. Earlier
-- versions kept it in `ev:<customer>`, deleted when `ev` is first written (HSET answers 1
-- for a new field).
local PIECE, MOST_PIECES = 64, 6
for _, r in ipairs(results) do
  local key = P .. 'c:' .. r[1]
  if redis.call('EXISTS', key) == 0 then
    redis.call('UNLINK', P .. 'ev:' .. r[1])
  else
    local joined = table.concat(r, '|', 2, 9)
    if redis.call('HSET', key, 'ev', string.sub(joined, 1, PIECE)) == 1 then
      redis.call('UNLINK', P .. 'ev:' .. r[1])
    end
    -- the rest in pieces, and the pieces a longer evaluation left deleted
    local pieces, more, gone = math.max(1, math.ceil(#joined / PIECE)), {}, {}
    for i = 2, pieces do
      more[#more + 1] = 'ev' .. i
      more[#more + 1] = string.sub(joined, (i - 1) * PIECE + 1, i * PIECE)
    end
    for i = pieces + 1, MOST_PIECES do gone[#gone + 1] = 'ev' .. i end
    if #more > 0 then redis.call('HSET', key, unpack(more)) end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  end
end
for _, m in ipairs(moves.incr) do redis.call('INCRBY', P .. m[1], m[2]) end
for _, m in ipairs(moves.hincr) do redis.call('HINCRBY', P .. m[1], m[2], m[3]) end
for _, m in ipairs(moves.rank) do redis.call('ZADD', P .. 'atrisk', m[2], m[1]) end
for _, cid in ipairs(moves.unrank) do redis.call('ZREM', P .. 'atrisk', cid) end
return #results
