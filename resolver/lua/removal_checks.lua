-- Checks shared by unlink.lua, forget.lua, quarantine.lua and audit.lua (prepended to each,
-- after link_rules.lua):
-- everything a write could fail on is ruled out before the first write.

-- nil, or why a counter field cannot be incremented (HINCRBY fails on a non-integer)
local function not_a_count(key, field)
  local v = redis.call('HGET', key, field)
  if v and not string.find(v, '^%d+$') then
    return 'ERR ' .. key .. ' field "' .. field .. '" holds ' .. v .. ', not a count'
  end
end

-- the id's root and how many links lead there (a foreign cycle: nil)
local function root_of(key, id)
  local node, depth, seen = id, 0, {}
  while true do
    local nxt = redis.call('HGET', key, node)
    if not nxt then return node, depth end
    if seen[nxt] then return nil end
    seen[nxt] = true
    node, depth = nxt, depth + 1
  end
end

-- `id` and every id whose chain passes through it (except through `skip`), from the children
-- index, breadth first, and the height of that tree; each edge is checked against the map, so
-- an index entry for a link removed meanwhile is never followed
local function subtree(key, ckey, id, skip)
  local found, seen, depth, k = {id}, {[id] = true}, {0}, 1
  local height = 0
  while k <= #found do
    local node = found[k]
    local prefix = #node .. ':' .. node
    local members = redis.call('ZRANGEBYLEX', ckey, '[' .. prefix, '[' .. prefix .. '\255')
    for _, m in ipairs(members) do
      local child = string.sub(m, #prefix + 1)
      if child ~= skip and not seen[child] and redis.call('HGET', key, child) == node then
        seen[child] = true
        found[#found + 1] = child
        depth[#found] = depth[k] + 1
        if depth[k] + 1 > height then height = depth[k] + 1 end
      end
    end
    k = k + 1
  end
  return found, height
end

-- true when the children index holds every link of the map (none written by another program)
local function indexed(key, ckey)
  return redis.call('ZCARD', ckey) == redis.call('HLEN', key)
end

-- the first of the errors given (not ipairs: it stops at the first nil, a check that passed)
local function first_error(...)
  for k = 1, select('#', ...) do
    local err = select(k, ...)
    if err then return err end
  end
end
