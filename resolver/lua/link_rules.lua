-- Link rules shared by link.lua and the worker's commit.lua (prepended to both).
-- The alias map must stay a forest: the first link of an id stands, and a link that
-- would make an id reachable from itself is refused. `pending` holds links decided
-- earlier in the same script call so that a batch sees its own links in order.

local function link_target(key, id, pending)
  local staged = pending[key]
  if staged then
    local v = staged[id]
    if v then return v end
  end
  local v = redis.call('HGET', key, id)
  if v then return v end
  return nil
end

-- Returns 'applied' | 'noop' | 'conflict' | 'cycle', and the existing target on conflict.
local function decide_link(key, prev, user, max_depth, pending)
  if prev == user then return 'noop' end
  local current = link_target(key, prev, pending)
  if current then
    if current == user then return 'noop' end
    return 'conflict', current
  end
  local node = user
  for _ = 1, max_depth do
    node = link_target(key, node, pending)
    if not node then return 'applied' end
    if node == prev then return 'cycle' end
  end
  -- deeper than the cap (or an existing foreign cycle): refuse rather than risk one
  return 'cycle'
end

local function stage_link(key, prev, user, pending)
  local staged = pending[key]
  if not staged then
    staged = {}
    pending[key] = staged
  end
  staged[prev] = user
end
