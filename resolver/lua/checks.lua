-- Checks every script makes before its first write (Redis keeps what a script wrote before
-- it failed). Prepended to link_rules.lua, so to every script that uses the rules, and to
-- the dead-letter re-drive.

-- globals as locals for every script this is prepended to: a local costs no table lookup
local redis, KEYS, ARGV, string, math = redis, KEYS, ARGV, string, math
local tonumber, tostring, unpack, pairs, ipairs = tonumber, tostring, unpack, pairs, ipairs

local LAST_ID = '18446744073709551615-18446744073709551615'

-- nil, or why `key` cannot be used as a `want` ('stream', 'hash', 'zset'; absent is fine);
-- a stream the script adds to (`adds`) must also have an id left to hand out
local function key_error(key, want, adds)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return nil end
  if kind ~= want then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. kind .. ', not a ' .. want
  end
  if want == 'stream' and adds then
    local info = redis.call('XINFO', 'STREAM', key)
    for f = 1, #info, 2 do
      if info[f] == 'last-generated-id' and info[f + 1] == LAST_ID then
        return 'ERR ' .. key .. ' has handed out the last possible id'
      end
    end
  end
end
