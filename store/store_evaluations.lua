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
-- The evaluation is one field of the customer hash, `ev`, its values joined by '|' in the
-- order above (some 60 bytes, where a hash of its own cost some 170); a customer whose hash
-- is gone (a rebuild wiped it) gets none. Earlier versions kept it in `ev:<customer>`,
-- deleted when the field is first written (HSET answers 1 for a new field).
for _, r in ipairs(results) do
  local key = P .. 'c:' .. r[1]
  if redis.call('EXISTS', key) == 0 or redis.call('HSET', key, 'ev', table.concat(r, '|', 2, 9)) == 1 then
    redis.call('UNLINK', P .. 'ev:' .. r[1])
  end
end
for _, m in ipairs(moves.incr) do redis.call('INCRBY', P .. m[1], m[2]) end
for _, m in ipairs(moves.hincr) do redis.call('HINCRBY', P .. m[1], m[2], m[3]) end
for _, m in ipairs(moves.rank) do redis.call('ZADD', P .. 'atrisk', m[2], m[1]) end
for _, cid in ipairs(moves.unrank) do redis.call('ZREM', P .. 'atrisk', cid) end
return #results
