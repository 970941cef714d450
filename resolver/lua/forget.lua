-- Erases one person atomically: the whole component of an id (its root and every id that
-- resolves to it) leaves the alias map, the heights, the provenance, the children index and
-- the refusal log; a tombstone (the id's HMAC, computed by the caller) is kept per erased id;
-- the generation is bumped and one `forget` entry (no raw ids) is appended to the change feed.
--
-- KEYS: alias hash, heights hash, provenance hash, refusal log, removals hash, children
--   index, change feed, sizes hash, quarantine hash (the held links of erased ids go too,
--   and those whose user_id is erased: the quarantine is read whole, with HSCAN, as
--   nothing indexes holds by target; it is normally small), protection hash (the erased
--   roots' rate windows go, and each dropped hold leaves its reason's tally)
-- ARGV: id, op id, reason ('' for none), tenant, change feed maxlen, dry run ('1' | '0'),
--   the refusal-log id the caller's scan ended at ('0': it read nothing), n, then n x
--   (member, its HMAC): the component as the caller found it (its root first), then m and m
--   block fields naming a member (the caller's HSCAN of the removals hash: a block names
--   both ids, and the tombstones make it redundant), then the refusal-log entry ids the
--   caller found naming a member
-- Returns {0} when id has no link either way and no held link names it (nothing to do), {1, {members}} for a dry run,
-- {2, {members}} when the component is not the one given (changed meanwhile: nothing
-- written; find it again), else {3, members erased, links removed, log entries deleted,
-- holds dropped}.
local key, hkey, pkey, log, rkey, ckey, changes =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local skey, qkey, gkey = KEYS[8], KEYS[9], KEYS[10]
local id, op_id, reason, tenant, changes_maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local dry, scanned_to, n = ARGV[6] == '1', ARGV[7], tonumber(ARGV[8])
local blocks = {}
for k = 10 + 2 * n, 9 + 2 * n + tonumber(ARGV[9 + 2 * n]) do
  if string.sub(ARGV[k], 1, 1) ~= 'b' then return redis.error_reply('ERR not a block field') end
  blocks[#blocks + 1] = ARGV[k]
end

local err = first_error(key_error(key, 'hash'), key_error(hkey, 'hash'),
                        key_error(pkey, 'hash'), key_error(log, 'stream'),
                        key_error(rkey, 'hash'), key_error(ckey, 'zset'),
                        key_error(changes, 'stream', true), key_error(skey, 'hash'),
                        key_error(qkey, 'hash'), key_error(gkey, 'hash'))
if err then return redis.error_reply(err) end
if not string.find(changes_maxlen, '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
local root = root_of(key, id)
if not root then
  return redis.error_reply('ERR ' .. key .. ': ' .. 'the id leads into a cycle written by ' ..
                           'another program; repair the map first')
end
local members = subtree(key, ckey, root)
local member_set = {}
for _, m in ipairs(members) do member_set[m] = true end
-- held links whose user_id is erased (those of an erased previous_user_id go below)
local holds, tallies = {}, {}
local function tally_drop(entry)
  local field = 'held:' .. string.match(entry, ' (%S+)$')
  tallies[field] = (tallies[field] or tonumber(redis.call('HGET', gkey, field)) or 0) - 1
end
local cursor = '0'
repeat
  local page = redis.call('HSCAN', qkey, cursor, 'COUNT', 1000)
  cursor = page[1]
  for f = 1, #page[2], 2 do
    local user = string.match(page[2][f + 1], '^(.*) %S+ %S+ %S+$')
    if member_set[user] and not member_set[page[2][f]] then
      holds[#holds + 1] = page[2][f]
      tally_drop(page[2][f + 1])
    end
  end
until cursor == '0'
-- a root without children and nothing held for or into it: no link either way
if #members == 1 and #holds == 0 and #blocks == 0 and redis.call('HEXISTS', qkey, id) == 0 then
  return {0}
end
if dry then return {1, members} end

local given = {}
for k = 9, 8 + 2 * n, 2 do given[ARGV[k]] = ARGV[k + 1] end
local same = n == #members
for _, m in ipairs(members) do
  if not given[m] then same = false end
end
if not same then return {2, members} end
for _, m in ipairs(members) do
  local held = redis.call('HGET', qkey, m)
  if held then tally_drop(held) end
end
err = first_error(not_a_count(rkey, ''), not_a_count(rkey, '#'), not_a_count(hkey, ''))
if err then return redis.error_reply(err) end

-- refusal-log entries naming a member that were added after the caller's scan
local doomed = {}
for k = 10 + 2 * n + #blocks, #ARGV do doomed[#doomed + 1] = ARGV[k] end
local start = scanned_to == '0' and '-' or '(' .. scanned_to
while true do
  local page = redis.call('XRANGE', log, start, '+', 'COUNT', 1000)
  for _, entry in ipairs(page) do
    local fields = entry[2]
    for f = 1, #fields, 2 do
      if (fields[f] == 'previous_user_id' or fields[f] == 'user_id') and member_set[fields[f + 1]]
      then
        doomed[#doomed + 1] = entry[1]
        break
      end
    end
  end
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end

local links, dropped = 0, 0
for _, m in ipairs(members) do
  local target = redis.call('HGET', key, m)
  if target then
    redis.call('HDEL', key, m)
    redis.call('ZREM', ckey, child_member(target, m))
    links = links + 1
  end
  redis.call('HDEL', pkey, m)
  redis.call('HDEL', hkey, m)
  redis.call('HDEL', skey, m)
  redis.call('HDEL', gkey, '>' .. m)
  dropped = dropped + redis.call('HDEL', qkey, m)
  redis.call('HSET', rkey, 't' .. given[m], op_id)
end
local count = tonumber(redis.call('HGET', hkey, ''))
if count then redis.call('HSET', hkey, '', math.max(count - links, 0)) end
redis.call('HINCRBY', rkey, '#', #members)
redis.call('HINCRBY', rkey, '', 1)
for first = 1, #blocks, 1000 do
  redis.call('HDEL', rkey, unpack(blocks, first, math.min(first + 999, #blocks)))
end
for first = 1, #holds, 1000 do
  dropped = dropped + redis.call('HDEL', qkey, unpack(holds, first, math.min(first + 999, #holds)))
end
for field, n in pairs(tallies) do redis.call('HSET', gkey, field, math.max(n, 0)) end
for first = 1, #doomed, 1000 do
  redis.call('XDEL', log, unpack(doomed, first, math.min(first + 999, #doomed)))
end
local extra = {}
if reason ~= '' then extra = {'reason', reason} end
redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'forget', 'previous_user_id', '',
           'user_id', '', 'root', given[root], 'source_id', op_id, 'ids', #members, unpack(extra))
if changes_maxlen ~= '0' then
  redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen)
end
return {3, #members, links, #doomed, dropped}
