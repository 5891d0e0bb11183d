#!lua
--[[
Counts requests' hits, each request all or nothing: every hit of it fits and all are
counted, or none is. Requests are counted one after the other, as if sent one by one; the
client batches the requests made at the same moment into one call to save round trips.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica
(READONLY) or over maxmemory (OOM), so a refusal never leaves a request half counted.

KEYS     the keys of every hit of every request, in order. A key is a sorted set of entries
         whose member is the entry's stamp (us) and whose score is the running total of
         units counted up to and including it. The first entry is the base: the newest entry
         that has left the window (or the marker of a new log), so the units in the window
         are the last score minus the base score.
ARGV     the number of requests; then for each: now in us ("" for the server's clock, which
         production always uses), its number of hits n, and n times: limit, window (us),
         cost, quantum (us).

Returns, per request, {allowed, used_1, retry_1, used_2, retry_2, ...}: used includes the
hit when allowed; retry is in us, 0 when the hit fits, -1 when waiting can never make it fit.
]]

local server_now
local function clock(arg)
  local now = tonumber(arg)
  if now then
    return now
  end
  if not server_now then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return server_now
end

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
local function wait(key, log, need, window, now)
  local entry = redis.call('ZRANGE', key, log.base + need, '+inf', 'BYSCORE', 'LIMIT', 0, 1)
  return tonumber(entry[1]) + window - now
end

-- A hit is stamped at the end of its quantum, so entries are at least a quantum apart and a
-- log holds at most window / quantum + 2 of them; a unit leaves the window up to one
-- quantum late, never early.
local function record(key, log, window, cost, quantum, now)
  local stamp = math.max(math.ceil(now / quantum) * quantum, log.stamp)
  if log.new then
    redis.call('ZADD', key, 0, 'base')
    log.new = false
  end
  log.top, log.stamp = log.top + cost, stamp
  redis.call('ZADD', key, log.top, string.format('%d', stamp))
  redis.call('PEXPIRE', key, math.ceil((stamp + window - now) / 1000))
end

-- One request: n hits, keys from KEYS[k + 1], arguments from ARGV[a + 1].
local function count(now, n, k, a)
  -- A key may appear twice in one request (a batch calling one tool twice): later hits see
  -- the units of earlier ones as already counted.
  local logs, ahead, out = {}, {}, {1}
  for i = 1, n do
    local key, j = KEYS[k + i], a + 4 * (i - 1)
    local limit, window, cost = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    logs[key] = logs[key] or read(key, now - window)
    local log, pending = logs[key], ahead[key] or 0
    local used, retry = log.top - log.base + pending, 0
    if cost + pending > limit then
      retry = -1
    elseif used + cost > limit then
      retry = wait(key, log, used + cost - limit, window, now)
    end
    if retry ~= 0 then
      out[1] = 0
    end
    ahead[key] = pending + cost
    out[2 * i], out[2 * i + 1] = used, retry
  end
  if out[1] == 1 then
    for i = 1, n do
      local key, j = KEYS[k + i], a + 4 * (i - 1)
      local cost = tonumber(ARGV[j + 3])
      record(key, logs[key], tonumber(ARGV[j + 2]), cost, tonumber(ARGV[j + 4]), now)
      out[2 * i] = out[2 * i] + cost
    end
  end
  return out
end

local results, k, a = {}, 0, 2
for r = 1, tonumber(ARGV[1]) do
  local now, n = clock(ARGV[a]), tonumber(ARGV[a + 1])
  results[r] = count(now, n, k, a + 1)
  k, a = k + n, a + 2 + 4 * n
end
return results
