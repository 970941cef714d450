-- KEYS[1] alias hash, KEYS[2] its heights hash, KEYS[3] its removals hash, KEYS[4] its
-- children index, KEYS[5] its provenance hash, KEYS[6] the change feed, KEYS[7] its sizes
-- hash, KEYS[8] its quarantine hash, KEYS[9] its protection hash;
-- ARGV: max_depth, previous_user_id, user_id, the tombstone HMACs of both ids ('' when the
-- caller has no STITCH_TOMBSTONE_KEY), source id (the operation's id), who applied it,
-- the feed's maxlen, tenant, the default max component size, the default max links per
-- root per hour (0: no rate rule).
-- Atomically applies one link under the forest rules, with its provenance and its feed
-- entry as the worker writes them, or holds it in the quarantine (the first hold of an id
-- stands) with a `quarantine` feed entry and its reason's tally; returns {outcome,
-- current_target}. Everything
-- that can fail (a key of the wrong type, a missing tombstone key, a feed out of ids) fails
-- before the first write.
local meta = redis.call('HMGET', KEYS[3], '', '#')
if tonumber(meta[2] or '0') > 0 and (ARGV[4] == '' or ARGV[5] == '') then
  return redis.error_reply('ERR ' .. KEYS[1] .. ' has tombstones: linking needs ' ..
                           'STITCH_TOMBSTONE_KEY to check them')
end
if not string.find(ARGV[8], '^%d+$') then
  return redis.error_reply('ERR maxlen arguments must be digits')
end
local rkey = nil
if (meta[1] or '0') ~= '0' then rkey = KEYS[3] end
local pending = {}
local guard = guard_of(KEYS[9], ARGV[11])
local outcome, current, root, height, prev_height, size, extra =
  decide_link(KEYS[1], KEYS[2], ARGV[2], ARGV[3], tonumber(ARGV[1]), pending, rkey, ARGV[4],
              ARGV[5], KEYS[7], size_cap(KEYS[7], ARGV[10]), guard)
if outcome ~= 'applied' and outcome ~= 'quarantined' then return {outcome, current or false} end

local writes = {[6] = 'stream', [8] = 'hash'}
if outcome == 'applied' then writes = {[4] = 'zset', [5] = 'hash', [6] = 'stream'} end
for k, want in pairs(writes) do
  local err = key_error(KEYS[k], want, true)
  if err then return redis.error_reply(err) end
end
local stamp = now_ms()

if outcome == 'quarantined' then
  if redis.call('HSETNX', KEYS[8], ARGV[2], ARGV[3] .. ' ' .. ARGV[6] .. ' ' .. stamp ..
                ' ' .. extra) == 1 then
    redis.call('HSET', KEYS[9], held_one_more(guard, extra))
    redis.call('XADD', KEYS[6], '*', 'tenant', ARGV[9], 'op', 'quarantine', 'previous_user_id',
               ARGV[2], 'user_id', ARGV[3], 'root', root, 'source_id', ARGV[6],
               'reason', extra, 'size', size)
  end
  return {outcome, false}
end
stage_link(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[3], root, height, prev_height, pending,
           KEYS[7], size, guard, extra)
write_staged(pending)
redis.call('HSET', KEYS[5], ARGV[2], ARGV[6] .. ' ' .. stamp .. ' ' .. ARGV[7])
redis.call('XADD', KEYS[6], '*', 'tenant', ARGV[9], 'op', 'link', 'previous_user_id', ARGV[2],
           'user_id', ARGV[3], 'root', root, 'source_id', ARGV[6])
if ARGV[8] ~= '0' then redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[8]) end
return {outcome, current or false}
