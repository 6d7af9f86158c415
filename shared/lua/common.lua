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

local function is_terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled' or status == 'expired'
end

local function is_task_id(text)
  return string.match(text, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') ~= nil
end

-- Appends a completion notice for task `id` to a producer's reply stream:
-- the outcome `pairs` (status, finish time, worker, result or error, ...)
-- after the class, attempt and times the record already holds.
local function notify(reply_key, record_key, id, pairs, maxlen, ttl_s)
  local names = {'class', 'attempt', 'submitted_at_ms', 'started_at_ms'}
  local known = redis.call('HMGET', record_key, unpack(names))
  local args = {reply_key, 'MAXLEN', '~', maxlen, '*', 'id', id}
  for i = 1, #names do
    if known[i] then
      args[#args + 1] = names[i]
      args[#args + 1] = known[i]
    end
  end
  for i = 1, #pairs do
    args[#args + 1] = pairs[i]
  end
  redis.call('XADD', unpack(args))
  redis.call('EXPIRE', reply_key, ttl_s)
end
