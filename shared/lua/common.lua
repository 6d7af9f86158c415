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

-- Appends the finished record of task `id` to the producer's reply stream. A
-- result larger than `inline_limit` bytes stays out of the notice;
-- `result_bytes` tells the producer to fetch it from the record.
local function notify(reply_key, record_key, id, maxlen, ttl_s, inline_limit)
  local record = redis.call('HGETALL', record_key)
  local args = {reply_key, 'MAXLEN', '~', maxlen, '*', 'id', id}
  for i = 1, #record, 2 do
    local name, value = record[i], record[i + 1]
    if name ~= 'id' and not (name == 'result' and #value > inline_limit) then
      args[#args + 1] = name
      args[#args + 1] = value
    end
  end
  redis.call('XADD', unpack(args))
  redis.call('EXPIRE', reply_key, ttl_s)
end
