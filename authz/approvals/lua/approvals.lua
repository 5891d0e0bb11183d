#!lua
--[[
Every transition of an approval request, each one atomic: one run of this script reads and
writes all the keys of one operation.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica
(READONLY) or over maxmemory (OOM), so a refusal never leaves a transition half done.

Keys (all under one hash tag, so they share a cluster slot):
  record   a hash per request: id, status, decided_by, requested_at and expires_at (us),
           digest (of the exact call), owner (the key of its identity's pending set) and
           request (its JSON, opaque here); PEXPIREs with the request's lifetime.
  call     per call digest: the id of the live request for that exact call; same lifetime.
  pending  a sorted set of pending ids scored by expiry, for listing and the total cap.
  owner    per identity: a sorted set of its pending ids scored by expiry, for its cap.
A record's call and owner keys and a call key's record are found through each other; all
carry the declared keys' hash tag, so they sit on the same slot.

Status: pending -> approved | denied (decide); approved -> in_use (spend) -> approved
(release) | gone (commit). Expired entries leave the sorted sets by score, so every
operation is O(log n) in the number of requests held, and a listing's cost is bounded by
its page size.

ARGV[1] is the operation, ARGV[2] the time in us ("" for the server's clock, which production
always uses; tests pass a clock of their own). A record is returned as a flat array of
field, value pairs; an absent or expired one as false.
]]

local op, prefix = ARGV[1], ARGV[3]

local function clock(arg)
  local now = tonumber(arg)
  if now then
    return now
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now = clock(ARGV[2])

local function call_key(digest)
  return prefix .. 'call:' .. digest
end

local function record_key(id)
  return prefix .. 'id:' .. id
end

-- Off the pending sets (a record written before owners were kept has none).
local function unlist(pending, record)
  redis.call('ZREM', pending, record.id)
  if record.owner then
    redis.call('ZREM', record.owner, record.id)
  end
end

-- The record at `key` if it is still live; an expired one (whose PX has not fired yet, or
-- a test clock past its expiry) is removed with its call key and pending entry.
local function live(key, pending)
  local fields = redis.call('HGETALL', key)
  if #fields == 0 then
    return false
  end
  local record = {}
  for i = 1, #fields, 2 do
    record[fields[i]] = fields[i + 1]
  end
  if tonumber(record.expires_at) <= now then
    redis.call('DEL', key)
    local call = call_key(record.digest)
    if redis.call('GET', call) == record.id then
      redis.call('DEL', call)
    end
    unlist(pending, record)
    return false
  end
  return fields, record
end

-- Keep a sorted set at least `ms` more.
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

-- The us until the soonest of a (pruned, non-empty) sorted set's entries expires.
local function soonest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return string.format('%d', tonumber(first[2]) - now)
end

-- KEYS: call, new record, pending, owner. ARGV[4..]: new id, lifetime (us), digest, request
-- JSON, the cap of pending requests in total, the cap per identity.
-- Returns {created, record}: the live request for this call, or a new pending one; or
-- {-1, scope, us until the soonest pending request of that scope expires} when a new one
-- would pass the cap of its identity ('identity') or of the store ('total').
local function request()
  local call, pending, owner = KEYS[1], KEYS[3], KEYS[4]
  local id = redis.call('GET', call)
  if id then
    local fields = live(record_key(id), pending)
    if fields then
      return {0, fields}
    end
  end
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', owner, '-inf', now)
  if redis.call('ZCARD', owner) >= tonumber(ARGV[9]) then
    return {-1, 'identity', soonest(owner)}
  end
  if redis.call('ZCARD', pending) >= tonumber(ARGV[8]) then
    return {-1, 'total', soonest(pending)}
  end
  local new_id, lifetime = ARGV[4], tonumber(ARGV[5])
  local expires = now + lifetime
  local record = KEYS[2]
  redis.call('HSET', record,
    'id', new_id, 'status', 'pending', 'decided_by', '',
    'requested_at', string.format('%d', now), 'expires_at', string.format('%d', expires),
    'digest', ARGV[6], 'owner', owner, 'request', ARGV[7])
  local ms = math.max(1, math.ceil(lifetime / 1000))
  redis.call('PEXPIRE', record, ms)
  redis.call('SET', call, new_id, 'PX', ms)
  redis.call('ZADD', pending, expires, new_id)
  redis.call('ZADD', owner, expires, new_id)
  keep(pending, ms)
  keep(owner, ms)
  return {1, redis.call('HGETALL', record)}
end

-- KEYS: record, pending. ARGV[4]: 1 approve, 0 deny; ARGV[5]: who decided.
-- Returns {'ok', record}, {'gone'} or {'decided', status}.
local function decide()
  local key, pending = KEYS[1], KEYS[2]
  local fields, record = live(key, pending)
  if not fields then
    return {'gone'}
  end
  if record.status ~= 'pending' then
    return {'decided', record.status}
  end
  local status = ARGV[4] == '1' and 'approved' or 'denied'
  redis.call('HSET', key, 'status', status, 'decided_by', ARGV[5])
  unlist(pending, record)
  return {'ok', redis.call('HGETALL', key)}
end

-- KEYS: record, pending. ARGV[4], ARGV[5]: the status it must have, the status it gets.
-- Returns 1 if this run moved it (approved -> in_use, in_use -> approved), 0 otherwise.
local function move()
  local key, pending = KEYS[1], KEYS[2]
  local fields, record = live(key, pending)
  if not fields or record.status ~= ARGV[4] then
    return 0
  end
  redis.call('HSET', key, 'status', ARGV[5])
  return 1
end

-- KEYS: record, pending. In use -> gone (the record and its call key go, so the next
-- identical call asks again). Returns 1 if this run removed it, 0 otherwise.
local function commit()
  local key, pending = KEYS[1], KEYS[2]
  local fields, record = live(key, pending)
  if not fields or record.status ~= 'in_use' then
    return 0
  end
  redis.call('DEL', key)
  local call = call_key(record.digest)
  if redis.call('GET', call) == record.id then
    redis.call('DEL', call)
  end
  return 1
end

-- KEYS: record, pending. The live record or false.
local function get()
  local fields = live(KEYS[1], KEYS[2])
  return fields
end

-- KEYS: pending. ARGV[4]: the page size; ARGV[5], ARGV[6]: the expiry (us) and id of the
-- last entry of the page before ("" for the first page). Returns {more, last expiry, last id,
-- record, record, ...}: at most a page of live pending records, soonest expiry first.
local function list()
  local pending, size = KEYS[1], tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  local start = 0
  if ARGV[6] ~= '' then
    -- The rank just after the previous page's last entry, even if that one has been decided
    -- since: put it back for the look-up (ties in expiry sort by id, as in the set).
    local added = redis.call('ZADD', pending, 'NX', ARGV[5], ARGV[6])
    start = redis.call('ZRANK', pending, ARGV[6])
    if added == 1 then
      redis.call('ZREM', pending, ARGV[6])
    else
      start = start + 1
    end
  end
  local entries = redis.call('ZRANGE', pending, start, start + size - 1, 'WITHSCORES')
  local out = {0, '', ''}
  for i = 1, #entries, 2 do
    local id = entries[i]
    local fields, record = live(record_key(id), pending)
    if fields and record.status == 'pending' then
      out[#out + 1] = fields
    end
    out[2], out[3] = string.format('%d', tonumber(entries[i + 1])), id
  end
  if start + size < redis.call('ZCARD', pending) then
    out[1] = 1
  end
  return out
end

local ops = {request = request, decide = decide, move = move, commit = commit, get = get, list = list}
return ops[op]()
