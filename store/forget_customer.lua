-- Erase one customer from its shard, atomically. Runs after pieces.lua and sched_chunks.lua
-- (store/forget.py puts them before it).
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV[1] the shard's prefix, ARGV[2] the customer, ARGV[3] its tombstone (the keyed hash
-- of the id), ARGV[4] now (ms), ARGV[5] the store's tombstone key.
--
-- The tombstone goes into the shard's `forgotten` hash first, where the batch script looks
-- before it applies an event: a replay or a rebuild skips the customer's events from then
-- on. Then the totals kept in step with the evaluations take back what the customer's
-- last evaluation added (store_evaluations.lua adds them), and every key and queue entry
-- naming the customer goes: its hash (state, evaluation, pieces), its tickets, its place in
-- the changed queue, the rechecks and the at-risk ranking, a set-aside record. Bitmaps,
-- sales sums and the fit grid hold no id and stay: anonymous numbers.
-- Returns 1 when the customer was stored, 0 when only the tombstone was written.
local cid, tomb, now, secret = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local FORGOTTEN = P .. 'forgotten'
redis.call('HSETNX', FORGOTTEN, '\0key', secret)
redis.call('HSET', FORGOTTEN, tomb, now)

local key = P .. 'c:' .. cid
local NAMES = {'ev', 'ev2', 'ev3', 'ev4', 'ev5', 'ev6'}
local found = redis.call('EXISTS', key) == 1
if found then
  local pieces = redis.call('HMGET', key, unpack(NAMES))
  if pieces[1] then
    local v, from = {}, 1
    local text = joined(pieces)
    while true do
      local at = string.find(text, '|', from, true)
      v[#v + 1] = string.sub(text, from, (at or 0) - 1)
      if not at then break end
      from = at + 1
    end
    local st, rr, hv, cl, cr, bd = v[1], v[3], v[4], v[7], v[8], v[9]
    redis.call('HINCRBY', P .. 'life:counts', st, -1)
    if bd and bd ~= '' then redis.call('HINCRBY', P .. 'risk:bands', bd, -1) end
    if cl and cl ~= '' and cl ~= '0' then redis.call('DECRBY', P .. 'cltv:total', cl) end
    if st == 'at_risk' then
      for reason in string.gmatch(rr or '', '[^,]+') do
        redis.call('HINCRBY', P .. 'risk:reasons', reason, -1)
        if cr and cr ~= '' and cr ~= '0' then
          redis.call('HINCRBY', P .. 'cltv:at_risk', reason, '-' .. cr)
        end
      end
      if hv == '1' then redis.call('DECR', P .. 'risk:high_value') end
    end
  end
  local recheck = redis.call('HGET', key, 'r')
  if recheck then
    local chunk = entries_at(recheck)[cid]
    if chunk then sched_drop({[chunk] = {cid}}) end
  end
end
redis.call('DEL', key, P .. 'tk:' .. cid, P .. 'corrupt:' .. cid)
redis.call('HDEL', P .. 'corrupt', cid)
redis.call('ZREM', P .. 'atrisk', cid)
redis.call('LREM', P .. 'dueq', 0, cid)
return found and 1 or 0
