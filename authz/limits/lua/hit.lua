#!lua
--[[
Counts requests' hits, each request all or nothing: every hit of it fits and all are
counted, or none is. Requests are counted one after the other, as if sent one by one; the
client batches the requests made at the same moment into one call to save round trips.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica
(READONLY) or over maxmemory (OOM), so a refusal never leaves a request half counted.

KEYS     per hit, two: its counter key, and the session index of its identity (for a hit
         that is not session-scoped, the counter key again, unused). A counter key is a
         sorted set of entries whose member is the entry's stamp (us) and whose score is the
         running total of units counted up to and including it. The first entry is the base:
         the newest entry that has left the window (or the marker of a new log), so the units
         in the window are the last score minus the base score. A session index is a sorted
         set of an identity's sessions scored by when their newest entry leaves its window.
ARGV     the number of requests; then for each: now in us ("" for the server's clock, which
         production always uses), its number of hits n, and n times: limit, window (us),
         cost, quantum (us), the most sessions of an identity (0: not session-scoped), the
         session id, the lease wanted (units on top of the cost, 0 for none) and its life (us),
         and the unspent units of the caller's previous lease on this key with that lease's
         stamp (0 0: none).

A lease (docs/limits.md, "Leases") is counted with the hit, at once, and stamped its life
later than the hit would be: the caller spends it for at most that long, so every unit it
spends stays counted for a whole window after it was spent. It is granted only when the
request is allowed, and only as far as the limit has room. Unspent units of the previous
lease are given back first, before the hit is judged, whatever the outcome.

Returns, per request, {allowed, used_1, retry_1, crowded_1, lease_1, stamp_1, ...}: used
includes the hit (not its lease) when allowed; retry is in us, 0 when the hit fits, -1 when
waiting can never make it fit; crowded is 1 when the hit is a new session of an identity that
holds the most live sessions (retry is then when the soonest of them goes idle): refused,
never made room for by evicting one; lease is the units granted and stamp the entry (us) that
counts them (0 0 when none).
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

-- A hit is stamped at the end of its quantum (a lease `late` = its life later), so entries
-- are at least a quantum apart and a log holds at most (window + life) / quantum + 2 of
-- them; a unit leaves the window up to one quantum late (plus a life when leased), never
-- early.
local function record(key, log, window, cost, quantum, late, now)
  local stamp = math.max(math.ceil((now + late) / quantum) * quantum, log.stamp)
  if log.new then
    redis.call('ZADD', key, 0, 'base')
    log.new = false
  end
  log.top, log.stamp = log.top + cost, stamp
  redis.call('ZADD', key, log.top, string.format('%d', stamp))
  redis.call('PEXPIRE', key, math.ceil((stamp + window - now) / 1000))
end

-- The us until a new session fits in an identity's index: 0 when `session` is one of its
-- live sessions or there is room for one more, else until the soonest live one goes idle.
local function crowding(index, session, most, now, pruned)
  if not pruned[index] then
    redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
    pruned[index] = true
  end
  if redis.call('ZSCORE', index, session) or redis.call('ZCARD', index) < most then
    return 0
  end
  local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(first[2]) - now)
end

-- The session is live until its newest entry leaves the window.
local function note_session(index, session, log, window, now)
  local idle = log.stamp + window
  redis.call('ZADD', index, 'GT', string.format('%d', idle), session)
  local ms = math.ceil((idle - now) / 1000)
  if redis.call('PTTL', index) < ms then
    redis.call('PEXPIRE', index, ms)
  end
end

-- Gives back `units` of the entry at `stamp` (a lease's unspent units), as far as it still
-- holds them; units that have left the window are not counted anyway. Every later entry's
-- running total drops with it, so the totals stay strictly increasing; an emptied entry goes.
local function give_back(key, stamp, units, cutoff)
  if stamp <= cutoff then
    return
  end
  local member = string.format('%d', stamp)
  local top = tonumber(redis.call('ZSCORE', key, member))
  if not top then
    return
  end
  -- The entry before it always exists: the base, which never is a live entry.
  local below = redis.call('ZRANGE', key, '(' .. string.format('%d', top), '-inf', 'BYSCORE', 'REV',
    'LIMIT', 0, 1, 'WITHSCORES')
  local give = math.min(units, top - tonumber(below[2]))
  local later = redis.call('ZRANGE', key, string.format('%d', top), '+inf', 'BYSCORE', 'WITHSCORES')
  for i = 1, #later, 2 do
    redis.call('ZADD', key, tonumber(later[i + 1]) - give, later[i])
  end
  if give == top - tonumber(below[2]) then
    redis.call('ZREM', key, member)
  end
end

local STRIDE = 10

-- One request: n hits, keys from KEYS[k + 1], arguments from ARGV[a + 1].
local function count(now, n, k, a)
  -- A key may appear twice in one request (a batch calling one tool twice): later hits see
  -- the units of earlier ones as already counted.
  local logs, ahead, pruned, out = {}, {}, {}, {1}
  for i = 1, n do
    local j = a + STRIDE * (i - 1)
    local back = tonumber(ARGV[j + 9])
    if back > 0 then
      give_back(KEYS[k + 2 * i - 1], tonumber(ARGV[j + 10]), back, now - tonumber(ARGV[j + 2]))
    end
  end
  for i = 1, n do
    local key, index, j = KEYS[k + 2 * i - 1], KEYS[k + 2 * i], a + STRIDE * (i - 1)
    local limit, window, cost = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    local most = tonumber(ARGV[j + 5])
    logs[key] = logs[key] or read(key, now - window)
    local log, pending = logs[key], ahead[key] or 0
    local used, retry, crowded = log.top - log.base + pending, 0, 0
    if cost + pending > limit then
      retry = -1
    elseif used + cost > limit then
      retry = wait(key, log, used + cost - limit, window, now)
    end
    if most > 0 then
      local room = crowding(index, ARGV[j + 6], most, now, pruned)
      if room > 0 then
        crowded = 1
        if retry ~= -1 then
          retry = math.max(retry, room)
        end
      end
    end
    if retry ~= 0 then
      out[1] = 0
    end
    ahead[key] = pending + cost
    local o = 5 * i - 3
    out[o], out[o + 1], out[o + 2], out[o + 3], out[o + 4] = used, retry, crowded, 0, 0
  end
  if out[1] == 1 then
    for i = 1, n do
      local key, index, j = KEYS[k + 2 * i - 1], KEYS[k + 2 * i], a + STRIDE * (i - 1)
      local limit, window, cost = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
      local quantum, log, o = tonumber(ARGV[j + 4]), logs[key], 5 * i - 3
      -- A lease takes only the room left once this hit and the request's later hits on
      -- this key (ahead[key] counts the ones not recorded yet) are counted.
      local lease = math.max(0, math.min(tonumber(ARGV[j + 7]),
        limit - (log.top - log.base) - ahead[key]))
      ahead[key] = ahead[key] - cost
      -- A hit of cost 0 (policies never send one) only gives its key's old lease back.
      if cost + lease > 0 then
        record(key, log, window, cost + lease, quantum, lease > 0 and tonumber(ARGV[j + 8]) or 0, now)
        if tonumber(ARGV[j + 5]) > 0 then
          note_session(index, ARGV[j + 6], log, window, now)
        end
      end
      out[o] = out[o] + cost
      if lease > 0 then
        out[o + 3], out[o + 4] = lease, log.stamp
      end
    end
  end
  return out
end

local results, k, a = {}, 0, 2
for r = 1, tonumber(ARGV[1]) do
  local now, n = clock(ARGV[a]), tonumber(ARGV[a + 1])
  results[r] = count(now, n, k, a + 1)
  k, a = k + 2 * n, a + 2 + STRIDE * n
end
return results
