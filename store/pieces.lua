-- Values kept in pieces of at most 64 bytes, so that Redis keeps the hash as a compact
-- listpack (its default hash-max-listpack-value; one longer value makes the whole hash a
-- table of twice the size): a customer's packed state (s1, s2, ..., batch_apply.lua) and
-- its last evaluation (ev, ev2, ..., store_evaluations.lua). Every script that cuts or
-- joins them shares this (Python puts it before each).
local PIECE = 64

-- `value` cut in pieces of at most PIECE bytes, appended to `out` as name/value pairs
-- (name(1), the first piece, name(2), ...); returns how many pieces (at least one).
local function cut_into(out, value, name)
  local pieces = math.max(1, math.ceil(#value / PIECE))
  for i = 1, pieces do
    out[#out + 1] = name(i)
    out[#out + 1] = string.sub(value, (i - 1) * PIECE + 1, i * PIECE)
  end
  return pieces
end

-- The pieces 1, 2, ... up to the first missing one (nil, or false as HMGET gives), joined.
local function joined(pieces)
  local parts = {}
  for n = 1, table.maxn(pieces) do
    if not pieces[n] then break end
    parts[n] = pieces[n]
  end
  return table.concat(parts)
end
