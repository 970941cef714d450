-- KEYS[1] alias hash, KEYS[2] its heights hash, KEYS[3] its removals hash, KEYS[4] its
-- children index, KEYS[5] its provenance hash, KEYS[6] the change feed;
-- ARGV: max_depth, previous_user_id, user_id, the tombstone HMACs of both ids ('' when the
-- caller has no STITCH_TOMBSTONE_KEY), source id (the operation's id), who applied it,
-- the feed's maxlen, tenant.
-- Atomically applies one link under the forest rules, with its provenance and its feed
-- entry as the worker writes them; returns {outcome, current_target}. Everything that can
-- fail (a key of the wrong type, a missing tombstone key, a feed out of ids) fails before
-- the first write.
local LAST_ID = '18446744073709551615-18446744073709551615'
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
local outcome, current, root, height, prev_height =
  decide_link(KEYS[1], KEYS[2], ARGV[2], ARGV[3], tonumber(ARGV[1]), pending, rkey, ARGV[4],
              ARGV[5])
if outcome ~= 'applied' then return {outcome, current or false} end
local kinds = {}
for k, want in pairs({[4] = 'zset', [5] = 'hash', [6] = 'stream'}) do
  kinds[k] = redis.call('TYPE', KEYS[k])['ok']
  if kinds[k] ~= want and kinds[k] ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kinds[k] .. ', not a ' ..
                             want)
  end
end
if kinds[6] == 'stream' then
  local info = redis.call('XINFO', 'STREAM', KEYS[6])
  for f = 1, #info, 2 do
    if info[f] == 'last-generated-id' and info[f + 1] == LAST_ID then
      return redis.error_reply('ERR ' .. KEYS[6] .. ' has handed out the last possible id')
    end
  end
end
local now = redis.call('TIME')
local stamp = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
stage_link(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[3], root, height, prev_height, pending)
write_staged(pending)
redis.call('HSET', KEYS[5], ARGV[2], ARGV[6] .. ' ' .. stamp .. ' ' .. ARGV[7])
redis.call('XADD', KEYS[6], '*', 'tenant', ARGV[9], 'op', 'link', 'previous_user_id', ARGV[2],
           'user_id', ARGV[3], 'root', root, 'source_id', ARGV[6])
if ARGV[8] ~= '0' then redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[8]) end
return {outcome, current or false}
