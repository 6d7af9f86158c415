-- Commits a finished task: writes the outcome into its record, acknowledges
-- and deletes its entry, and notifies the producer, in one atomic step. A
-- record that is already final is left alone (the outcome is discarded), and
-- a cancel requested while the task ran turns the outcome into `cancelled`.
--
-- KEYS[1] the task record
-- KEYS[2] the task's stream
-- KEYS[3] the producer's reply stream (only when there is one to notify)
-- ARGV[1] consumer group
-- ARGV[2] entry id
-- ARGV[3] record TTL, s
-- ARGV[4] reply stream approximate max length
-- ARGV[5] reply stream TTL, s
-- ARGV[6] largest result, bytes, carried inside the notice
-- ARGV[7] task id
-- ARGV[8] final status
-- ARGV[9..] record pairs (worker, device, run_us, result_bytes and result, or
--           error_code and error_message)
--
-- Returns 1 when committed, 0 when the record was already final.

local current = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested_at_ms')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if is_terminal(current[1]) then
  return 0
end

local status = ARGV[8]
local cancelled = status ~= 'expired' and current[2] ~= false
if cancelled then
  status = 'cancelled'
  redis.call('HDEL', KEYS[1], 'result', 'result_bytes')
end
local fields = {'status', status, 'finished_at_ms', int(now_ms())}
for i = 9, #ARGV, 2 do
  local name = ARGV[i]
  local outcome = name == 'result' or name == 'result_bytes' or name == 'error_code' or name == 'error_message'
  if not (cancelled and outcome) then
    fields[#fields + 1] = name
    fields[#fields + 1] = ARGV[i + 1]
  end
end
if cancelled then
  fields[#fields + 1] = 'error_code'
  fields[#fields + 1] = 'CANCELLED'
  fields[#fields + 1] = 'error_message'
  fields[#fields + 1] = 'cancelled by a producer while running'
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])

if #KEYS >= 3 then
  local inline_limit = tonumber(ARGV[6])
  local notice = {}
  for i = 1, #fields, 2 do
    if not (fields[i] == 'result' and #fields[i + 1] > inline_limit) then
      notice[#notice + 1] = fields[i]
      notice[#notice + 1] = fields[i + 1]
    end
  end
  notify(KEYS[3], KEYS[1], ARGV[7], notice, ARGV[4], ARGV[5])
end
return 1
