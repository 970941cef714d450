-- `lehnz-stitch audit --apply`, one page: holds existing links that break the current rules
-- (found by the caller, resolver/auditing.py) in the quarantine. Each link still in the map
-- and still breaking its rule is removed as unlink removes it (remove_link, unlinking.lua),
-- held (previous_user_id -> "user_id source_id held_at_ms reason", source_id its provenance's,
-- else the op id) and announced in the change feed: `unlink` (so a fold of the feed stays the
-- map) then `quarantine`, both with the reason. The generation is bumped once, so every
-- worker drops its cache of the tenant before its next commit. All checks come before the
-- first write; reads in between cannot fail.
--
-- KEYS: alias hash, heights hash, provenance hash, removals hash, children index, sizes hash,
--   quarantine hash, change feed, protection hash (each hold adds one to its reason's tally)
-- ARGV: op id, tenant, change feed maxlen, max chain depth, n, then n x (previous_user_id,
--   its user_id as found, reason, tombstone HMACs of both ids ('' without the key))
-- Reasons and what is checked again here: audit:placeholder (nothing: ids do not change),
-- audit:blocked (the block is still there), audit:forgotten (a tombstone of either id),
-- audit:too_deep (previous_user_id is still deeper than the cap), audit:size (nothing: the
-- caller's choice of which links leave a component over the cap stands).
-- Returns one status per link: 'held', 'changed' (no longer linked so), 'kept' (no longer
-- breaks the rule), 'already_held' (previous_user_id has a hold already: the first stands).
local key, hkey, pkey, rkey, ckey, skey, qkey, changes, gkey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local op_id, tenant, changes_maxlen = ARGV[1], ARGV[2], ARGV[3]
local max_depth, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local FIELDS = 5

local function checked(prev, target, hprev, huser)
  return {
    ['audit:placeholder'] = function() return true end,
    ['audit:size'] = function() return true end,
    ['audit:blocked'] = function()
      return redis.call('HEXISTS', rkey, block_field(prev, target)) == 1
    end,
    ['audit:forgotten'] = function()
      return (hprev ~= '' and redis.call('HEXISTS', rkey, 't' .. hprev) == 1) or
             (huser ~= '' and redis.call('HEXISTS', rkey, 't' .. huser) == 1)
    end,
    ['audit:too_deep'] = function()
      local root, depth = root_of(key, prev)
      return root ~= nil and depth > max_depth
    end,
  }
end

local err = first_error(key_error(key, 'hash'), key_error(hkey, 'hash'),
                        key_error(pkey, 'hash'), key_error(rkey, 'hash'),
                        key_error(ckey, 'zset'), key_error(skey, 'hash'),
                        key_error(qkey, 'hash'), key_error(changes, 'stream', true),
                        key_error(gkey, 'hash'))
if err then return redis.error_reply(err) end
err = first_error(not_a_count(rkey, ''), not_a_count(hkey, ''))
if err then return redis.error_reply(err) end
if not string.find(changes_maxlen, '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
if not max_depth or not n or #ARGV ~= 5 + FIELDS * n then
  return redis.error_reply('ERR audit: max depth, n and n x ' .. FIELDS .. ' link fields')
end
for k = 6, #ARGV, FIELDS do
  if not checked('', '', '', '')[ARGV[k + 2]] then
    return redis.error_reply('ERR audit: unknown reason ' .. ARGV[k + 2])
  end
end
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))

local tallies = {}
for reason in pairs(checked('', '', '', '')) do
  tallies[reason] = tonumber(redis.call('HGET', gkey, 'held:' .. reason)) or 0
end

local statuses, roots, held = {}, {}, 0
for k = 6, #ARGV, FIELDS do
  local prev, user, reason = ARGV[k], ARGV[k + 1], ARGV[k + 2]
  local target = redis.call('HGET', key, prev)
  local status = 'held'
  if target ~= user then
    status = 'changed'
  elseif redis.call('HEXISTS', qkey, prev) == 1 then
    status = 'already_held'
  elseif not checked(prev, target, ARGV[k + 3], ARGV[k + 4])[reason]() then
    status = 'kept'
  end
  if status == 'held' then
    local origin = redis.call('HGET', pkey, prev)
    local source = origin and string.match(origin, '^(%S+) ') or op_id
    local affected, prev_height = subtree(key, ckey, prev)
    local root = remove_link(key, hkey, pkey, ckey, skey, prev, target, affected, prev_height,
                             false)
    if root then roots[root] = true end
    redis.call('HSET', qkey, prev, target .. ' ' .. source .. ' ' .. ms .. ' ' .. reason)
    redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'unlink', 'previous_user_id', prev,
               'user_id', target, 'root', prev, 'source_id', op_id, 'reason', reason)
    redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'quarantine', 'previous_user_id',
               prev, 'user_id', target, 'root', prev, 'source_id', op_id, 'reason', reason)
    held = held + 1
    tallies[reason] = tallies[reason] + 1
  end
  statuses[#statuses + 1] = status
end
if held == 0 then return statuses end

-- one walk per tree that lost links: its root's exact height and size (with the whole index)
if indexed(key, ckey) then
  for root in pairs(roots) do
    local members, height = subtree(key, ckey, root)
    if height == 0 then redis.call('HDEL', hkey, root) else redis.call('HSET', hkey, root, height) end
    if #members <= 1 then
      redis.call('HDEL', skey, root)
    else
      redis.call('HSET', skey, root, #members)
    end
  end
end
redis.call('HINCRBY', rkey, '', 1)
for reason, n in pairs(tallies) do redis.call('HSET', gkey, 'held:' .. reason, n) end
if changes_maxlen ~= '0' then
  redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen)
end
return statuses
