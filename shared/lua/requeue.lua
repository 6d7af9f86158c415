-- Puts a dead letter back into its stream as a fresh first attempt: the
-- original entry fields (attempt reset to 1) go to the stream it came from,
-- the task record says `queued` again (its history kept), and the dead
-- letter is deleted.
--
-- KEYS[1] the class's dead-letter stream
-- ARGV[1] dead letter id
--
-- Returns {task id or '', new entry id}, or {} when no such dead letter; a
-- WRONGTYPE error, with nothing written, when the stream or the task's
-- record key holds another type.

local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return {}
end
local fields = found[1][2]
local extra = {reason = true, error_message = true, attempts = true, history = true,
  dead_at_ms = true, stream = true, entry = true}
local stream_key = field(fields, 'stream')
if not stream_key or not base_of(stream_key) or base_of(stream_key) .. 'dead' ~= KEYS[1] then
  return {}
end
local checks = {stream_key, 'stream'}
local task_id = field(fields, 'id')
if task_id and is_task_id(task_id) then
  local record_key = base_of(stream_key) .. 'task:' .. task_id
  checks[#checks + 1] = record_key
  checks[#checks + 1] = 'hash'
  -- A workflow node's requeue counts it in its workflow again.
  if redis.call('TYPE', record_key)['ok'] == 'hash' then
    local wf_key = redis.call('HGET', record_key, 'workflow')
    if wf_key then
      checks[#checks + 1] = wf_key
      checks[#checks + 1] = 'hash'
    end
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local entry = {stream_key, '*'}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if not extra[name] then
    if name == 'attempt' then
      value = '1'
    end
    entry[#entry + 1] = name
    entry[#entry + 1] = value
  end
end
if #entry == 2 then
  return {}
end
local entry_id = redis.call('XADD', unpack(entry))
local id = field(fields, 'id')
if id and is_task_id(id) then
  local record_key = base_of(stream_key) .. 'task:' .. id
  redis.call('HDEL', record_key, 'result', 'result_bytes', 'error_code', 'error_message',
    'finished_at_ms', 'dead_letter', 'started_at_ms', 'worker', 'device', 'cancel_requested_at_ms')
  redis.call('HSET', record_key, 'status', 'queued', 'entry', entry_id, 'attempt', '1')
  redis.call('PERSIST', record_key)
  workflow_requeued(record_key)
  emit_event(base_of(stream_key), 'requeued', id, record_key)
else
  id = ''
end
redis.call('XDEL', KEYS[1], ARGV[1])
return {id, entry_id}
