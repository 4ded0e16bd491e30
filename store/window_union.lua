-- Unions of day bitmaps over a window of days, kept for repeated readers: what
-- period_counts.lua and returned.lua share (store/periods.py and store/evaluations.py put
-- this text before each of them).

-- The keys of the activity bitmaps of days [from, to), and the days themselves.
local function window_days(P, from, to)
  local days, keys = {}, {}
  for day = from, to - 1 do
    days[#days + 1] = day
    keys[#keys + 1] = P .. 'act:d:' .. day
  end
  return days, keys
end

-- The customers active in days [from, to): the union of those days' activity bitmaps,
-- kept in win:<from>:<to> for `keep` seconds after each use, with each day's count of
-- active customers (act:n) as it was when the day was last ORed in (win:<from>:<to>:n).
-- Bits are only ever added to a day bitmap, and each added bit raises the day's count, so
-- ORing in the days whose count moved (late events, or today's) brings the union up to
-- date exactly. Returns the union's key.
local function kept_union(P, from, to, keep)
  local days, keys = window_days(P, from, to)
  local key = P .. 'win:' .. from .. ':' .. to
  local seen_key = key .. ':n'
  local counts = redis.call('HMGET', P .. 'act:n', unpack(days))
  local seen = redis.call('HMGET', seen_key, unpack(days))
  local whole = redis.call('EXISTS', key) == 0
  local changed, update = {}, {}
  for i, day in ipairs(days) do
    local count = counts[i] or '0'
    if whole or (seen[i] or '0') ~= count then
      changed[#changed + 1] = keys[i]
      update[#update + 1] = day
      update[#update + 1] = count
    end
  end
  if whole then
    redis.call('BITOP', 'OR', key, unpack(keys))
  elseif #changed > 0 then
    redis.call('BITOP', 'OR', key, key, unpack(changed))
  end
  if #update > 0 then redis.call('HSET', seen_key, unpack(update)) end
  redis.call('EXPIRE', key, keep)
  redis.call('EXPIRE', seen_key, keep)
  return key
end
