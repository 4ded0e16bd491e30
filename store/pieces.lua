-- Values kept in pieces of at most 64 bytes, so that Redis keeps the hash as a compact
-- listpack: a customer's packed state (s1, s2, ..., apply_batch.lua) and its last
-- evaluation (ev, ev2, ..., store_evaluations.lua). The readers share this (Python puts
-- it before read_customers.lua and read_previous.lua).

-- The pieces 1, 2, ... up to the first missing one (nil, or false as HMGET gives), joined.
local function joined(pieces)
  local parts = {}
  for n = 1, table.maxn(pieces) do
    if not pieces[n] then break end
    parts[n] = pieces[n]
  end
  return table.concat(parts)
end
