-- Link rules shared by link.lua and the worker's commit.lua (prepended to both).
-- The alias map must stay a forest of bounded depth: the first link of an id stands, a link
-- that would make an id reachable from itself is refused, and so is a link that would make
-- any chain longer than max_depth links. `pending` holds what was decided earlier in the
-- same script call (links, and heights; false = deleted) so a batch sees its own links.
--
-- Beside each alias hash lives its heights hash (the alias key + ':heights'): for every
-- root with incoming links, the height of its tree (the longest chain ending there), and
-- under the field '' (a placeholder, never an id) how many links it accounts for. Both are
-- kept here, atomically with every link; resolver/heights.py measures a map whose link
-- count does not match (one written by another program or an older version).
--
-- Beside it too: the children index (alias key + ':children', a sorted set, all scores 0,
-- one member child_member(user, prev) per link, so ZRANGEBYLEX lists an id's children) that
-- unlink and forget walk, and the removals hash (alias key + ':removals': the generation,
-- blocks and tombstones; see resolver/removals.py) the rules consult for tenants that ever
-- had a removal.
--
-- And the sizes hash (alias key + ':sizes'): for every root with incoming links, how many ids
-- its component holds (the root included; a root without links holds 1), and under the field
-- '' the tenant's own cap (STITCH_MAX_COMPONENT_SIZE overridden by `quarantine set-limit`).
-- A link adds prev's component to the target root's: one HGET per side, whatever the size.
-- A link that would grow a component past the cap is 'quarantined' (held, not written here:
-- the caller records it in the quarantine hash, alias key + ':quarantine').
--
-- And the protection hash (alias key + ':protection'), read once per call with one HMGET
-- (guard_of): the tenant's own rate limit ('max_links_per_hour', set-limit), the largest
-- component a link has made ('largest'; unlink and forget do not lower it: an upper bound)
-- and how many links are held per reason ('held:size', 'held:rate'; written when a hold is
-- written, approved or rejected), for the metrics to read without scanning; and per root
-- with incoming links the rate rule's window under '>' .. root (no setting's name starts
-- with '>'): "start_ms count previous" (see rate_window).

local function child_member(user, prev)
  return #user .. ':' .. user .. prev
end

local function block_field(prev, user)
  return 'b' .. #prev .. ':' .. prev .. user
end

-- 'forgotten' | 'blocked' | nil; rkey is nil for a tenant that never had a removal (no cost)
local function removed_by(rkey, prev, user, hprev, huser)
  if not rkey then return nil end
  if hprev ~= '' and redis.call('HEXISTS', rkey, 't' .. hprev) == 1 then return 'forgotten' end
  if huser ~= '' and redis.call('HEXISTS', rkey, 't' .. huser) == 1 then return 'forgotten' end
  if redis.call('HEXISTS', rkey, block_field(prev, user)) == 1 then return 'blocked' end
  return nil
end

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

-- Two roots' numbers in a heights or sizes hash (`absent` for none): what the call staged
-- first (false: deleted), the rest with one HMGET. One read per hash and link, not two: on
-- the bench's mix that is 80 fewer Redis calls per 1k events.
local function numbers_of(key, a, b, pending, absent)
  local staged, va, vb = pending[key], nil, nil
  if staged then va, vb = staged[a], staged[b] end
  if va == nil and vb == nil then
    local v = redis.call('HMGET', key, a, b)
    return tonumber(v[1]) or absent, tonumber(v[2]) or absent
  end
  if va == nil then va = tonumber(redis.call('HGET', key, a)) end
  if vb == nil then vb = tonumber(redis.call('HGET', key, b)) end
  return va or absent, vb or absent
end

-- the tenant's cap: its override in the sizes hash, else the caller's default
local function size_cap(skey, default)
  return tonumber(redis.call('HGET', skey, '')) or tonumber(default)
end

