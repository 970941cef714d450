-- KEYS: alias hash, its heights hash, the scratch hash holding freshly measured heights
-- ARGV: how many links the alias hash had when it was read
-- Swaps the measured heights in only if the map still has that many links (links are only
-- ever added, so the same count means the same map); atomic, so no link slips between the
-- check and the swap. Returns 1 when swapped, 0 when the map changed meanwhile.
if redis.call('HLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('HSET', KEYS[3], '', ARGV[1])
redis.call('RENAME', KEYS[3], KEYS[2])
return 1
