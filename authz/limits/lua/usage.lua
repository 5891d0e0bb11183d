#!lua
--[[
What one hit would find in its log now, counting nothing: an operator's look at a budget.
The log is read as hit.lua reads it (see there) but never written.

KEYS[1]  the counter's key.
ARGV     now in us ("" for the server's clock), limit, window (us), cost.

Returns {used, retry}: retry in us, 0 when the cost fits now, -1 when it never can.
]]

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local limit, window, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used, base = 0, 0
if #entries > 0 then
  -- The base is the newest entry that has left the window, else the first one.
  base = tonumber(entries[2])
  for i = 3, #entries, 2 do
    if tonumber(entries[i]) > now - window then
      break
    end
    base = tonumber(entries[i + 1])
  end
  used = tonumber(entries[#entries]) - base
end
if cost > limit then
  return {used, -1}
end
if used + cost <= limit then
  return {used, 0}
end
local need = used + cost - limit
for i = 3, #entries, 2 do
  if tonumber(entries[i + 1]) >= base + need then
    return {used, tonumber(entries[i]) + window - now}
  end
end
return {used, -1}
