-- Take customers for an evaluation, fairly from two queues, and lease them.
-- KEYS[1] the shard's changed customers (score: the batch time of the first change since
--   their last evaluation), served oldest first whatever the evaluation clock says.
-- KEYS[2] the shard's scheduled rechecks (score: when to look, on the evaluation clock).
-- ARGV: now on the evaluation clock (ms), at most how many, lease end (ms).
-- Each queue gets half the places, and what one leaves unused goes to the other, so a
-- stream of changes never starves the rechecks (churn, cold, win-back), nor the reverse.
-- Taken customers leave the changed queue and are scheduled at the lease's end: another
-- evaluator leaves them alone, and should this one stop they come back when the lease
-- ends. Returns the customer ids taken.
local limit = tonumber(ARGV[2])
local half = math.ceil(limit / 2)
local changed = redis.call('ZRANGE', KEYS[1], 0, half - 1)
local scheduled = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, limit - #changed)
if #changed == half and #scheduled < limit - half then
  changed = redis.call('ZRANGE', KEYS[1], 0, limit - #scheduled - 1)
end
local taken, seen = {}, {}
for _, list in ipairs({changed, scheduled}) do
  for _, cid in ipairs(list) do
    if not seen[cid] then
      seen[cid] = true
      taken[#taken + 1] = cid
    end
  end
end
for _, cid in ipairs(changed) do redis.call('ZREM', KEYS[1], cid) end
for _, cid in ipairs(taken) do redis.call('ZADD', KEYS[2], ARGV[3], cid) end
return taken
