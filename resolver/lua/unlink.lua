-- Removes one link atomically: previous_user_id's outgoing link, its provenance and its
-- children-index entry; bumps the tenant's generation (so every worker drops its cache of the
-- tenant before its next commit); optionally blocks the link for good; appends the change
-- feed's `unlink` (and `block`) entries.
--
-- KEYS: alias hash, heights hash, provenance hash, removals hash, children index, change feed,
--   sizes hash
-- ARGV: previous_user_id, block ('1' | '0'), op id, reason ('' for none), tenant,
--   change feed maxlen, dry run ('1' | '0')
-- Returns {0} when previous_user_id has no link (nothing to do), else
-- {1, the removed link's target, {previous_user_id and every id under it}}: the ids whose
-- resolution changes (from the old root to previous_user_id). A dry run writes nothing.
--
-- Heights: when the children index holds every link of the map, both trees are walked and
-- the old root and previous_user_id (a new root) get their exact heights. Otherwise (links
-- written by another program) they stay upper bounds: the old root keeps its height, and
-- previous_user_id gets the old root's height - its depth, which bounds every chain under it.
-- Sizes likewise: with the whole index, the old root loses the ids under previous_user_id and
-- previous_user_id's component is exactly them; otherwise the old root keeps its size (an
-- upper bound: the cap only ever holds too much, never too little) and previous_user_id gets
-- the ids the index lists under it.
local key, hkey, pkey, rkey, ckey, changes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local prev, block, op_id, reason, tenant = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4], ARGV[5]
local changes_maxlen, dry = ARGV[6], ARGV[7] == '1'
local skey = KEYS[7]

local err = first_error(key_error(key, 'hash'), key_error(hkey, 'hash'),
                        key_error(pkey, 'hash'), key_error(rkey, 'hash'),
                        key_error(ckey, 'zset'), key_error(changes, 'stream'),
                        key_error(skey, 'hash'))
if err then return redis.error_reply(err) end
if not string.find(changes_maxlen, '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
local target = redis.call('HGET', key, prev)
if not target then return {0} end
local affected, prev_height = subtree(key, ckey, prev)
if dry then return {1, target, affected} end
err = first_error(not_a_count(rkey, ''), not_a_count(hkey, ''))
if err then return redis.error_reply(err) end

local root, depth = root_of(key, target)
local root_height = nil  -- nil: keep the old root's height as it is
local root_size = nil  -- nil: keep the old root's size (an upper bound)
if root and indexed(key, ckey) then
  local rest
  rest, root_height = subtree(key, ckey, root, prev)
  root_size = #rest
elseif root then
  prev_height = (tonumber(redis.call('HGET', hkey, root)) or 0) - (depth + 1)
end
local count = tonumber(redis.call('HGET', hkey, ''))

redis.call('HDEL', key, prev)
redis.call('HDEL', pkey, prev)
redis.call('ZREM', ckey, child_member(target, prev))
if prev_height > 0 then redis.call('HSET', hkey, prev, prev_height) end
if root_height == 0 then
  redis.call('HDEL', hkey, root)
elseif root_height then
  redis.call('HSET', hkey, root, root_height)
end
if #affected > 1 then redis.call('HSET', skey, prev, #affected) end
if root_size and root_size <= 1 then
  redis.call('HDEL', skey, root)
elseif root_size then
  redis.call('HSET', skey, root, root_size)
end
if count and count > 0 then
  redis.call('HSET', hkey, '', count - 1)
end
redis.call('HINCRBY', rkey, '', 1)
local extra = {}
if reason ~= '' then extra = {'reason', reason} end
redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'unlink', 'previous_user_id', prev,
           'user_id', target, 'root', prev, 'source_id', op_id, unpack(extra))
if block then
  redis.call('HSET', rkey, block_field(prev, target), op_id)
  redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'block', 'previous_user_id', prev,
             'user_id', target, 'root', prev, 'source_id', op_id, unpack(extra))
end
if changes_maxlen ~= '0' then
  redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen)
end
return {1, target, affected}
