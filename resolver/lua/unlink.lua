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
-- Heights and sizes afterwards: see remove_link (unlinking.lua).
local key, hkey, pkey, rkey, ckey, changes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local prev, block, op_id, reason, tenant = ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4], ARGV[5]
local changes_maxlen, dry = ARGV[6], ARGV[7] == '1'
local skey = KEYS[7]

local err = first_error(key_error(key, 'hash'), key_error(hkey, 'hash'),
                        key_error(pkey, 'hash'), key_error(rkey, 'hash'),
                        key_error(ckey, 'zset'), key_error(changes, 'stream', true),
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

remove_link(key, hkey, pkey, ckey, skey, prev, target, affected, prev_height, true)
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
