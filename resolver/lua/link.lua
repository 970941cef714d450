-- KEYS[1] alias hash; ARGV: max_depth, previous_user_id, user_id
-- Atomically applies one link under the forest rules; returns {outcome, current_target}.
local pending = {}
local outcome, current = decide_link(KEYS[1], ARGV[2], ARGV[3], tonumber(ARGV[1]), pending)
if outcome == 'applied' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
return {outcome, current or false}
