-- Changes a recurring schedule: put (create or replace), pause, resume,
-- remove, or mark it broken. Firing is fire.lua's. Each change bumps
-- nothing fire.lua fences on except as said, so a fire racing a change
-- either happens before it or finds its fence moved.
--
-- KEYS[1] the schedule's hash
-- KEYS[2] the class's schedule index (sorted set, score = next fire ms)
-- ARGV[1] `put`, `pause`, `resume`, `remove` or `broken`
-- ARGV[2] the schedule's name
-- put:    ARGV[3] the first fire time (ms), ARGV[4..] the definition's
--         pairs. The hash is rewritten (fields of an older definition do
--         not linger) keeping its counters and `created_at_ms` (the seed
--         of its tasks' ids: a tick fired before the replacement is not
--         fired again), `revision` goes up by one, and it is active.
--         Returns {'created' or 'replaced', revision}.
-- pause:  takes it out of firing (score +inf). Returns {'paused'}.
-- resume: ARGV[3] the next fire time (ms): ticks while paused are not
--         caught up. Returns {'resumed'}.
-- remove: deletes it. Returns {'removed'}.
-- broken: ARGV[3] the revision found unreadable, ARGV[4] why: keeps it
--         out of firing with `error` saying why, unless it changed since.
--         Returns {'broken'} or {'stale'}.
-- Every op but put returns {'not_found'} when there is no such schedule;
-- a WRONGTYPE error, with nothing written, when a key holds another type.

local problem = wrong_type({KEYS[1], 'hash', KEYS[2], 'zset'})
if problem then
  return redis.error_reply(problem)
end
local op, name = ARGV[1], ARGV[2]
local exists = redis.call('EXISTS', KEYS[1]) == 1
local now = now_ms()

if op == 'put' then
  local kept = {'created_at_ms', 'fired', 'skipped', 'last_fire_ms', 'last_fired_at_ms', 'last_task'}
  local old = redis.call('HMGET', KEYS[1], 'revision', unpack(kept))
  local revision = (tonumber(old[1]) or 0) + 1
  redis.call('DEL', KEYS[1])
  local fields = {KEYS[1], 'name', name, 'paused', '0', 'next_fire_ms', ARGV[3],
    'revision', int(revision), 'updated_at_ms', int(now)}
  for i = 4, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  for i = 1, #kept do
    if old[i + 1] then
      fields[#fields + 1] = kept[i]
      fields[#fields + 1] = old[i + 1]
    end
  end
  if not old[2] then
    fields[#fields + 1] = 'created_at_ms'
    fields[#fields + 1] = int(now)
  end
  redis.call('HSET', unpack(fields))
  redis.call('ZADD', KEYS[2], ARGV[3], name)
  return {exists and 'replaced' or 'created', int(revision)}
end

if not exists then
  redis.call('ZREM', KEYS[2], name)
  return {'not_found'}
end
if op == 'pause' then
  redis.call('HSET', KEYS[1], 'paused', '1', 'updated_at_ms', int(now))
  redis.call('ZADD', KEYS[2], '+inf', name)
  return {'paused'}
elseif op == 'resume' then
  redis.call('HSET', KEYS[1], 'paused', '0', 'next_fire_ms', ARGV[3], 'updated_at_ms', int(now))
  redis.call('HDEL', KEYS[1], 'error')
  redis.call('ZADD', KEYS[2], ARGV[3], name)
  return {'resumed'}
elseif op == 'remove' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], name)
  return {'removed'}
elseif op == 'broken' then
  if (redis.call('HGET', KEYS[1], 'revision') or '0') ~= ARGV[3] then
    return {'stale'}
  end
  redis.call('HSET', KEYS[1], 'error', ARGV[4])
  redis.call('ZADD', KEYS[2], '+inf', name)
  return {'broken'}
end
return redis.error_reply('ERR schedule.lua: unknown op ' .. tostring(op))
