-- Moves an entry that names no task (no readable id) to the dead-letter
-- stream with its reason, acknowledging and deleting it, while this worker
-- owns it.
--
-- KEYS[1] the entry's stream
-- KEYS[2] the class's dead-letter stream
-- ARGV[1] consumer group
-- ARGV[2] entry id
-- ARGV[3] consumer (this worker)
-- ARGV[4] reason (error code)
-- ARGV[5] message
-- ARGV[6] dead-letter stream approximate max length
--
-- Returns the dead letter's id, or -1 when this worker no longer owns it; a
-- WRONGTYPE error, with nothing written, when the dead-letter stream's key
-- holds another type.

local problem = wrong_type({KEYS[1], 'stream', KEYS[2], 'stream'})
if problem then
  return redis.error_reply(problem)
end

if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then
  return -1
end
local fields = entry_fields(KEYS[1], ARGV[2])
local dead_id = bury(KEYS[2], ARGV[6], fields, {'reason', ARGV[4], 'error_message', ARGV[5],
  'attempts', '1', 'history', '[]', 'dead_at_ms', int(now_ms()), 'stream', KEYS[1], 'entry', ARGV[2]})
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return dead_id
