-- Commits what became of a task, in one atomic step, only while this worker
-- still owns its entry (the fence: a worker that lost its lease changes
-- nothing). Then, by disposition:
--   final  the record gets its final status (succeeded, cancelled, expired)
--          and the result or error; the producer is notified
--   retry  the entry's fields are parked in a retry hash, the task id goes
--          into the class's delayed set for when the retry is due, the record
--          says `retrying`
--   dead   the entry goes to the class's dead-letter stream with the reason
--          and the attempt history; the record ends `failed`; the producer is
--          notified
-- In every case the entry is acknowledged and deleted. A record that is
-- already final is left alone, and a cancel requested while the task ran
-- turns any outcome into `cancelled`.
--
-- KEYS[1]  the task record
-- KEYS[2]  the task's stream
-- KEYS[3]  the class's delayed set
-- KEYS[4]  the class's dead-letter stream
-- KEYS[5]  the producer's reply stream (only when there is one to notify)
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer (this worker)
-- ARGV[4]  record TTL once final, s
-- ARGV[5]  reply stream approximate max length
-- ARGV[6]  reply stream TTL, s
-- ARGV[7]  largest result, bytes, carried inside the notice
-- ARGV[8]  task id
-- ARGV[9]  status: succeeded, failed, cancelled or expired
-- ARGV[10] disposition: final, retry or dead
-- ARGV[11] for retry: ms from now until the retry is due
-- ARGV[12] dead-letter stream approximate max length
-- ARGV[13] attempt number
-- ARGV[14..] record pairs (worker, device, run_us, result_bytes and result,
--           or error_code and error_message)
--
-- Returns 1 when committed, 0 when the record was already final (the entry
-- is acknowledged), -1 when this worker no longer owns the entry.

local record_key, stream_key = KEYS[1], KEYS[2]
local group, entry_id, consumer = ARGV[1], ARGV[2], ARGV[3]
if not owns(stream_key, group, entry_id, consumer) then
  return -1
end
local current = redis.call('HMGET', record_key, 'status', 'cancel_requested_at_ms', 'started_at_ms')
if is_terminal(current[1]) then
  redis.call('XACK', stream_key, group, entry_id)
  redis.call('XDEL', stream_key, entry_id)
  return 0
end

local now = now_ms()
local status, disposition = ARGV[9], ARGV[10]
local cancelled = status ~= 'expired' and current[2] ~= false
if cancelled then
  status, disposition = 'cancelled', 'final'
end

local pairs_in = {}
for i = 14, #ARGV, 2 do
  local name = ARGV[i]
  local outcome = name == 'result' or name == 'result_bytes' or name == 'error_code' or name == 'error_message'
  if not (cancelled and outcome) then
    pairs_in[#pairs_in + 1] = name
    pairs_in[#pairs_in + 1] = ARGV[i + 1]
  end
end
if cancelled then
  redis.call('HDEL', record_key, 'result', 'result_bytes')
  pairs_in[#pairs_in + 1] = 'error_code'
  pairs_in[#pairs_in + 1] = 'CANCELLED'
  pairs_in[#pairs_in + 1] = 'error_message'
  pairs_in[#pairs_in + 1] = 'cancelled by a producer while running'
end

-- The attempt, for the history: kept for tasks that needed more than one
-- attempt or did not succeed (a first attempt that succeeded says all it has
-- to say in the record itself); only attempts that started have one.
local history = nil
local needs_history = status ~= 'succeeded' or ARGV[13] ~= '1' or redis.call('HEXISTS', record_key, 'history') == 1
if current[3] and needs_history then
  local attempt = {attempt = ARGV[13], started_at_ms = current[3], finished_at_ms = int(now), status = status}
  for i = 1, #pairs_in, 2 do
    local name = pairs_in[i]
    if name == 'worker' or name == 'device' or name == 'error_code' or name == 'error_message' then
      attempt[name] = pairs_in[i + 1]
    end
  end
  history = add_history(record_key, attempt)
end

local fields = entry_fields(stream_key, entry_id)
if disposition == 'retry' and #fields == 0 then
  -- The entry vanished while running; nothing to retry from.
  disposition = 'dead'
end

if disposition == 'retry' then
  local base = base_of(stream_key)
  local task_id = ARGV[8]
  local due = now + (tonumber(ARGV[11]) or 0)
  local retry_key = base .. 'retry:' .. task_id
  redis.call('DEL', retry_key)
  redis.call('HSET', retry_key, unpack(fields))
  redis.call('ZADD', KEYS[3], due, task_id)
  local record = {'status', 'retrying', 'retry_at_ms', int(due), 'retry_stream', stream_key}
  for i = 1, #pairs_in, 2 do
    if pairs_in[i] == 'error_code' or pairs_in[i] == 'error_message' or pairs_in[i] == 'worker' or pairs_in[i] == 'device' then
      record[#record + 1] = pairs_in[i]
      record[#record + 1] = pairs_in[i + 1]
    end
  end
  redis.call('HSET', record_key, unpack(record))
  redis.call('XACK', stream_key, group, entry_id)
  redis.call('XDEL', stream_key, entry_id)
  return 1
end

local record = {'status', status, 'finished_at_ms', int(now)}
for i = 1, #pairs_in do
  record[#record + 1] = pairs_in[i]
end
if disposition == 'dead' then
  local why = {'reason', 'BAD_PAYLOAD', 'error_message', '', 'attempts', ARGV[13],
    'history', history or '[]', 'dead_at_ms', int(now), 'stream', stream_key, 'entry', entry_id}
  for i = 1, #pairs_in, 2 do
    if pairs_in[i] == 'error_code' then why[2] = pairs_in[i + 1] end
    if pairs_in[i] == 'error_message' then why[4] = pairs_in[i + 1] end
  end
  local dead_id = bury(KEYS[4], ARGV[12], fields, why)
  record[#record + 1] = 'dead_letter'
  record[#record + 1] = dead_id
end
redis.call('HSET', record_key, unpack(record))
redis.call('HDEL', record_key, 'retry_at_ms', 'retry_stream')
redis.call('EXPIRE', record_key, ARGV[4])
redis.call('XACK', stream_key, group, entry_id)
redis.call('XDEL', stream_key, entry_id)

if #KEYS >= 5 then
  local inline_limit = tonumber(ARGV[7])
  local notice = {}
  for i = 1, #record, 2 do
    if not (record[i] == 'result' and #record[i + 1] > inline_limit) then
      notice[#notice + 1] = record[i]
      notice[#notice + 1] = record[i + 1]
    end
  end
  notify(KEYS[5], record_key, ARGV[8], notice, ARGV[5], ARGV[6])
end
return 1
