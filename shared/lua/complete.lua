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
-- ARGV[9..] record pairs (worker, device, run_us, result | error_code, error_message)
--
-- Returns 1 when committed, 0 when the record was already final.

local current = redis.call('HGET', KEYS[1], 'status')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if is_terminal(current) then
  return 0
end

local status = ARGV[8]
local record = {KEYS[1], 'status', status, 'finished_at_ms', int(now_ms())}
local cancelled = status ~= 'expired' and redis.call('HEXISTS', KEYS[1], 'cancel_requested_at_ms') == 1
if cancelled then
  record[3] = 'cancelled'
  redis.call('HDEL', KEYS[1], 'result', 'result_bytes')
end
for i = 9, #ARGV, 2 do
  local name = ARGV[i]
  local outcome = name == 'result' or name == 'result_bytes' or name == 'error_code' or name == 'error_message'
  if not (cancelled and outcome) then
    record[#record + 1] = name
    record[#record + 1] = ARGV[i + 1]
  end
end
if cancelled then
  record[#record + 1] = 'error_code'
  record[#record + 1] = 'CANCELLED'
  record[#record + 1] = 'error_message'
  record[#record + 1] = 'cancelled by a producer while running'
end
redis.call('HSET', unpack(record))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #KEYS >= 3 then
  notify(KEYS[3], KEYS[1], ARGV[7], ARGV[4], ARGV[5], tonumber(ARGV[6]))
end
return 1
