-- An operator's decision on one held link (link_rules.lua is prepended): approve applies it
-- under every rule but the size cap and the rate rule (first link wins, cycle, depth, block, tombstone; a link
-- that now breaks one stays held and the reason is returned), reject removes it, optionally
-- blocking it for good (which bumps the generation, as unlink's block does). Either way with
-- its change-feed entry; an applied link gets its provenance as the worker writes it. The
-- hold's reason tally in the protection hash drops by one; an approved link is not counted
-- in its root's rate window (the operator decided it, not traffic).
--
-- KEYS: alias hash, heights hash, provenance hash, removals hash, children index, sizes hash,
--   quarantine hash, change feed, protection hash
-- ARGV: 'approve' | 'reject' | 'reject-block', previous_user_id, max chain depth, op id,
--   tenant, consumer, change feed maxlen, tombstone HMACs of previous_user_id and of the held
--   user_id ('' without STITCH_TOMBSTONE_KEY; the caller reads the held user_id first and
--   passes it as ARGV[10]: a different one means the hold changed, nothing is done)
-- Returns {'missing'} when nothing is held for previous_user_id (or it changed), else
-- {outcome, user_id, root}: 'applied' | 'noop' (already linked so: the hold is dropped) | a
-- refusal (kept) for approve, 'rejected' for reject.
local key, hkey, pkey, rkey, ckey, skey, qkey, changes =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local gkey = KEYS[9]
local mode, prev, max_depth, op_id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local tenant, consumer, changes_maxlen = ARGV[5], ARGV[6], ARGV[7]
local hprev, huser, expected = ARGV[8], ARGV[9], ARGV[10]

local err = first_error(key_error(key, 'hash'), key_error(hkey, 'hash'),
                        key_error(pkey, 'hash'), key_error(rkey, 'hash'),
                        key_error(ckey, 'zset'), key_error(skey, 'hash'),
                        key_error(qkey, 'hash'), key_error(changes, 'stream', true),
                        key_error(gkey, 'hash'),
                        not_a_count(rkey, ''), not_a_count(hkey, ''))
if err then return redis.error_reply(err) end
if not string.find(changes_maxlen, '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
local entry = redis.call('HGET', qkey, prev)
if not entry then return {'missing'} end
local user = string.match(entry, '^(.*) %S+ %S+ %S+$')
if user ~= expected then return {'missing'} end
local meta = redis.call('HMGET', rkey, '', '#')
if tonumber(meta[2] or '0') > 0 and (hprev == '' or huser == '') then
  return redis.error_reply('ERR ' .. key .. ' has tombstones: approving needs ' ..
                           'STITCH_TOMBSTONE_KEY to check them')
end
local ms = now_ms()
local guard = guard_of(gkey, 0)
guard.limit = 0  -- the operator overrides the rate rule too
local tally = 'held:' .. string.match(entry, ' (%S+)$')
local tallied = math.max((tonumber(redis.call('HGET', gkey, tally)) or 0) - 1, 0)

local function feed(op, root, ...)
  redis.call('XADD', changes, '*', 'tenant', tenant, 'op', op, 'previous_user_id', prev,
             'user_id', user, 'root', root, 'source_id', op_id, ...)
end

if mode == 'approve' then
  local rules_key = nil
  if (meta[1] or '0') ~= '0' then rules_key = rkey end
  local pending = {}
  local outcome, _, root, height, prev_height, size =
    decide_link(key, hkey, prev, user, max_depth, pending, rules_key, hprev, huser, skey, nil,
                guard)
  if outcome ~= 'applied' and outcome ~= 'noop' then return {outcome, user, prev} end
  redis.call('HDEL', qkey, prev)
  redis.call('HSET', gkey, tally, tallied)
  if outcome == 'applied' then
    stage_link(key, hkey, ckey, prev, user, root, height, prev_height, pending, skey, size,
               guard)
    write_staged(pending)
    redis.call('HSET', pkey, prev, op_id .. ' ' .. ms .. ' ' .. consumer)
  end
  feed('approve', root or user, 'size', tostring(size or ''))
  if changes_maxlen ~= '0' then redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen) end
  return {outcome, user, root or user}
end

redis.call('HDEL', qkey, prev)
redis.call('HSET', gkey, tally, tallied)
feed('reject', prev)
if mode == 'reject-block' then
  redis.call('HSET', rkey, block_field(prev, user), op_id)
  redis.call('HINCRBY', rkey, '', 1)
  feed('block', prev)
end
if changes_maxlen ~= '0' then redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen) end
return {'rejected', user, prev}
