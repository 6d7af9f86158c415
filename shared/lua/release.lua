-- Hands a stopping worker's unfinished tasks back: each entry it still owns
-- is added again at the end of its stream, its record says `queued` again,
-- and the old entry is acknowledged and deleted, so another worker starts
-- the task at once instead of after its lease runs out. The attempt number
-- is unchanged: the attempt was interrupted, not failed.
--
-- KEYS     the worker's task streams
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the stopping worker)
-- ARGV[3..] pairs: stream index (into KEYS), entry id
--
-- Returns how many tasks were handed back.

local group, consumer = ARGV[1], ARGV[2]
local count = 0
for i = 3, #ARGV, 2 do
  local key, entry_id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  if owns(key, group, entry_id, consumer) then
    local fields = entry_fields(key, entry_id)
    if #fields > 0 then
      local args = {key, '*'}
      for j = 1, #fields do
        args[#args + 1] = fields[j]
      end
      local new_id = redis.call('XADD', unpack(args))
      local id = field(fields, 'id')
      if id and is_task_id(id) then
        local record_key = base_of(key) .. 'task:' .. id
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
