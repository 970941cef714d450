-- Re-drives dead letters onto the input stream, each exactly once (worker/ops/dead_letters.py).
--
-- KEYS: the input stream, the dead-letter stream
-- ARGV: dead-letter ids, as XRANGE returned them
-- Returns, for each id in order, {outcome, the new input entry's id or false}:
--   'redriven'          its original fields were XADDed to the input, the dead letter XDELed
--   'gone'              no such dead letter (re-driven or purged since it was read, or the id
--                       was given twice): nothing done
--   'source_trimmed'    a dead letter without payload (too_many_fields, entry_too_large,
--                       commit_failed) whose source entry is no longer in the input: left
--   'too_many_fields'   more than MAX_VALUES field values for one XADD from Lua: left
--   'not_a_dead_letter' its fields do not end with error, error_code, source_id: left
--
-- The original fields are the dead letter's own minus the three the worker appended (always
-- the last three pairs, so an input field of the same name survives); a dead letter without
-- payload takes them from its source entry (XRANGE input source_id source_id).
--
-- Exactly once: each dead letter's XADD and its XDEL happen in this one script, so a command
-- killed at any moment leaves every dead letter either in place (not re-driven) or deleted
-- with its copy on the input, never both; a run after it finds the re-driven ones gone.
-- Redis keeps a failed script's earlier writes, so everything that can fail is checked
-- before the first write: both keys are streams (or absent), the input can still hand out an
-- id, every id is well-formed before XRANGE parses it, every XADD fits Lua's unpack() limit.

local input, dead = KEYS[1], KEYS[2]
local MAX_VALUES = 7900  -- unpack() fails past 8,000 values; XADD's own 3 arguments come first
local ID = '^%d+%-%d+$'

for k = 1, 2 do
  local err = key_error(KEYS[k], 'stream', k == 1)
  if err then return redis.error_reply(err) end
end

local function fields_of(stream, id)
  if not string.find(id, ID) then return nil end
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then return nil end
  return found[1][2]
end

local payloads, results, seen = {}, {}, {}
for k = 1, #ARGV do
  local id = ARGV[k]
  local outcome, payload = 'gone', nil
  local fields = (not seen[id]) and fields_of(dead, id)
  seen[id] = true
  if fields then
    local n = #fields
    if n < 6 or fields[n - 5] ~= 'error' or fields[n - 3] ~= 'error_code'
        or fields[n - 1] ~= 'source_id' then
      outcome = 'not_a_dead_letter'
    elseif n > 6 then
      payload = {}
      for j = 1, n - 6 do payload[j] = fields[j] end
    else
      payload = fields_of(input, fields[n])
      if not payload then outcome = 'source_trimmed' end
    end
    if payload and #payload > MAX_VALUES then
      outcome, payload = 'too_many_fields', nil
    end
  end
  if payload then
    outcome = 'redriven'
    payloads[k] = payload
  end
  results[k] = {outcome, false}
end

for k = 1, #ARGV do
  if payloads[k] then
    results[k][2] = redis.call('XADD', input, '*', unpack(payloads[k]))
    redis.call('XDEL', dead, ARGV[k])
  end
end
return results
