#!lua
--[[
Gives back the units one decision counted, once: a marker key per decision id makes a repeat
a no-op. The logs are those of hit.lua (see there): a sorted set of entries whose member is
the stamp and whose score is the running total, the first entry being the base.

Each key's cost is taken off its newest entries: an entry holding no more units than are
still owed is removed, the one that holds more keeps its stamp and loses the rest from its
score, so the running totals stay strictly increasing. The base entry is never touched: units
that have left the window are not counted and cannot be given back.

KEYS[1]  the decision's marker; KEYS[2..]: the counter keys.
ARGV[1]  the marker's lifetime in ms (the longest window); ARGV[i + 1]: the cost of KEYS[i].

Returns 1 when the units were given back, 0 when this decision was refunded before.
]]

if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
for i = 2, #KEYS do
  local key, owed = KEYS[i], tonumber(ARGV[i])
  while owed > 0 do
    local last = redis.call('ZRANGE', key, -2, -1, 'WITHSCORES')
    if #last < 4 then
      break
    end
    local below, top = tonumber(last[2]), tonumber(last[4])
    if top - below <= owed then
      redis.call('ZREM', key, last[3])
      owed = owed - (top - below)
    else
      redis.call('ZADD', key, top - owed, last[3])
      owed = 0
    end
  end
end
return 1
