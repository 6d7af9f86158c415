-- blob.lua: the reference counts and time-to-live of one content-addressed
-- blob (shared/src/blob/). Not a queue script: it is loaded by the blob
-- module alone, with no common.lua and no lifecycle events.
--
-- KEYS[1]  the blob's meta key (its length, set once its bytes are complete)
-- KEYS[2]  its reference count
-- KEYS[3]  its bytes, when Redis stores them (the key may not exist)
-- KEYS[4]  (`stored` only, Redis backend) the partial key its chunks were
--          appended to; renamed to KEYS[3]
-- ARGV[1]  the operation: `ref`, `stored` or `release`
-- ARGV[2]  time to live in ms (`ref`, `stored`)
-- ARGV[3]  the blob's length in bytes (`stored`)
--
-- Every key of one blob carries its hash tag, so this runs in one slot.
--
-- ref:     one more reference; every key's TTL is raised to ARGV[2] (never
--          lowered). Returns 1 when the bytes are complete, 0 when the
--          caller must upload them and then call `stored`.
-- stored:  the bytes are complete: the partial key becomes the data key and
--          the meta key records the length. Returns 1.
-- release: one reference less; at zero every key goes, and the reply is 1
--          (the caller deletes an object store's object), else 0.

local meta, refs, data = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]

local function extend(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -2 then
    return
  end
  if current == -1 or current < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

if op == 'ref' then
  local ttl = tonumber(ARGV[2])
  redis.call('INCR', refs)
  extend(refs, ttl)
  if redis.call('EXISTS', meta) == 1 then
    extend(meta, ttl)
    extend(data, ttl)
    return 1
  end
  return 0
elseif op == 'stored' then
  local ttl = tonumber(ARGV[2])
  if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('RENAME', KEYS[4], data)
  end
  redis.call('SET', meta, ARGV[3])
  extend(meta, ttl)
  extend(data, ttl)
  extend(refs, ttl)
  return 1
elseif op == 'release' then
  if redis.call('DECR', refs) <= 0 then
    redis.call('DEL', meta, refs, data)
    return 1
  end
  return 0
end
return redis.error_reply('blob.lua: unknown operation ' .. tostring(op))
