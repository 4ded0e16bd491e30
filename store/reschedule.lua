-- Schedule evaluated customers' next recheck, unless their lease has ended and another
-- evaluator took them since (the score is no longer this lease's). A customer changed
-- while it was evaluated is back in the changed queue, so it is evaluated again anyway.
-- KEYS[1] the shard's scheduled rechecks. ARGV: the lease score, then (customer, next
-- due) pairs.
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if current and tonumber(current) == lease then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
return 0
