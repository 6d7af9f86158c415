-- Promotes the due tasks of one class: delayed tasks (scheduled, or parked
-- by a rate limit) and retries move from the class's delayed set to the
-- end of their streams (see promote_due in common.lua). Every worker's
-- promoter calls it when the set's head is due, so a task enters its
-- stream within milliseconds of its time; the claim script's own
-- promotion, once a second, is the backstop. Two workers calling it at
-- once promote each task once: a script runs alone, and the task leaves
-- the set in the script that promotes it.
--
-- KEYS[1] the class's delayed set
-- ARGV[1] at most this many tasks per call
--
-- Returns {promoted, next due (ms; -1 when the set is empty), now (ms)},
-- both times by the Redis clock, so the caller sleeps for their
-- difference whatever its own clock says. When `promoted` reaches the
-- limit, call again at once. A WRONGTYPE error, with nothing written, when
-- a key it would change holds another type.

local base = string.match(KEYS[1], '^(.*:)delayed$')
if not base then
  return redis.error_reply('ERR ' .. KEYS[1] .. ' is not a delayed set (<prefix>:{class}:delayed)')
end
local limit = tonumber(ARGV[1]) or 100
local now = now_ms()
local checks = {}
add_promote_checks(checks, base, now, limit)
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local promoted = promote_due(base, now, limit)
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if #head == 2 then
  next_due = tonumber(head[2])
end
return {promoted, next_due, now}
