-- Removing one link, shared by unlink.lua and audit.lua (prepended after removal_checks.lua).
-- The caller has run every check (key types, the heights count) before calling it: nothing
-- here can fail.

-- Removes prev -> target with its provenance and children-index entry, and keeps heights,
-- sizes and the heights' link count. affected, prev_height: subtree(key, ckey, prev).
-- Heights: when the children index holds every link of the map, prev's height is exact and
-- (walk_root) the old root's remaining tree is walked for its exact height and size.
-- Otherwise they stay upper bounds: the old root keeps its height, and prev gets the old
-- root's height - its depth, which bounds every chain under it. Sizes likewise: with the
-- whole index and walk_root the old root's size is exact; without the index it keeps its
-- size (an upper bound: the cap only ever holds too much, never too little); without
-- walk_root (a caller removing many links of one tree, that walks it once afterwards) it
-- loses #affected, still an upper bound. prev's component is the ids the index lists under it.
-- Returns the old root (nil when target leads into a cycle written by another program).
local function remove_link(key, hkey, pkey, ckey, skey, prev, target, affected, prev_height,
                           walk_root)
  local root, depth = root_of(key, target)
  local exact = root and indexed(key, ckey)
  local root_height = nil  -- nil: keep the old root's height as it is
  local root_size = nil  -- nil: keep the old root's size (an upper bound)
  if exact and walk_root then
    local rest
    rest, root_height = subtree(key, ckey, root, prev)
    root_size = #rest
  elseif root then
    if not exact then
      prev_height = (tonumber(redis.call('HGET', hkey, root)) or 0) - (depth + 1)
    end
    if not walk_root then
      root_size = (tonumber(redis.call('HGET', skey, root)) or 1) - #affected
    end
  end
  local count = tonumber(redis.call('HGET', hkey, ''))

  redis.call('HDEL', key, prev)
  redis.call('HDEL', pkey, prev)
  redis.call('ZREM', ckey, child_member(target, prev))
  if prev_height > 0 then redis.call('HSET', hkey, prev, prev_height) end
  if root_height == 0 then
    redis.call('HDEL', hkey, root)
  elseif root_height then
    redis.call('HSET', hkey, root, root_height)
  end
  if #affected > 1 then redis.call('HSET', skey, prev, #affected) end
  if root_size and root_size <= 1 then
    redis.call('HDEL', skey, root)
  elseif root_size then
    redis.call('HSET', skey, root, root_size)
  end
  if count and count > 0 then
    redis.call('HSET', hkey, '', count - 1)
  end
  return root
end
