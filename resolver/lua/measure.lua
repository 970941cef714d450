-- KEYS: alias hash, its heights hash, the scratch hash holding freshly measured heights, its
--   sizes hash, the scratch hash holding freshly measured sizes
-- ARGV: how many links the alias hash had when it was read
-- Swaps the measured heights and sizes in only if the map still has that many links (links
-- are only added outside unlink and forget, which need an operator; the same count means
-- the same map); atomic, so no link slips between the check and the swap. The tenant's own
-- size cap (the sizes hash's field '') is kept. Returns 1 when swapped, 0 when the map
-- changed meanwhile.
if redis.call('HLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[3])
  redis.call('DEL', KEYS[5])
  return 0
end
redis.call('HSET', KEYS[3], '', ARGV[1])
redis.call('RENAME', KEYS[3], KEYS[2])
local cap = redis.call('HGET', KEYS[4], '')
if cap then redis.call('HSET', KEYS[5], '', cap) end
if redis.call('TYPE', KEYS[5])['ok'] == 'hash' then
  redis.call('RENAME', KEYS[5], KEYS[4])
else
  redis.call('DEL', KEYS[4])
end
return 1
