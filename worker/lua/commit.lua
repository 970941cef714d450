-- Commits one batch atomically: verify what the worker assumed, apply its links, then
-- XACK every entry and emit only where XACK returned 1, so a redelivered or doubly
-- claimed entry can never be emitted twice. Nothing is written unless every check passes.
--
-- KEYS: input stream, output stream, dead-letter stream, alias hashes...
-- ARGV: group, output maxlen, dead maxlen, max depth, n_verify, n_links, n_entries, then
--   n_verify x (alias key index, id)                 ids the worker resolved to as roots
--   n_links  x (alias key index, prev, user, expect)  expect '1' if the worker assumed it applies
--   n_entries x (entry id, action, a, b)  e=emit (a: resolved id), d=dead-letter (a: error,
--                                          b: error code), a=ack only
-- Returns {0, {key index, id, current}..., {link index, current}...} when an assumption was
-- stale (nothing written), else {1, emitted, dead_lettered, {duplicate entry indexes},
-- {outcome per link}}.

local input, output, dead = KEYS[1], KEYS[2], KEYS[3]
local group = ARGV[1]
local out_maxlen, dead_maxlen = ARGV[2], ARGV[3]
local max_depth = tonumber(ARGV[4])
local n_verify, n_links, n_entries = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8

local stale_roots = {}
for _ = 1, n_verify do
  local key = KEYS[tonumber(ARGV[i])]
  local current = redis.call('HGET', key, ARGV[i + 1])
  if current then
    stale_roots[#stale_roots + 1] = {ARGV[i], ARGV[i + 1], current}
  end
  i = i + 2
end

local pending = {}
local outcomes, stale_links = {}, {}
for n = 1, n_links do
  local key = KEYS[tonumber(ARGV[i])]
  local prev, user, expect = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local outcome, current = decide_link(key, prev, user, max_depth, pending)
  if outcome == 'applied' then stage_link(key, prev, user, pending) end
  if (outcome == 'applied') ~= (expect == '1') then
    stale_links[#stale_links + 1] = {n, current or false}
  end
  outcomes[n] = outcome
  i = i + 4
end

if #stale_roots > 0 or #stale_links > 0 then
  return {0, stale_roots, stale_links}
end

for key, staged in pairs(pending) do
  for prev, user in pairs(staged) do
    redis.call('HSET', key, prev, user)
  end
end

local function xadd(stream, maxlen, fields)
  if maxlen == '0' then
    return redis.call('XADD', stream, '*', unpack(fields))
  end
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- The payload is copied here, inside Redis, so the worker sends only ids and verdicts.
local function input_fields(id)
  local rows = redis.call('XRANGE', input, id, id)
  if #rows == 0 then return nil end  -- deleted or trimmed since it was read
  return rows[1][2]
end

local emitted, dead_lettered, duplicates = 0, 0, {}
for n = 1, n_entries do
  local id, action = ARGV[i], ARGV[i + 1]
  if redis.call('XACK', input, group, id) == 1 then
    local fields = action ~= 'a' and input_fields(id)
    if fields and action == 'e' then
      local k = #fields
      fields[k + 1], fields[k + 2], fields[k + 3], fields[k + 4] =
        'resolved_user_id', ARGV[i + 2], 'source_id', id
      xadd(output, out_maxlen, fields)
      emitted = emitted + 1
    elseif fields and action == 'd' then
      local k = #fields
      fields[k + 1], fields[k + 2], fields[k + 3], fields[k + 4], fields[k + 5], fields[k + 6] =
        'error', ARGV[i + 2], 'error_code', ARGV[i + 3], 'source_id', id
      xadd(dead, dead_maxlen, fields)
      dead_lettered = dead_lettered + 1
    end
  else
    duplicates[#duplicates + 1] = n
  end
  i = i + 4
end

return {1, emitted, dead_lettered, duplicates, outcomes}
