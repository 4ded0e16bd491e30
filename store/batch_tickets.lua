-- The batch script, part 5 of 7: counters, survey totals, response times and tickets.

-- Counters are summed in the script and written once per batch.
local counts = {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- Totals over all customers, kept as customers' latest scores change: sum and count per
-- survey, and NPS promoters (9-10) and detractors (0-6), so the averages need no scan.
local surveys_key = P .. 'surveys'
local function survey_totals(survey, old, new)
  local function nps_class(score)
    if survey ~= 'nps' or not score then return nil end
    score = tonumber(score)
    if score >= 9 then return 'promoters' elseif score <= 6 then return 'detractors' end
    return nil
  end
  if old then
    bump(surveys_key, survey .. '|sum', 0 - tonumber(old))
    bump(surveys_key, survey .. '|n', -1)
    local class = nps_class(old)
    if class then bump(surveys_key, 'nps|' .. class, -1) end
  end
  bump(surveys_key, survey .. '|sum', tonumber(new))
  bump(surveys_key, survey .. '|n', 1)
  local class = nps_class(new)
  if class then bump(surveys_key, 'nps|' .. class, 1) end
end

-- First-response times of all tickets, as histogram buckets (upper bounds in seconds)
-- plus their sum in ms; a ticket's time moves between buckets when an earlier event lands.
local RESPONSE_BOUNDS = {300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800}
local responses_key = P .. 'responses'
local function response_buckets(ms, delta)
  if not ms then return end
  local bucket = '+Inf'
  for _, bound in ipairs(RESPONSE_BOUNDS) do
    if ms <= bound * 1000 then
      bucket = tostring(bound)
      break
    end
  end
  bump(responses_key, bucket, delta)
  bump(responses_key, 'sum_ms', delta > 0 and ms or 0 - ms)
  bump(responses_key, 'count', delta)
end

local function response_ms(tkey, ticket)
  local known = redis.call('HMGET', tkey, ticket .. '|o', ticket .. '|r')
  local opened, reply = known[1], known[2]
  if not opened or not reply then return nil end
  opened, reply = tonumber(opened), tonumber(reply)
  if reply < opened then return nil end
  return reply - opened
end

local function set_status(c, tkey, ticket, is_open, ts)
  local known = redis.call('HMGET', tkey, ticket .. '|t', ticket .. '|s')
  local st, old = known[1], known[2]
  if st and tonumber(ts) < tonumber(st) then return end
  redis.call('HSET', tkey, ticket .. '|s', is_open, ticket .. '|t', ts)
  if is_open == '1' and old ~= '1' then add(c, 'ot', 1) end
  if is_open == '0' and old == '1' then add(c, 'ot', -1) end
end

-- At most MAX_TICKETS tickets per customer (processors/state.py keeps the same rule): at
-- the cap, tickets not open whose latest time is TICKET_HORIZON_MS older than this event
-- make room, else the new ticket is counted in 'tu' and not tracked.
local MAX_TICKETS = 1000
local TICKET_HORIZON_MS = 90 * 86400000
local function room_for_ticket(c, tkey, ts)
  local tracked = c.f.tn or 0
  if tracked < MAX_TICKETS then return true end
  local fields = redis.call('HGETALL', tkey)
  local tickets = {}
  for i = 1, #fields, 2 do
    local name, attr = string.match(fields[i], '^(.*)|(%a)$')
    if name then  -- every field is "<ticket>|<letter>"; anything else is left alone
      tickets[name] = tickets[name] or {}
      tickets[name][attr] = fields[i + 1]
    end
  end
  tracked = 0
  local horizon = tonumber(ts) - TICKET_HORIZON_MS
  for name, t in pairs(tickets) do
    local last = math.max(tonumber(t.o or '-1'), tonumber(t.r or '-1'), tonumber(t.t or '-1'))
    if t.s ~= '1' and last < horizon then
      redis.call('HDEL', tkey, name .. '|o', name .. '|r', name .. '|s', name .. '|t')
    else
      tracked = tracked + 1
    end
  end
  put(c, 'tn', tracked)
  return tracked < MAX_TICKETS
end

local function apply_ticket(c, cid, ts, action, ticket)
  local tkey = P .. 'tk:' .. cid
  local known = redis.call('HMGET', tkey, ticket .. '|o', ticket .. '|r', ticket .. '|s')
  if not known[1] and not known[2] and not known[3] then
    if not room_for_ticket(c, tkey, ts) then
      add(c, 'tu', 1)
      return
    end
    add(c, 'tn', 1)
  end
  local before = response_ms(tkey, ticket)
  if action == 'opened' then
    if redis.call('HSETNX', tkey, ticket .. '|o', ts) == 1 then
      add(c, 'to', 1)
    else
      set_min(tkey, ticket .. '|o', ts)
    end
    set_status(c, tkey, ticket, '1', ts)
  elseif action == 'reopened' then
    set_status(c, tkey, ticket, '1', ts)
  elseif action == 'resolved' then
    add(c, 'tr', 1)
    set_status(c, tkey, ticket, '0', ts)
  elseif action == 'agent_replied' then
    set_min(tkey, ticket .. '|r', ts)
  end
  local after = response_ms(tkey, ticket)
  if before ~= after then
    add(c, 'rs', (after or 0) - (before or 0))
    add(c, 'rn', (after and 1 or 0) - (before and 1 or 0))
    response_buckets(before, -1)
    response_buckets(after, 1)
  end
end
