#!lua
-- Grants in Redis: one run of this script per operation, so a label and its token hash are
-- always changed together. Keys share the `{prefix:grants}` hash tag (one cluster slot):
--   <keys>label:<label>    the grant's current token hash
--   <keys>digest:<hash>    the grant's record (JSON), found per request by the token's hash
--   <keys>labels           every label (for listing)
-- ARGV: op, keys prefix, then per op:
--   get DIGEST | add LABEL DIGEST RECORD | rotate LABEL DIGEST AT | remove LABEL | list
local op, keys = ARGV[1], ARGV[2]
local function label_key(label) return keys .. 'label:' .. label end
local function digest_key(digest) return keys .. 'digest:' .. digest end

if op == 'get' then
  return redis.call('GET', digest_key(ARGV[3]))
end

if op == 'add' then
  local label, digest = ARGV[3], ARGV[4]
  if redis.call('EXISTS', label_key(label)) == 1 then return 'taken' end
  redis.call('SET', label_key(label), digest)
  redis.call('SET', digest_key(digest), ARGV[5])
  redis.call('SADD', keys .. 'labels', label)
  return 'ok'
end

if op == 'rotate' then
  local label, digest = ARGV[3], ARGV[4]
  local old = redis.call('GET', label_key(label))
  if not old then return false end
  local record = cjson.decode(redis.call('GET', digest_key(old)))
  record['digest'] = digest
  record['rotated_at'] = tonumber(ARGV[5])
  local text = cjson.encode(record)
  redis.call('DEL', digest_key(old))
  redis.call('SET', digest_key(digest), text)
  redis.call('SET', label_key(label), digest)
  return text
end

if op == 'remove' then
  local label = ARGV[3]
  local old = redis.call('GET', label_key(label))
  if not old then return false end
  local text = redis.call('GET', digest_key(old))
  redis.call('DEL', digest_key(old), label_key(label))
  redis.call('SREM', keys .. 'labels', label)
  return text
end

if op == 'list' then
  local out = {}
  for _, label in ipairs(redis.call('SMEMBERS', keys .. 'labels')) do
    local digest = redis.call('GET', label_key(label))
    if digest then table.insert(out, redis.call('GET', digest_key(digest))) end
  end
  return out
end

return redis.error_reply('unknown op ' .. tostring(op))
