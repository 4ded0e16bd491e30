#!lua
-- Put back the state of a customer set aside because its stored state could not be read
-- (batch_apply.lua), as rebuilt from the topics by retention/restore.py.
-- KEYS[1] the customer's hash (routes the call on a Redis Cluster).
-- ARGV[1] the shard's prefix, ARGV[2] the customer, ARGV[3] now (ms), ARGV[4] how many
-- name/value pairs of the packed state follow, then those pairs, then the ticket hash's
-- name/value pairs.
-- The state's pieces, and any other field of the damaged hash, are replaced; the customer's
-- number `ix`, its queue marks `q`, `r` and its last evaluation `ev`... stay. The customer
-- leaves `corrupt`, so its next events are applied as anyone's; `corrupt:<customer>`, the
-- events held back meanwhile, stays for the caller to apply and then delete. Returns 1,
-- or 0 when the customer is not set aside (nothing is written).
local P, cid, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', P .. 'rebuilding') == 1 then
  return redis.error_reply('REBUILDING the store is being wiped for a rebuild')
end
if redis.call('HEXISTS', P .. 'corrupt', cid) == 0 then return 0 end
local key = KEYS[1]
local gone = {}
for _, name in ipairs(redis.call('HKEYS', key)) do
  local kept = name == 'ix' or name == 'q' or name == 'r' or string.match(name, '^ev%d*$')
  if not kept then gone[#gone + 1] = name end
end
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
local state = {}
for i = 5, 4 + 2 * n do state[#state + 1] = ARGV[i] end
if #state > 0 then redis.call('HSET', key, unpack(state)) end
local tickets = {}
for i = 5 + 2 * n, #ARGV do tickets[#tickets + 1] = ARGV[i] end
redis.call('DEL', P .. 'tk:' .. cid)
if #tickets > 0 then redis.call('HSET', P .. 'tk:' .. cid, unpack(tickets)) end
-- due for an evaluation of its restored state
if redis.call('HSETNX', key, 'q', now) == 1 then redis.call('RPUSH', P .. 'dueq', cid) end
redis.call('HDEL', P .. 'corrupt', cid)
return 1
