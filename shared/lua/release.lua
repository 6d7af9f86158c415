-- Hands a stopping worker's unfinished tasks back: each entry it still owns
-- is added again at the end of its stream, its record says `queued` again,
-- and the old entry is acknowledged and deleted, so another worker starts
-- the task at once instead of after its lease runs out. The attempt number
-- is unchanged: the attempt was interrupted, not failed. When the worker's
-- device failed, each entry's `interrupted` count goes up by one (the claim
-- script counts it as a delivery, so a task that brings down every device it
-- touches ends as poison) and the record's history notes the attempt.
--
-- KEYS     the worker's task streams
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the stopping worker)
-- ARGV[3]  why: `shutdown`, or the error code of a device failure
-- ARGV[4]  the device failure's message
-- ARGV[5..] pairs: stream index (into KEYS), entry id
--
-- Returns how many tasks were handed back; a WRONGTYPE error, with nothing
-- written, when a stream or a task's record key holds another type.

local group, consumer, why, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local device_failed = why ~= 'shutdown'
local now = now_ms()
-- Every stream and record this call may change, checked before the first
-- write.
local checks = {}
for i = 5, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  checks[#checks + 1] = key
  checks[#checks + 1] = 'stream'
  if key and redis.call('TYPE', key)['ok'] == 'stream' then
    local id = field(entry_fields(key, ARGV[i + 1]), 'id')
    if id and is_task_id(id) then
      checks[#checks + 1] = base_of(key) .. 'task:' .. id
      checks[#checks + 1] = 'hash'
    end
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local count = 0
for i = 5, #ARGV, 2 do
  local key, entry_id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  if owns(key, group, entry_id, consumer) then
    local fields = entry_fields(key, entry_id)
    if #fields > 0 then
      local args = {key, '*'}
      local interrupted = false
      for j = 1, #fields, 2 do
        local value = fields[j + 1]
        if device_failed and fields[j] == 'interrupted' then
          value = int((tonumber(value) or 0) + 1)
          interrupted = true
        end
        args[#args + 1] = fields[j]
        args[#args + 1] = value
      end
      if device_failed and not interrupted then
        args[#args + 1] = 'interrupted'
        args[#args + 1] = '1'
      end
      local new_id = redis.call('XADD', unpack(args))
      local id = field(fields, 'id')
      if id and is_task_id(id) then
        local record_key = base_of(key) .. 'task:' .. id
        if device_failed then
          local started = redis.call('HMGET', record_key, 'started_at_ms', 'attempt', 'device')
          if started[1] then
            add_history(record_key, {attempt = started[2] or '1', started_at_ms = started[1],
              finished_at_ms = int(now), status = 'handed_back', worker = consumer,
              device = started[3] or '', error_code = why, error_message = message})
          end
        end
        redis.call('HSET', record_key, 'status', 'queued', 'entry', new_id)
        redis.call('HDEL', record_key, 'started_at_ms', 'worker', 'device', 'owner')
      end
      count = count + 1
    end
    redis.call('XACK', key, group, entry_id)
    redis.call('XDEL', key, entry_id)
  end
end
return count
