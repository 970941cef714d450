-- KEYS[1] alias hash, KEYS[2] its heights hash, KEYS[3] its removals hash, KEYS[4] its
-- children index, KEYS[5] its sizes hash, KEYS[6] its quarantine hash; ARGV: max_depth,
-- previous_user_id, user_id, then the tombstone HMACs of both ids ('' when the caller has no
-- STITCH_TOMBSTONE_KEY), the default max component size. A held link goes to the
-- quarantine (the first hold of an id stands) with source id 'link'.
-- Atomically applies one link under the forest rules; returns {outcome, current_target}.
-- Everything that can fail (a key of the wrong type, a missing tombstone key) fails before
-- the first write.
local meta = redis.call('HMGET', KEYS[3], '', '#')
if tonumber(meta[2] or '0') > 0 and (ARGV[4] == '' or ARGV[5] == '') then
  return redis.error_reply('ERR ' .. KEYS[1] .. ' has tombstones: linking needs ' ..
                           'STITCH_TOMBSTONE_KEY to check them')
end
local rkey = nil
if (meta[1] or '0') ~= '0' then rkey = KEYS[3] end
local pending = {}
local outcome, current, root, height, prev_height, size =
  decide_link(KEYS[1], KEYS[2], ARGV[2], ARGV[3], tonumber(ARGV[1]), pending, rkey, ARGV[4],
              ARGV[5], KEYS[5], size_cap(KEYS[5], ARGV[6]))
if outcome == 'quarantined' then
  local now = redis.call('TIME')  -- before the write: HSETNX fails on a wrong type only
  local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  redis.call('HSETNX', KEYS[6], ARGV[2], ARGV[3] .. ' link ' .. ms .. ' size')
  return {outcome, false}
end
if outcome == 'applied' then
  local kind = redis.call('TYPE', KEYS[4])['ok']
  if kind ~= 'zset' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[4] .. ' holds a ' .. kind .. ', not a zset')
  end
  stage_link(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[3], root, height, prev_height, pending,
             KEYS[5], size)
  write_staged(pending)
end
return {outcome, current or false}
