-- Commits one batch atomically and exactly once.
--
-- 0. Check each tenant's generation (bumped by every unlink and forget) against the one the
--    worker's cache was built under: a mismatch writes nothing and returns the current ones,
--    so the worker drops that tenant's cache and plans again (removed links are never served).
-- 1. Check every root the worker took from its cache (HMGET per alias hash); a root that
--    another replica has linked since is followed here, not refused.
-- 2. Walk the batch in stream order without writing: decide each identify's link under the
--    forest rules (seeing the batch's earlier links), compare with what the worker predicted,
--    and resolve the events the worker could not resolve from its cache.
-- 3. If any assumption was stale, return it and write nothing. Otherwise write the links,
--    each with its provenance and its change-feed entry (a link is written at most once: the
--    first link of an id stands, so a redelivered identify is a noop and adds nothing), then
--    XACK every entry and emit (or log a refused identify) only where XACK returned 1, so a
--    redelivered or doubly claimed entry is never emitted or logged twice. A link the size cap
--    or the rate rule holds ('quarantined') is written to the tenant's quarantine (HSETNX: the
--    first hold of an id stands) with a `quarantine` feed entry and its reason's tally in the
--    protection hash, likewise only where XACK returned 1.
--
-- KEYS: the FIXED_KEYS streams (input, output, dead-letter, change feed), then
--   KEYS_PER_TENANT keys per tenant n: its alias hash, heights hash, provenance hash,
--   refusal log, removals hash, children index, sizes hash, quarantine hash and protection
--   hash (both constants are prepended by worker/scripts.py; see alias_key below).
-- ARGV: group, output maxlen, dead maxlen, max chain depth, change feed maxlen, refusal log
--   maxlen, consumer, alias key prefix, forgotten events ('drop' | 'pass'), the default
--   max component size (a tenant's own, in its sizes hash, wins), the default max links per
--   root per hour (0: no rate rule; a tenant's own, in its protection hash, wins), n_verify,
--   n_entries, then
--   one generation per tenant n, in order ('0' for a tenant that never had a removal)
--   n_verify groups: (tenant n, count, ids...)   roots the worker relied on
--   n_entries x (id, action, n, the entry's n fields, action arguments):
--     'e'  + root tenant: emit with resolved_user_id = root (followed first if it moved)
--     'd'  + error error_code: dead-letter
--     'r'  + tenant user: emit after resolving user here
--     'a'  (n = 0) ack only
--     'E'  + root tenant user hmac: as 'e', unless user's tombstone HMAC is tombstoned
--     'R'  + tenant user hmac: as 'r', the same
--     'l'  (n = 0) + tenant prev user expect hprev huser: link ('1' applies, '0' not, '?'
--          unknown); hprev, huser: the ids' tombstone HMACs ('' for a tenant without any)
--     'L'  + tenant prev user expect hprev huser: link, then emit after resolving user here
--     'p'  (n = 0) + tenant prev user: ack only, log a placeholder refusal
--     'P'  + tenant prev user: log a placeholder refusal, emit after resolving user here
--   The worker sends each payload back with its verdict (cheaper for Redis than re-reading
--   it): emitted and dead-lettered entries are written straight from ARGV.
-- Returns {2, {tenant n, generation, tombstones}...} when a generation was stale,
-- {0, {link ordinal, current, outcome}...} when a predicted link outcome was stale, else
-- {1, emitted, dead_lettered, {duplicate entry ordinals}, {outcome per link},
--  {root, depth per resolved entry}, {tenant n, id, target or false per link read},
--  {ordinals of entries not emitted because their id is forgotten}}.
--
-- Redis does not roll back a script that fails at run time: whatever it wrote stays. So
-- every error a write could raise is ruled out before the first write (the HSETs), and a
-- batch that cannot be committed whole is refused whole, with an error and nothing written:
--   streams   TYPE is stream or none (else WRONGTYPE), and XADD '*' still has an id to give
--   maxlens   digits only, for XTRIM
--   feed, refusal logs, provenance   streams as above, hashes TYPE hash or none, checked
--             for the keys this batch writes once its outcomes are known
--   entries   an even number of field values, at most MAX_VALUES (XADD's arguments pass
--             through Lua's stack: unpack() fails past 8,000 values)
--   alias     each hash is read (HGET) before any link to it is written (WRONGTYPE early)
--   protection  read (HMGET, guard_of) with the tenant's cap, before any write to it
--   OOM       Redis refuses only a script's first write, never a later one
--   ids       as Redis returned them (XREADGROUP, XAUTOCLAIM), so XACK parses them: a
--             per-id check here would cost about 3% of the script's time, for ids no
--             entry's content can choose

local input, output, dead, changes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, out_maxlen, dead_maxlen = ARGV[1], ARGV[2], ARGV[3]
local max_depth = tonumber(ARGV[4])
local changes_maxlen, refusals_maxlen, consumer, prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local drop_forgotten = ARGV[9] == 'drop'
local default_size, default_rate = ARGV[10], ARGV[11]
local n_verify, n_entries = tonumber(ARGV[12]), tonumber(ARGV[13])
local n_tenants = (#KEYS - FIXED_KEYS) / KEYS_PER_TENANT
local i = 14 + n_tenants
local CHUNK = 4000  -- stays well below Lua's unpack() limit
local MAX_VALUES = 4000  -- 2,000 field pairs per entry; the worker's STITCH_MAX_FIELDS <= 1,000
for k = 1, 3 do  -- the change feed is checked below, only when the batch links something
  local err = key_error(KEYS[k], 'stream', k > 1)
  if err then return redis.error_reply(err) end
end
for _, maxlen in ipairs({out_maxlen, dead_maxlen, changes_maxlen, refusals_maxlen}) do
  if not string.find(maxlen, '^%d+$') then
    return redis.error_reply('ERR maxlen arguments must be digits')
  end
end

-- ARGV's counts and tenant ordinals, each string parsed once per call: tonumber() parses a
-- string twice (lua_isnumber, then lua_tonumber), which was ~3% of the script's time
local parsed = {}
local function number(s)
  local v = parsed[s]
  if v == nil then
    v = tonumber(s)
    parsed[s] = v
  end
  return v
end

-- tenant n's keys, in the order the planner sends them (worker/scripts.py, KEYS_PER_TENANT)
local function tenant_key(slot)
  return function(n) return KEYS[FIXED_KEYS + KEYS_PER_TENANT * (number(n) - 1) + slot] end
end
local alias_key, heights_key = tenant_key(1), tenant_key(2)
local provenance_key, refusals_key = tenant_key(3), tenant_key(4)
local removals_key, children_key = tenant_key(5), tenant_key(6)
local sizes_key, quarantine_key, protection_key = tenant_key(7), tenant_key(8), tenant_key(9)
local caps, guards = {}, {}  -- tenant n -> its max component size, its protection state
local function cap_of(n)
  local cap = caps[n]
  if not cap then  -- read once per call, with the protection state
    cap = size_cap(sizes_key(n), default_size)
    caps[n] = cap
    guards[n] = guard_of(protection_key(n), default_rate)
  end
  return cap
end

-- tenant n -> its removals hash, for tenants that ever had a removal (the rest pay nothing)
local guarded, stale_generations = {}, {}
for n = 1, n_tenants do
  local meta = redis.call('HMGET', removals_key(n), '', '#')
  local generation = meta[1] or '0'
  if generation ~= ARGV[13 + n] then
    stale_generations[#stale_generations + 1] = {n, generation, meta[2] or '0'}
  end
  if generation ~= '0' then guarded[tostring(n)] = removals_key(n) end
end
if #stale_generations > 0 then
  return {2, stale_generations}
end

local function forgotten(index, hmac)
  local rkey = guarded[index]
  return rkey ~= nil and hmac ~= '' and redis.call('HEXISTS', rkey, 't' .. hmac) == 1
end

local moved = {}  -- key index -> set of roots that are linked now
for _ = 1, n_verify do
  local index, count = ARGV[i], tonumber(ARGV[i + 1])
  local key = alias_key(index)
  for first = i + 2, i + 1 + count, CHUNK do
    local last = math.min(first + CHUNK - 1, i + 1 + count)
    local current = redis.call('HMGET', key, unpack(ARGV, first, last))
    for k = 1, #current do
      if current[k] then
        moved[index] = moved[index] or {}
        moved[index][ARGV[first + k - 1]] = true
      end
    end
  end
  i = i + 2 + count
end

local EXTRA = {e = 2, d = 2, a = 0, r = 2, l = 6, L = 6, p = 3, P = 3, E = 4, R = 3}
local REFUSED = {conflict = true, cycle = true, too_deep = true, blocked = true}
local pending, learned, dropped = {}, {}, {}
local applied = {}  -- {tenant n, prev, user, root after the link, source id} per link written
local refusals = {}  -- entry ordinal -> {tenant n, outcome, prev, user}: logged if acked
local held, n_held = {}, 0  -- entry ordinal -> {tenant n, prev, user, root, size, reason}

-- Resolve to the true end of the chain, with the batch's earlier links; no depth cap, so the
-- answer never depends on what the worker's cache had compressed. A foreign cycle resolves
-- to its smallest member (byte order, like Python's min; Lua's `<` would follow the locale).
local function bytes_less(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function resolve(index, key, id)
  local node, seen, path = id, {}, {}
  while not seen[node] do
    path[#path + 1] = node
    seen[node] = #path
    local target = link_target(key, node, pending)
    learned[#learned + 1] = index
    learned[#learned + 1] = node
    learned[#learned + 1] = target or false
    if not target then return node, #path - 1 end
    node = target
  end
  local smallest = node
  for k = seen[node], #path do
    if bytes_less(path[k], smallest) then smallest = path[k] end
  end
  return smallest, -1
end

local start = i
local outcomes, stale_links, resolved, roots = {}, {}, {}, {}
for n = 1, n_entries do
  local action, n_fields = ARGV[i + 1], parsed[ARGV[i + 2]] or number(ARGV[i + 2])  -- no call
  if n_fields % 2 == 1 or n_fields > MAX_VALUES then
    return redis.error_reply('ERR entry ' .. ARGV[i] .. ' has ' .. n_fields ..
                             ' field values: it must be even and at most ' .. MAX_VALUES)
  end
  local a = i + 3 + n_fields  -- first action argument
  if action == 'l' or action == 'L' then
    local index = ARGV[a]
    local key = alias_key(index)
    local prev, user, expect = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local hkey = heights_key(index)
    local skey = sizes_key(index)
    local cap = cap_of(index)
    local outcome, current, root, height, prev_height, size, extra =
      decide_link(key, hkey, prev, user, max_depth, pending, guarded[index], ARGV[a + 4],
                  ARGV[a + 5], skey, cap, guards[index])
    if outcome == 'applied' then
      stage_link(key, hkey, children_key(index), prev, user, root, height, prev_height, pending,
                 skey, size, guards[index], extra)
      applied[#applied + 1] = {index, prev, user, root, ARGV[i]}
    elseif outcome == 'quarantined' then
      held[n] = {index, prev, user, root, size, extra}
      n_held = n_held + 1
    elseif REFUSED[outcome] then
      refusals[n] = {index, outcome, prev, user}
    end
    if expect ~= '?' and (outcome == 'applied') ~= (expect == '1') then
      stale_links[#stale_links + 1] = {#outcomes + 1, current or false, outcome}
    end
    outcomes[#outcomes + 1] = outcome
    if action == 'L' and outcome == 'forgotten' and drop_forgotten then
      dropped[#dropped + 1] = n
    elseif action == 'L' then
      local root, depth = resolve(index, key, user)
      roots[n] = root
      resolved[#resolved + 1] = root
      resolved[#resolved + 1] = depth
    end
  elseif (action == 'E' and forgotten(ARGV[a + 1], ARGV[a + 3]))
      or (action == 'R' and forgotten(ARGV[a], ARGV[a + 2])) then
    if drop_forgotten then
      dropped[#dropped + 1] = n
    elseif action == 'E' then  -- pass: resolved_user_id = user_id
      roots[n] = ARGV[a + 2]
    else
      roots[n] = ARGV[a + 1]
    end
  elseif action == 'e' or action == 'E' then
    local root, index = ARGV[a], ARGV[a + 1]
    if moved[index] and moved[index][root] then
      root = resolve(index, alias_key(index), root)
    end
    roots[n] = root
  elseif action == 'r' or action == 'R' then
    local root, depth = resolve(ARGV[a], alias_key(ARGV[a]), ARGV[a + 1])
    roots[n] = root
    resolved[#resolved + 1] = root
    resolved[#resolved + 1] = depth
  elseif action == 'p' or action == 'P' then
    local index, prev, user = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    refusals[n] = {index, 'placeholder', prev, user}
    if action == 'P' then
      local root, depth = resolve(index, alias_key(index), user)
      roots[n] = root
      resolved[#resolved + 1] = root
      resolved[#resolved + 1] = depth
    end
  end
  i = a + EXTRA[action]
end

if #stale_links > 0 then
  return {0, stale_links}
end

-- the keys only this batch's outcomes name: checked now, still before the first write
local checked = {}
local function check(key, kind)
  if checked[key] then return end
  checked[key] = true
  return key_error(key, kind, true)
end
if #applied > 0 or n_held > 0 then
  local err = check(changes, 'stream')
  if err then return redis.error_reply(err) end
end
for _, hold in pairs(held) do
  local err = check(quarantine_key(hold[1]), 'hash')
  if err then return redis.error_reply(err) end
end
for _, link in ipairs(applied) do
  local err = check(provenance_key(link[1]), 'hash') or check(children_key(link[1]), 'zset')
  if err then return redis.error_reply(err) end
end
for _, refusal in pairs(refusals) do
  local err = check(refusals_key(refusal[1]), 'stream')
  if err then return redis.error_reply(err) end
end

local stamp  -- ' <applied ms> <consumer>'; TIME before the first write (an ACL refuses it)
if #applied > 0 or n_held > 0 then
  stamp = ' ' .. now_ms() .. ' ' .. consumer
end

write_staged(pending)

if #applied > 0 then
  for _, link in ipairs(applied) do
    local index, prev, user, root, source = link[1], link[2], link[3], link[4], link[5]
    redis.call('HSET', provenance_key(index), prev, source .. stamp)
    redis.call('XADD', changes, '*', 'tenant', string.sub(alias_key(index), #prefix + 1),
               'op', 'link', 'previous_user_id', prev, 'user_id', user, 'root', root,
               'source_id', source)
  end
end

-- XADD the entry's own fields (ARGV[first .. first + n - 1]) plus the pairs in `...`.
-- The usual shapes (tenant + event [+ domain]) are spelled out: no table to build.
local function xadd(stream, first, n, ...)
  local a, f = ARGV, first
  if n == 6 then
    return redis.call('XADD', stream, '*', a[f], a[f + 1], a[f + 2], a[f + 3], a[f + 4], a[f + 5], ...)
  elseif n == 4 then
    return redis.call('XADD', stream, '*', a[f], a[f + 1], a[f + 2], a[f + 3], ...)
  end
  local args = {stream, '*'}
  for k = f, f + n - 1 do args[#args + 1] = a[k] end
  for _, v in ipairs({...}) do args[#args + 1] = v end
  return redis.call('XADD', unpack(args))
end

local emitted, dead_lettered, duplicates, logged = 0, 0, {}, {}
local fed = #applied > 0
i = start
for n = 1, n_entries do
  local id, action, n_fields = ARGV[i], ARGV[i + 1], parsed[ARGV[i + 2]]  -- (parsed above)
  local first, last = i + 3, i + 2 + n_fields
  if redis.call('XACK', input, group, id) == 1 then
    local root = roots[n]
    if root then
      xadd(output, first, n_fields, 'resolved_user_id', root, 'source_id', id)
      emitted = emitted + 1
    elseif action == 'd' then
      xadd(dead, first, n_fields, 'error', ARGV[last + 1], 'error_code', ARGV[last + 2],
           'source_id', id)
      dead_lettered = dead_lettered + 1
    end
    local refusal = refusals[n]
    if refusal then
      local log = refusals_key(refusal[1])
      redis.call('XADD', log, '*', 'outcome', refusal[2], 'source_id', id,
                 'previous_user_id', refusal[3], 'user_id', refusal[4])
      logged[log] = true
    end
    local hold = held[n]
    -- ' <ms> <consumer>' -> ' <ms>'; the first hold of prev stands (redelivered: no-op)
    if hold and redis.call('HSETNX', quarantine_key(hold[1]), hold[2], hold[3] .. ' ' .. id ..
                           string.match(stamp, '^ %d+') .. ' ' .. hold[6]) == 1 then
      redis.call('HSET', protection_key(hold[1]), held_one_more(guards[hold[1]], hold[6]))
      redis.call('XADD', changes, '*', 'tenant', string.sub(alias_key(hold[1]), #prefix + 1),
                 'op', 'quarantine', 'previous_user_id', hold[2], 'user_id', hold[3],
                 'root', hold[4], 'source_id', id, 'reason', hold[6], 'size', hold[5])
      fed = true
    end
  else
    duplicates[#duplicates + 1] = n
  end
  i = last + 1 + EXTRA[action]
end

-- trimmed once per batch rather than on every XADD: the same bound, fewer arguments
if emitted > 0 and out_maxlen ~= '0' then
  redis.call('XTRIM', output, 'MAXLEN', '~', out_maxlen)
end
if dead_lettered > 0 and dead_maxlen ~= '0' then
  redis.call('XTRIM', dead, 'MAXLEN', '~', dead_maxlen)
end
if fed and changes_maxlen ~= '0' then
  redis.call('XTRIM', changes, 'MAXLEN', '~', changes_maxlen)
end
if refusals_maxlen ~= '0' then
  for log in pairs(logged) do
    redis.call('XTRIM', log, 'MAXLEN', '~', refusals_maxlen)
  end
end

return {1, emitted, dead_lettered, duplicates, outcomes, resolved, learned, dropped}
