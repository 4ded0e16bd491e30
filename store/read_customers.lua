-- Customers' two hashes (state, tickets), read in one moment.
-- KEYS[1] any key of the shard (routes the call on a Redis Cluster).
-- ARGV[1] the shard's key prefix, then customer ids. Returns, per customer, the flat
-- HGETALL replies of c: and tk:. The state packed in c:'s fields s1, s2, ...
-- (batch_state.lua) is unpacked there into a field each: numbers as plain digits, a
-- field per day with placed orders named by the day number; the last evaluation's pieces
-- `ev`, `ev2`, ... (store_evaluations.lua) are joined into `ev`.
local P = ARGV[1]

local function text(value)
  if type(value) == 'number' then
    if value == 0 then return '0' end
    if value == math.floor(value) then return string.format('%.0f', value) end
    return tostring(value)
  end
  return value
end

local function unpacked(flat)
  local out, pieces, evaluation = {}, {}, {}
  for i = 1, #flat, 2 do
    local piece = string.match(flat[i], '^s(%d+)$')
    local of_ev = flat[i] == 'ev' and '1' or string.match(flat[i], '^ev(%d+)$')
    if piece then
      pieces[tonumber(piece)] = flat[i + 1]
    elseif of_ev then
      evaluation[tonumber(of_ev)] = flat[i + 1]
    else
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
  -- the last evaluation, kept in pieces by store_evaluations.lua
  if evaluation[1] then
    out[#out + 1] = 'ev'
    out[#out + 1] = joined(evaluation)
  end
  if not pieces[1] then return out end
  for name, value in pairs(cmsgpack.unpack(joined(pieces))) do
    if name == 'd' then
      for day, n in pairs(value) do
        out[#out + 1] = text(day)
        out[#out + 1] = text(n)
      end
    elseif type(value) == 'table' then
      -- a customer attribute (batch_state.lua): x?1, x?1t (the first), x?2, x?2t (latest)
      local v1, t1, v2, t2 = value[1], value[2], value[1], value[2]
      if #value == 3 then t2 = value[3] elseif #value == 4 then v2, t2 = value[3], value[4] end
      local pairs_out = {name .. '1', v1, name .. '1t', text(t1), name .. '2', v2, name .. '2t', text(t2)}
      for k = 1, #pairs_out do out[#out + 1] = pairs_out[k] end
    else
      out[#out + 1] = name
      out[#out + 1] = text(value)
    end
  end
  return out
end

local out = {}
for i = 2, #ARGV do
  local cid = ARGV[i]
  out[#out + 1] = unpacked(redis.call('HGETALL', P .. 'c:' .. cid))
  out[#out + 1] = redis.call('HGETALL', P .. 'tk:' .. cid)
end
return out
