-- One cohort's row: its size, then how many of its customers were active in each period.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), then the first days of the cohort's period and of
-- every later period to report.
local P, p = ARGV[1], ARGV[2]
local name = p .. ':' .. ARGV[3]
local cohort = P .. 'coh:' .. name
local start = cohort_start(P, name)
local X = P .. 'tmp:C'
local row = {redis.call('BITCOUNT', cohort)}
for i = 3, #ARGV do
  row[#row + 1] = cohort_and_count(cohort, start, P .. 'act:' .. p .. ':' .. ARGV[i], X)
end
redis.call('DEL', X)
return row
