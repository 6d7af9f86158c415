-- Records a running task's progress report: the fraction done, a short
-- message and when (Redis clock), in its record, and announces it as a
-- `progress` event (when events are on). Fenced like a commit: only while
-- the record's `owner` names this worker and entry and the task runs, so a
-- worker whose task was taken over, or that lost its lease, changes nothing.
-- Not a change of state: the task stays `running`.
--
-- KEYS[1] the task record
-- ARGV[1] owner: `<worker> <entry id>`
-- ARGV[2] task id
-- ARGV[3] fraction done, 0 to 1 (the caller checks it)
-- ARGV[4] message (may be empty)
--
-- Returns 1 when written, 0 when this worker no longer owns the running
-- task; a WRONGTYPE error, with nothing written, when the record is not a
-- hash.

local problem = wrong_type({KEYS[1], 'hash'})
if problem then
  return redis.error_reply(problem)
end
local current = redis.call('HMGET', KEYS[1], 'status', 'owner')
if current[1] ~= 'running' or current[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[3], 'progress_msg', ARGV[4], 'progress_at_ms', int(now_ms()))
emit_event(string.match(KEYS[1], '^(.*:)task:[^:]+$'), 'progress', ARGV[2], KEYS[1],
  {progress = ARGV[3], progress_msg = ARGV[4]})
return 1
