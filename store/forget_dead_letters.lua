-- Drop the dead letters about one customer from the notifier's list, in one atomic call.
-- KEYS[1] the dead-letter list; ARGV[1] the customer. An entry is about the customer when
-- its alert's customer_id is that id; entries that are not JSON stay. Returns how many went.
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local kept, dropped = {}, 0
for _, entry in ipairs(entries) do
  local ok, decoded = pcall(cjson.decode, entry)
  local alert = ok and type(decoded) == 'table' and decoded.alert or nil
  if type(alert) == 'table' and alert.customer_id == ARGV[1] then
    dropped = dropped + 1
  else
    kept[#kept + 1] = entry
  end
end
if dropped > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 999, #kept)))
  end
end
return dropped
