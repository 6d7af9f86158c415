-- Fires one tick of a recurring schedule, exactly once: creates the tick's
-- task (as submit.lua would) and moves the schedule to its next fire time,
-- in one step. The caller (a worker's recurring loop) read the schedule,
-- decided with `tandem_shared::recurring::plan` what to do, and passes
-- that decision fenced by what it read: the schedule's `revision` and
-- `next_fire_ms`. When either changed (another worker fired the tick
-- first, a producer replaced, paused or removed the schedule), nothing
-- happens, so any number of workers may race on a tick. The task id is
-- derived from the schedule and the tick, so even a fire whose fence a
-- lost write reopened (a Redis restart that lost the last second of its
-- append-only file loses the task and the advance together, as this
-- script is one transaction there) creates the task once: a record of
-- that id already there means created.
--
-- This script computes no time but `now`: the next fire time comes from
-- the caller, which alone knows cron patterns and time zones.
--
-- KEYS[1] the schedule's hash
-- KEYS[2] the class's schedule index (sorted set, score = next fire ms)
-- KEYS[3] the stream of the schedule's class and priority
-- KEYS[4] the record of the tick's task
-- ARGV[1] the schedule's name
-- ARGV[2] its `revision` as read (`0` when absent)
-- ARGV[3] its `next_fire_ms` as read (`0` when absent: not computed yet)
-- ARGV[4] the tick to create a task for (ms), or '' to create none (the
--         first fire time of a new schedule, or missed ticks skipped)
-- ARGV[5] the next fire time (ms)
-- ARGV[6] ticks that came due with this call (the ones not fired count
--         as skipped)
-- ARGV[7] the task's deadline relative to its creation, ms (0 = none)
-- ARGV[8] the task's params (MessagePack)
-- ARGV[9..] the task's metadata pairs (as submit.lua's), id included
--
-- Returns {'fired', task id, 1 (created) or 0 (it existed)}, {'advanced'}
-- (no task), or {'stale', why}: `gone`, `revision`, `moved`, `paused`,
-- `early` (the tick is not due by the Redis clock), `stream` (KEYS[3] is
-- not the stream the schedule's priority names); a WRONGTYPE error, with
-- nothing written, when a key holds another type.

local problem = wrong_type({KEYS[1], 'hash', KEYS[2], 'zset', KEYS[3], 'stream', KEYS[4], 'hash'})
if problem then
  return redis.error_reply(problem)
end

local s = redis.call('HMGET', KEYS[1], 'kind', 'revision', 'next_fire_ms', 'paused', 'priority')
if not s[1] then
  return {'stale', 'gone'}
end
if (s[2] or '0') ~= ARGV[2] then
  return {'stale', 'revision'}
end
if (s[3] or '0') ~= ARGV[3] then
  return {'stale', 'moved'}
end
if s[4] == '1' then
  return {'stale', 'paused'}
end
local now = now_ms()
if (tonumber(ARGV[3]) or 0) > now then
  return {'stale', 'early'}
end

local reply = {'advanced'}
local fired = 0
if ARGV[4] ~= '' then
  local base = string.match(KEYS[1], '^(.*:)schedule:')
  if not base or KEYS[3] ~= base .. 'stream:' .. (s[5] or 'normal') then
    return {'stale', 'stream'}
  end
  local pairs = {}
  for i = 9, #ARGV do
    pairs[#pairs + 1] = ARGV[i]
  end
  local id = field(pairs, 'id')
  local created = 0
  if redis.call('HSETNX', KEYS[4], 'status', 'queued') == 1 then
    add_task(KEYS[3], KEYS[4], now, tonumber(ARGV[7]) or 0, ARGV[8], pairs,
      {'schedule', ARGV[1], 'scheduled_for_ms', ARGV[4]})
    emit_event(base_of(KEYS[3]), 'submitted', id, KEYS[4])
    created = 1
  end
  fired = 1
  redis.call('HSET', KEYS[1], 'last_fire_ms', ARGV[4], 'last_task', id, 'last_fired_at_ms', int(now))
  redis.call('HINCRBY', KEYS[1], 'fired', 1)
  reply = {'fired', id, created}
end

local skipped = (tonumber(ARGV[6]) or 1) - fired
if skipped > 0 then
  redis.call('HINCRBY', KEYS[1], 'skipped', skipped)
end
-- A schedule written by hand gets its id seed (`created_at_ms`) here, at
-- its first fire time's computation, before any tick fires.
redis.call('HSETNX', KEYS[1], 'created_at_ms', int(now))
redis.call('HSET', KEYS[1], 'next_fire_ms', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return reply
