-- Helpers shared by every Tandem script; each script's source is this file
-- followed by the script's own body (see shared/src/scripts.rs).
--
-- Numbers leave Lua through string.format('%d'), never tostring: Redis turns
-- a Lua number into text with 14 significant digits, which would write large
-- times in exponent form.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

-- The value of `name` in a flat {name, value, name, value, ...} list.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- `tandem:{cpu}:` from `tandem:{cpu}:stream:high`: the part every key of a
-- class shares.
local function base_of(stream_key)
  return string.match(stream_key, '^(.*:)stream:[^:]+$')
end

local function is_terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled' or status == 'expired'
end

local function is_task_id(text)
  return string.match(text, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') ~= nil
end

-- The record fields a completion notice repeats besides the outcome.
local NOTICE_FIELDS = {'class', 'attempt', 'submitted_at_ms', 'started_at_ms'}

-- Appends a completion notice for task `id` to a producer's reply stream:
-- `known`, the values of NOTICE_FIELDS in the record (HMGET order), then the
-- outcome `pairs` (status, finish time, worker, result or error, ...).
local function notify(reply_key, id, known, pairs, maxlen, ttl_s)
  local args = {reply_key, 'MAXLEN', '~', maxlen, '*', 'id', id}
  for i = 1, #NOTICE_FIELDS do
    if known[i] then
      args[#args + 1] = NOTICE_FIELDS[i]
      args[#args + 1] = known[i]
    end
  end
  for i = 1, #pairs do
    args[#args + 1] = pairs[i]
  end
  redis.call('XADD', unpack(args))
  redis.call('EXPIRE', reply_key, ttl_s)
end

-- Appends one attempt to the record's history: a JSON array, one object per
-- attempt, every value a string (cjson would print large numbers in
-- exponent form).
local function add_history(record_key, attempt)
  local history = {}
  local current = redis.call('HGET', record_key, 'history')
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' then
      history = decoded
    end
  end
  history[#history + 1] = attempt
  local encoded = cjson.encode(history)
  redis.call('HSET', record_key, 'history', encoded)
  return encoded
end

-- Appends an entry's original fields, with why it died, to a dead-letter
-- stream; returns the dead letter's id. `fields` may be empty when the entry
-- itself is gone.
local function bury(dead_key, maxlen, fields, why)
  local args = {dead_key, 'MAXLEN', '~', maxlen, '*'}
  for i = 1, #fields do
    args[#args + 1] = fields[i]
  end
  for i = 1, #why do
    args[#args + 1] = why[i]
  end
  return redis.call('XADD', unpack(args))
end

-- The entry's fields, or an empty list when it was deleted.
local function entry_fields(stream_key, entry_id)
  local found = redis.call('XRANGE', stream_key, entry_id, entry_id)
  if #found == 1 then
    return found[1][2]
  end
  return {}
end

-- True when `consumer` still owns the pending entry: the fence every step
-- that finishes or extends a task passes first.
local function owns(stream_key, group, entry_id, consumer)
  local pending = redis.call('XPENDING', stream_key, group, entry_id, entry_id, 1)
  return #pending == 1 and pending[1][2] == consumer
end
