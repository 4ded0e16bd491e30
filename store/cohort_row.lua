-- One cohort's row: its size, then how many of its customers were active in each period.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV: the shard's prefix, period letter (d|w|m), the key (after the prefix) of the
-- bitmap of the customers to count ('' for all: a breakdown's dim:<letter>:<value>), then
-- the first days of the cohort's period and of every later period to report.
local P, p, mask = ARGV[1], ARGV[2], ARGV[3]
local name = p .. ':' .. ARGV[4]
local cohort = P .. 'coh:' .. name
local start = cohort_start(P, name)
local X = P .. 'tmp:C'
local members = cohort
if mask ~= '' then
  -- the cohort's customers among the mask's, lined up with the cohort bitmap
  members = P .. 'tmp:M'
  -- cleared first: with nothing to AND, cohort_and_count writes no key at all
  redis.call('DEL', members)
  cohort_and_count(cohort, start, P .. mask, members)
end
local row = {redis.call('BITCOUNT', members)}
for i = 4, #ARGV do
  row[#row + 1] = cohort_and_count(members, start, P .. 'act:' .. p .. ':' .. ARGV[i], X)
end
redis.call('DEL', X)
if members ~= cohort then redis.call('DEL', members) end
return row
