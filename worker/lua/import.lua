-- Applies one chunk of imported links under the worker's link rules (link_rules.lua is
-- prepended), each applied link with its provenance and its change-feed entry, exactly as
-- commit.lua writes them. A chunk is decided whole (row by row in file order, each row seeing
-- the earlier rows' links), then written whole or refused whole with nothing written.
--
-- KEYS: alias hash, its heights hash, its provenance hash, the change feed, its removals hash
--   (blocks, tombstones), its children index, its sizes hash, its quarantine hash, its
--   protection hash, and for a dry run the four scratch hashes standing in for the alias,
--   heights, sizes and protection hashes (see below).
-- ARGV: mode ('apply' or 'dry'), max chain depth, change feed maxlen, tenant, consumer
--   (written into provenance), source id prefix ('import:<file sha>:'), n, the default max
--   component size, the default max links per root per hour (0: no rate rule), then n x
--   (line, previous_user_id, user_id, applied_at_ms or '' for Redis's clock, tombstone HMAC
--   of previous_user_id, of user_id: '' without STITCH_TOMBSTONE_KEY).
-- Returns the outcome of each row: 'applied' | 'noop' | 'forgotten' | 'blocked' |
-- 'conflict' | 'cycle' | 'too_deep' | 'quarantined' (held in the quarantine hash, as the
-- worker holds it, with a `quarantine` feed entry and its reason's tally; a dry run only
-- reports it).
--
-- A dry run writes nothing to the four keys: it stages the links it would apply in the
-- scratch hashes (expiring after an hour) and reads them before the real ones, so that a
-- later chunk of the same run sees the links earlier chunks would have applied.
--
-- Before the first write, as in commit.lua: each hash is TYPE hash or none, the feed TYPE
-- stream or none with ids left to give, the maxlen digits only; the alias hash is read
-- (HGET) before any write; Redis refuses only a script's first write when out of memory.

local alias, heights, provenance, changes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local removals, children, sizes, quarantine = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local protection = KEYS[9]
local mode, max_depth, changes_maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local tenant, consumer, source_prefix, n = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local dry = mode == 'dry'

if not string.find(changes_maxlen, '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
for _, key in ipairs({alias, heights, provenance, removals, sizes, quarantine, protection}) do
  local err = key_error(key, 'hash')
  if err then return redis.error_reply(err) end
end
local err = key_error(children, 'zset')
if err then return redis.error_reply(err) end
-- blocks and tombstones, as the worker consults them (only for a tenant that had removals)
local meta = redis.call('HMGET', removals, '', '#')
local rkey = nil
if (meta[1] or '0') ~= '0' then rkey = removals end
if tonumber(meta[2] or '0') > 0 and n > 0 and ARGV[10 + 4] == '' then
  return redis.error_reply('ERR ' .. alias .. ' has tombstones: importing needs ' ..
                           'STITCH_TOMBSTONE_KEY to check them')
end

local pending = {}
if dry then
  -- the scratch hashes answer first: raw fields (this chunk) win, then __index
  local shadow_links, shadow_heights, shadow_sizes = KEYS[10], KEYS[11], KEYS[12]
  pending[alias] = setmetatable({}, {__index = function(_, id)
    return redis.call('HGET', shadow_links, id) or nil
  end})
  pending[heights] = setmetatable({}, {__index = function(_, root)
    return tonumber(redis.call('HGET', shadow_heights, root)) or nil
  end})
  pending[sizes] = setmetatable({}, {__index = function(_, root)
    return tonumber(redis.call('HGET', shadow_sizes, root)) or nil
  end})
  pending[protection] = setmetatable({}, {__index = function(_, field)
    return redis.call('HGET', KEYS[13], field) or nil
  end})
end
local cap = size_cap(sizes, ARGV[8])
local guard = guard_of(protection, ARGV[9])

local outcomes, applied, held = {}, {}, {}
local i = 10
for r = 1, n do
  local prev, user = ARGV[i + 1], ARGV[i + 2]
  local outcome, _, root, height, prev_height, size, extra =
    decide_link(alias, heights, prev, user, max_depth, pending, rkey, ARGV[i + 4], ARGV[i + 5],
                sizes, cap, guard)
  if outcome == 'applied' then
    stage_link(alias, heights, children, prev, user, root, height, prev_height, pending, sizes,
               size, guard, extra)
    applied[#applied + 1] = {prev, user, root, source_prefix .. ARGV[i], ARGV[i + 3]}
  elseif outcome == 'quarantined' then
    held[#held + 1] = {prev, user, root, source_prefix .. ARGV[i], size, extra}
  end
  outcomes[r] = outcome
  i = i + 6
end

if dry then
  local targets = {[alias] = KEYS[10], [heights] = KEYS[11], [sizes] = KEYS[12],
                   [protection] = KEYS[13]}
  -- (the children index: not read)
  for key, staged in pairs(pending) do
    local target = targets[key]
    if target then
      for field, value in pairs(staged) do
        -- false: prev is no longer a root (0 reads as "none" for heights; sizes: see below)
        redis.call('HSET', target, field, value or '0')
      end
      redis.call('PEXPIRE', target, 3600000)
    end
  end
  return outcomes
end

if #applied == 0 and #held == 0 then return outcomes end

err = key_error(changes, 'stream', true)
if err then return redis.error_reply(err) end
local stamp = now_ms()

write_staged(pending)
for _, link in ipairs(applied) do
  local prev, user, root, source, at = link[1], link[2], link[3], link[4], link[5]
  if at == '' then at = stamp end
  redis.call('HSET', provenance, prev, source .. ' ' .. at .. ' ' .. consumer)
  redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'link', 'previous_user_id', prev,
             'user_id', user, 'root', root, 'source_id', source)
end
for _, hold in ipairs(held) do
  local prev, user, root, source, size = hold[1], hold[2], hold[3], hold[4], hold[5]
  local reason = hold[6]
  if redis.call('HSETNX', quarantine, prev, user .. ' ' .. source .. ' ' .. stamp .. ' ' ..
                reason) == 1 then
    redis.call('HSET', protection, held_one_more(guard, reason))
    redis.call('XADD', changes, '*', 'tenant', tenant, 'op', 'quarantine', 'previous_user_id',
               prev, 'user_id', user, 'root', root, 'source_id', source, 'reason', reason,
               'size', size)
  end
end
if changes_maxlen ~= '0' then
  redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen)
end
return outcomes
