-- Put evaluated customers back on the due index at their next time, unless a batch has
-- touched them since they were read (their score changed): then they stay due now.
-- ARGV: the index key, then (customer, score read, next due) triples.
local key = ARGV[1]
for i = 2, #ARGV, 3 do
  local current = redis.call('ZSCORE', key, ARGV[i])
  if current and current == ARGV[i + 1] then
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i])
  end
end
return 0