-- The rate rule's clock is Redis's TIME, read once per call (memoized: one read per script)
-- and before the first write. Not the caller's clock: every replica, the library and import
-- then count one root's links on one clock (workers' clocks drift apart), and Redis (>= 7)
-- replicates a script by its effects, so replicas and the AOF replay the counters written,
-- never re-judge them: replay-safe. Deterministic given the stored window and TIME; tests
-- control time by writing the window's start, not the clock.
local clock = nil
local function now_ms()
  if not clock then
    local now = redis.call('TIME')
    clock = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  end
  return clock
end

local RATE_WINDOW_MS = 3600000

-- The tenant's protection state (see the header), or nil for a caller without one
local function guard_of(gkey, default_limit)
  local v = redis.call('HMGET', gkey, 'max_links_per_hour', 'largest', 'held:size', 'held:rate')
  return {key = gkey, limit = tonumber(v[1]) or tonumber(default_limit) or 0,
          largest = tonumber(v[2]) or 0,
          held = {size = tonumber(v[3]) or 0, rate = tonumber(v[4]) or 0}}
end

-- A root's rate window as of now: two fixed hour-long windows, the first starting at the
-- root's second link, each next one an hour after the last. The hour before now holds
-- about `count + previous * (the part of the previous window still in that hour)` links
-- (the usual sliding-window estimate: exact when the previous window's links were evenly
-- spread). A root's first link is not counted when it is made (a root without links cannot
-- have taken too many: no read, no write for most links); a root with links but no window
-- counts it as made now, so the rule never lets more links through, and holds one link
-- early at most, in a root's first window. A stored start later than now (a clock set
-- back) keeps its window: a window never rewinds. An unreadable value counts as missing.
local function rate_window(gkey, root, pending, now)
  local field, value = '>' .. root, nil
  local staged = pending[gkey]
  if staged and staged[field] ~= nil then value = staged[field] end
  if value == nil then value = redis.call('HGET', gkey, field) end
  local start, count, previous = string.match(value or '', '^(%d+) (%d+) (%d+)$')
  start, count, previous = tonumber(start), tonumber(count), tonumber(previous)
  if not start then return now, 1, 0 end  -- the root's first link, made before its window
  if now >= start + 2 * RATE_WINDOW_MS then return now, 0, 0 end
  if now >= start + RATE_WINDOW_MS then return start + RATE_WINDOW_MS, 0, count end
  return start, count, previous
end

-- nil when the link would make more than guard.limit links into root within the hour, else
-- root's window with this link counted
local function counted_link(guard, root, pending)
  local now = tonumber(now_ms())
  local start, count, previous = rate_window(guard.key, root, pending, now)
  local elapsed = math.max(now - start, 0)
  local estimate = count + math.floor(previous * (RATE_WINDOW_MS - elapsed) / RATE_WINDOW_MS)
  if estimate >= guard.limit then return nil end
  return string.format('%.0f', start) .. ' ' .. (count + 1) .. ' ' .. previous
end

-- One more link held for reason: the tally's field and new count, for the caller's HSET
-- (a count read before the first write; never HINCRBY, see write_staged)
local function held_one_more(guard, reason)
  local n = (guard.held[reason] or 0) + 1
  guard.held[reason] = n
  return 'held:' .. reason, n
end

