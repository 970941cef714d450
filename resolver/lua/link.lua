-- KEYS[1] alias hash, KEYS[2] its heights hash; ARGV: max_depth, previous_user_id, user_id
-- Atomically applies one link under the forest rules; returns {outcome, current_target}.
local pending = {}
local outcome, current, root, height, prev_height =
  decide_link(KEYS[1], KEYS[2], ARGV[2], ARGV[3], tonumber(ARGV[1]), pending)
if outcome == 'applied' then
  stage_link(KEYS[1], KEYS[2], ARGV[2], ARGV[3], root, height, prev_height, pending)
  write_staged(pending)
end
return {outcome, current or false}
