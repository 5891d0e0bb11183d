#!lua
--[[
Every transition of an approval request, each one atomic: one run of this script reads and
writes all the keys of one operation.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica
(READONLY) or over maxmemory (OOM), so a refusal never leaves a transition half done.

Keys (all under one hash tag, so they share a cluster slot):
  record   a hash per request: id, status, decided_by, requested_at and expires_at (us),
           digest (of the exact call) and request (its JSON, opaque here); PEXPIREs with the
           request's lifetime.
  call     per call digest: the id of the live request for that exact call; same lifetime.
  pending  a sorted set of pending ids scored by expiry, for listing.
A record's call key and a call key's record are found through each other; both carry the
declared keys' hash tag, so they sit on the same slot.

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
    redis.call('ZREM', pending, record.id)
    return false
  end
  return fields, record
end

-- KEYS: call, new record, pending. ARGV[4..]: new id, lifetime (us), digest, request JSON.
-- Returns {created, record}: the live request for this call, or a new pending one.
local function request()
  local call, pending = KEYS[1], KEYS[3]
  local id = redis.call('GET', call)
  if id then
    local fields = live(record_key(id), pending)
    if fields then
      return {0, fields}
    end
  end
  local new_id, lifetime = ARGV[4], tonumber(ARGV[5])
  local expires = now + lifetime
  local record = KEYS[2]
  redis.call('HSET', record,
    'id', new_id, 'status', 'pending', 'decided_by', '',
    'requested_at', string.format('%d', now), 'expires_at', string.format('%d', expires),
    'digest', ARGV[6], 'request', ARGV[7])
  local ms = math.max(1, math.ceil(lifetime / 1000))
  redis.call('PEXPIRE', record, ms)
  redis.call('SET', call, new_id, 'PX', ms)
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  redis.call('ZADD', pending, expires, new_id)
  if redis.call('PTTL', pending) < ms then
    redis.call('PEXPIRE', pending, ms)
  end
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
  redis.call('ZREM', pending, record.id)
  return {'ok', redis.call('HGETALL', key)}
end

-- KEYS: record, pending. Approved -> used (the record and its call key go, so the next
-- identical call asks again). Returns 1 if this run used it, 0 otherwise.
local function consume()
  local key, pending = KEYS[1], KEYS[2]
  local fields, record = live(key, pending)
  if not fields or record.status ~= 'approved' then
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

-- KEYS: pending. Every live pending record, soonest expiry first.
local function list()
  local pending = KEYS[1]
  redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', pending, 0, -1)) do
    local fields, record = live(record_key(id), pending)
    if fields and record.status == 'pending' then
      out[#out + 1] = fields
    elseif not fields then
      redis.call('ZREM', pending, id)
    end
  end
  return out
end

local ops = {request = request, decide = decide, consume = consume, get = get, list = list}
return ops[op]()
