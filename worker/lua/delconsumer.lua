-- KEYS[1] stream; ARGV: group, consumer, min idle ms.
-- Removes an idle consumer only if nothing is pending for it, in one atomic step:
-- XGROUP DELCONSUMER silently drops pending entries, so check and delete must not race.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, idle
  for j = 1, #consumer, 2 do
    if consumer[j] == 'name' then name = consumer[j + 1] end
    if consumer[j] == 'idle' then idle = consumer[j + 1] end
  end
  if name == ARGV[2] then
    if idle < tonumber(ARGV[3]) then return 0 end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
