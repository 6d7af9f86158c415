-- Changes a class's flow control (`tandem pause | resume | limit`): its
-- `<base>flow` hash holds pauses (`pause`, `pause:priority:<p>`,
-- `pause:kind:<k>`, each valued by when it began, ms) and rate limits
-- (`limit:kind:<k>`, `limit:key:<k>`, valued `N/P`: at most N starts per P
-- ms). The claim script reads it; see docs/wire-format.md. Removing a
-- limit also removes its state from `<base>limit_tat`.
--
-- KEYS[1] the class's flow hash
-- ARGV[1] `pause`, `resume`, `limit` or `unlimit`
-- ARGV[2] the field: `pause`, `pause:priority:<p>`, `pause:kind:<k>`,
--         `limit:kind:<k>`, `limit:key:<k>`
-- ARGV[3] for `limit`: `N/P`
--
-- Resuming a kind releases the tasks its pause held (`<base>held:<kind>`):
-- they enter the delayed set as due now, in the order they were held, and
-- the promoters are woken. Removing a limit leaves the tasks it parked to
-- come back at their reserved times. Returns {1} when the hash changed, {0}
-- when it already said so; the held tasks released, second.

local base = string.match(KEYS[1], '^(.*:)flow$')
if not base then
  return redis.error_reply('ERR ' .. KEYS[1] .. ' is not a flow hash (<prefix>:{class}:flow)')
end
local op, name = ARGV[1], ARGV[2]
local kind = string.match(name, '^pause:kind:(.+)$')
local checks = {KEYS[1], 'hash'}
if kind then
  for _, pair in ipairs({{base .. 'held:' .. kind, 'zset'}, {base .. 'delayed', 'zset'}}) do
    checks[#checks + 1] = pair[1]
    checks[#checks + 1] = pair[2]
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end

if op ~= 'pause' and op ~= 'resume' and op ~= 'limit' and op ~= 'unlimit' then
  return redis.error_reply('ERR unknown flow operation ' .. op)
end
-- Every change wakes the workers' promoters, which wake their
-- dispatchers: a resumed stream is claimed from at once.
redis.call('PUBLISH', promote_channel(base), base)
if op == 'pause' then
  return {redis.call('HSETNX', KEYS[1], name, int(now_ms())), 0}
elseif op == 'limit' then
  local changed = redis.call('HGET', KEYS[1], name) ~= ARGV[3]
  redis.call('HSET', KEYS[1], name, ARGV[3])
  return {changed and 1 or 0, 0}
elseif op == 'unlimit' then
  -- Its state goes too (tasks it parked keep their reserved turns).
  local target = string.match(name, '^limit:(.+)$')
  if target and redis.call('TYPE', base .. 'limit_tat')['ok'] == 'hash' then
    redis.call('HDEL', base .. 'limit_tat', target)
  end
  return {redis.call('HDEL', KEYS[1], name), 0}
end

local changed = redis.call('HDEL', KEYS[1], name)
local released = 0
if kind then
  local held = base .. 'held:' .. kind
  local delayed = base .. 'delayed'
  released = redis.call('ZCARD', held)
  if released > 0 then
    -- Weight 0 makes each held task due at once (score 0); ties promote
    -- in id order, and UUID v7 ids order by submission.
    redis.call('ZUNIONSTORE', delayed, 2, delayed, held, 'WEIGHTS', 1, 0, 'AGGREGATE', 'MIN')
    redis.call('DEL', held)
  end
end
return {changed, released}
