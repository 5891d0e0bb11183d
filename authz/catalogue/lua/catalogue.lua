#!lua
--[[
Every change to one upstream's tool catalogue, each one atomic: observe (one page of a
tools/list answer) and accept (an operator moves a pin). The same rules as
authz/catalogue/memory.py; the contract tests hold both to them.

The shebang (no flags) makes Redis refuse the whole script up front on a read-only replica or
over maxmemory, so a listing is never half recorded.

Keys (all under one hash tag, so they share a cluster slot):
  upstreams  a set of the upstream names catalogued, bounded by max_upstreams.
  state      a hash per upstream: tool name -> its entry as JSON of strings only
             {p = pinned fingerprint, q = pending fingerprint or "", f = first seen (us),
              l = last seen (us), b = accepted by or "", r = "1" when removed, o = "1" when
              the pending definition was over the size bound}.
  defs       a hash per upstream: fingerprint -> the definition's JSON, opaque here (Lua's
             cjson would turn an empty array into an object). A fingerprint covers the
             tool's name, so no two tools share one and a replaced one can be deleted.

ARGV[1] is the operation, ARGV[2] the time in us ("" for the server's clock, which production
always uses; tests pass a clock of their own).
]]

local op = ARGV[1]

local function clock(arg)
  if arg ~= '' then
    return arg
  end
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end

local now = clock(ARGV[2])
local upstreams, state, defs = KEYS[1], KEYS[2], KEYS[3]

local function read(name)
  local raw = redis.call('HGET', state, name)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

local function write(name, entry)
  local raw = cjson.encode(entry)
  redis.call('HSET', state, name, raw)
  return raw
end

-- Forget a definition no entry points at any more.
local function drop(fp, entry)
  if fp ~= '' and fp ~= entry.p and fp ~= entry.q then
    redis.call('HDEL', defs, fp)
  end
end

-- ARGV: 3 upstream, 4 complete ("1"/"0"), 5 max upstreams, 6 max tools, then one
-- (name, fingerprint, definition JSON or "" when over the size bound) triple per tool.
-- Returns a flat array of (name, change, entry JSON or "") triples.
local function observe()
  local upstream, complete = ARGV[3], ARGV[4] == '1'
  local max_upstreams, max_tools = tonumber(ARGV[5]), tonumber(ARGV[6])
  local out = {}
  local function emit(name, change, raw)
    out[#out + 1] = name
    out[#out + 1] = change
    out[#out + 1] = raw
  end
  if redis.call('SISMEMBER', upstreams, upstream) == 0 then
    if redis.call('SCARD', upstreams) >= max_upstreams then
      for i = 7, #ARGV, 3 do
        emit(ARGV[i], 'rejected', '')
      end
      return out
    end
    redis.call('SADD', upstreams, upstream)
  end
  local seen = {}
  for i = 7, #ARGV, 3 do
    local name, fp, def = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    seen[name] = true
    local entry = read(name)
    if not entry then
      if def == '' or redis.call('HLEN', state) >= max_tools then
        emit(name, 'rejected', '')
      else
        redis.call('HSET', defs, fp, def)
        emit(name, 'added', write(name, {p = fp, q = '', f = now, l = now, b = '', r = '0', o = '0'}))
      end
    else
      local change = 'unchanged'
      local old = entry.q
      if fp == entry.p then
        entry.q, entry.o = '', '0'
      elseif fp ~= entry.q then
        entry.q = fp
        entry.o = def == '' and '1' or '0'
        if def ~= '' then
          redis.call('HSET', defs, fp, def)
        end
        change = 'changed'
      end
      drop(old, entry)
      entry.l, entry.r = now, '0'
      emit(name, change, write(name, entry))
    end
  end
  if complete then
    local names = redis.call('HKEYS', state)
    table.sort(names)
    for _, name in ipairs(names) do
      if not seen[name] then
        local entry = read(name)
        if entry.r ~= '1' then
          entry.r = '1'
          emit(name, 'removed', write(name, entry))
        end
      end
    end
  end
  return out
end

-- ARGV: 3 tool name, 4 fingerprint, 5 by. Returns {outcome, entry JSON}: outcome "ok",
-- "missing" (no such tool), "unknown" (no such pending definition) or "oversized".
local function accept()
  local name, fp, by = ARGV[3], ARGV[4], ARGV[5]
  local entry = read(name)
  if not entry then
    return {'missing', ''}
  end
  if fp ~= entry.p then
    if fp ~= entry.q then
      return {'unknown', ''}
    end
    if entry.o == '1' then
      return {'oversized', ''}
    end
    local old = entry.p
    entry.p, entry.q = fp, ''
    drop(old, entry)
  end
  entry.b = by
  return {'ok', write(name, entry)}
end

if op == 'observe' then
  return observe()
elseif op == 'accept' then
  return accept()
end
return redis.error_reply('unknown catalogue operation ' .. tostring(op))
