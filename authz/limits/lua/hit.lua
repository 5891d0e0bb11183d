#!lua
--[[
Counts one request's hits all or nothing: every hit fits and all are counted, or none is.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica
(READONLY) or over maxmemory (OOM), so a refusal never leaves half a request counted.

KEYS[i]  the log of hit i: a sorted set of entries whose member is the entry's stamp (us)
         and whose score is the running total of units counted up to and including it.
         The first entry is the base: the newest entry that has left the window (or the
         marker of a new log). Units in the window = last score - base score.
ARGV[1]  now in us, or "" to read the server's clock (production always passes "")
ARGV[2+4(i-1)..5+4(i-1)]  limit, window (us), cost, quantum (us) of hit i

Returns {allowed, used_1, retry_1, used_2, retry_2, ...}: used includes the hit when
allowed; retry is in us, 0 when the hit fits, -1 when no amount of waiting makes it fit.
]]

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now = tonumber(ARGV[1]) or server_now()

-- Entries leave the window once stamp <= now - window; only the newest of them is kept,
-- as the base. Each entry is removed once, so the loop is amortised O(1) per hit.
local function read(key, cutoff)
  while true do
    local head = redis.call('ZRANGE', key, 0, 1, 'WITHSCORES')
    if #head == 0 then
      return {new = true, base = 0, top = 0, stamp = 0}
    end
    if #head == 2 or tonumber(head[3]) > cutoff then
      local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      return {base = tonumber(head[2]), top = tonumber(last[2]), stamp = tonumber(last[1]) or 0}
    end
    redis.call('ZREMRANGEBYRANK', key, 0, 0)
  end
end

-- Time until `need` units of the log have left the window: the stamp of the entry whose
-- running total first reaches base + need, plus the window.
local function wait(key, log, need, window)
  local entry = redis.call('ZRANGE', key, log.base + need, '+inf', 'BYSCORE', 'LIMIT', 0, 1)
  return tonumber(entry[1]) + window - now
end

local function hit_args(i)
  local a = 2 + 4 * (i - 1)
  return tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
end

-- A key may appear twice in one request (a batch calling one tool twice): later hits see
-- the units of earlier ones as already counted.
local logs, ahead, out = {}, {}, {1}
for i, key in ipairs(KEYS) do
  local limit, window, cost = hit_args(i)
  logs[key] = logs[key] or read(key, now - window)
  local log, pending = logs[key], ahead[key] or 0
  local used, retry = log.top - log.base + pending, 0
  if cost + pending > limit then
    retry = -1
  elseif used + cost > limit then
    retry = wait(key, log, used + cost - limit, window)
  end
  if retry ~= 0 then
    out[1] = 0
  end
  ahead[key] = pending + cost
  out[2 * i], out[2 * i + 1] = used, retry
end

if out[1] == 0 then
  return out
end

-- A hit is stamped at the end of its quantum, so entries are at least a quantum apart and a
-- log holds at most window / quantum + 2 of them; the unit leaves the window up to one
-- quantum late, never early.
for i, key in ipairs(KEYS) do
  local _, window, cost, quantum = hit_args(i)
  local log = logs[key]
  local stamp = math.max(math.ceil(now / quantum) * quantum, log.stamp)
  if log.new then
    redis.call('ZADD', key, 0, 'base')
    log.new = false
  end
  log.top, log.stamp = log.top + cost, stamp
  redis.call('ZADD', key, log.top, string.format('%d', stamp))
  redis.call('PEXPIRE', key, math.ceil((stamp + window - now) / 1000))
  out[2 * i] = out[2 * i] + cost
end
return out
