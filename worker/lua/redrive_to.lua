-- Adds one dead letter's original fields to another shard's input stream, at most once ever
-- (worker/ops/shard_redrive.py: a wrong_shard letter going to its tenant's right shard).
--
-- KEYS: the target shard's input stream, its re-drive marker hash (same hash tag)
-- ARGV: the marker field ('<source shard>/<dead letter id>'), then the original fields, flat
-- Returns {'added', new id} or {'already', the id added by an earlier run}.
--
-- The dead letter lives on another shard (another slot, maybe another node), so its XDEL
-- cannot be in this script. The marker makes the pair safe: the XADD and the marker's HSET
-- happen here together, the caller XDELs the letter on its shard and then HDELs the marker.
-- A run killed between the two finds the marker and adds nothing again; a letter whose
-- marker is set is deleted, never re-driven anew (shard_redrive.py, finish_interrupted).
-- Everything a write could fail on is checked first: both key types, an input that can still
-- hand out an id, an even number of field values that unpack() can pass (MAX_VALUES is
-- prepended by the caller).

local input, markers, marker = KEYS[1], KEYS[2], ARGV[1]
local err = key_error(input, 'stream', true) or key_error(markers, 'hash', false)
if err then return redis.error_reply(err) end
local earlier = redis.call('HGET', markers, marker)
if earlier then return {'already', earlier} end
if #ARGV < 3 or (#ARGV - 1) % 2 ~= 0 or #ARGV - 1 > MAX_VALUES then
  return redis.error_reply('ERR the original fields must be 1 to MAX_VALUES/2 name/value pairs')
end
local added = redis.call('XADD', input, '*', unpack(ARGV, 2))
redis.call('HSET', markers, marker, added)
return {'added', added}