-- Returns 'applied' | 'noop' | 'forgotten' | 'blocked' | 'conflict' | 'cycle' | 'too_deep' |
-- 'quarantined', then the existing target on conflict; on 'applied' (and 'quarantined') also
-- user's root, the root's new height (false: unchanged), prev's height and the component's
-- new size, then for 'quarantined' the reason ('size' | 'rate'), for 'applied' the root's
-- rate window to stage (nil: none counted). rkey, hprev, huser: see removed_by. skey: the
-- sizes hash; max_size: the cap (nil: none, as for an operator's approve). guard: the
-- tenant's protection state (guard_of; nil: none), whose limit (0: off) the rate rule
-- applies after the size rule.
local function decide_link(key, hkey, prev, user, max_depth, pending, rkey, hprev, huser, skey,
                           max_size, guard)
  if prev == user then return 'noop' end
  local removed = removed_by(rkey, prev, user, hprev, huser)
  if removed then return removed end
  local current = link_target(key, prev, pending)
  if current then
    if current == user then return 'noop' end
    return 'conflict', current
  end
  -- prev is a root: walk user to its root, counting links; prev on the way means a cycle
  local node, depth, seen = user, 0, nil
  while true do
    local nxt = link_target(key, node, pending)
    if not nxt then break end
    if nxt == prev then return 'cycle' end
    depth = depth + 1
    if depth > max_depth then  -- only data written by someone else gets here: watch for loops
      seen = seen or {}
      if seen[nxt] then return 'cycle' end  -- user leads into a foreign cycle
      seen[nxt] = true
    end
    node = nxt
  end
  -- prev's deepest descendant ends up height(prev) + 1 + depth links above the new root
  local prev_height, node_height = numbers_of(hkey, prev, node, pending, 0)
  local height = prev_height + 1 + depth
  if height > max_depth then return 'too_deep' end
  if node_height >= height then height = false end
  local node_size, prev_size = numbers_of(skey, node, prev, pending, 1)
  local size = node_size + prev_size
  if max_size and size > max_size then
    return 'quarantined', nil, node, height, prev_height, size, 'size'
  end
  local window = nil
  if guard and guard.limit > 0 and node_size > 1 then  -- see rate_window: a root's first link
    window = counted_link(guard, node, pending)
    if not window then return 'quarantined', nil, node, height, prev_height, size, 'rate' end
  end
  return 'applied', nil, node, height, prev_height, size, window
end

local COUNTS = {}  -- tables as keys: no key name can collide with them
local CHILDREN = {}

local function stage(pending, key, field, value)
  local staged = pending[key]
  if not staged then
    staged = {}
    pending[key] = staged
  end
  staged[field] = value
end

-- guard (nil: none) and window: as decide_link's; the largest size is staged only when new
local function stage_link(key, hkey, ckey, prev, user, root, height, prev_height, pending,
                          skey, size, guard, window)
  stage(pending, key, prev, user)
  stage(pending, skey, root, size)
  if guard then
    if window then stage(pending, guard.key, '>' .. root, window) end
    if size > guard.largest then
      guard.largest = size
      stage(pending, guard.key, 'largest', size)
    end
    if prev_height > 0 then stage(pending, guard.key, '>' .. prev, false) end
  end
  local children = pending[CHILDREN]
  if not children then
    children = {}
    pending[CHILDREN] = children
  end
  children[#children + 1] = ckey
  children[#children + 1] = child_member(user, prev)
  if height then stage(pending, hkey, root, height) end
  if prev_height > 0 then  -- no longer a root (a root without links has neither field)
    stage(pending, hkey, prev, false)
    stage(pending, skey, prev, false)
  end
  local counts = pending[COUNTS]
  if not counts then
    counts = {}
    pending[COUNTS] = counts
  end
  counts[hkey] = (counts[hkey] or 0) + 1
end

local function write_staged(pending)
  local counts, children = pending[COUNTS], pending[CHILDREN]
  pending[COUNTS], pending[CHILDREN] = nil, nil
  for key, staged in pairs(pending) do
    for field, value in pairs(staged) do
      if value then
        redis.call('HSET', key, field, value)
      else
        redis.call('HDEL', key, field)
      end
    end
  end
  if children then
    for k = 1, #children, 2 do
      redis.call('ZADD', children[k], 0, children[k + 1])
    end
  end
  if counts then
    -- HSET of a sum read now, not HINCRBY: HINCRBY fails (after the writes above) on a count
    -- someone else overwrote with a non-number; such a count is re-measured at start anyway
    for hkey, n in pairs(counts) do
      redis.call('HSET', hkey, '', (tonumber(redis.call('HGET', hkey, '')) or 0) + n)
    end
  end
end
