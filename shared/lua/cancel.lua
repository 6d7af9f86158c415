-- Cancels a task. A queued task is finished as `cancelled` at once and its
-- entry deleted, so no worker ever starts it; a task waiting for a retry
-- leaves the delayed set the same way, and so does a delayed task
-- (scheduled for later, parked by a rate limit, or held by a paused kind:
-- it leaves `<base>held:<kind>`). A running task gets
-- `cancel_requested_at_ms`, and its id is published so the worker running it
-- stops it; the worker's commit then records `cancelled`. A split task
-- whose shards are running (no worker holds the parent) is cancelled at
-- once, with its shards. A task that ends here without a worker gives its
-- parameter blob's reference back (common.lua's give_back_params).
--
-- KEYS[1] the task record
-- ARGV[1] cancel channel
-- ARGV[2] record TTL, s
-- ARGV[3] reply stream approximate max length
-- ARGV[4] reply stream TTL, s
-- ARGV[5] task id
--
-- The notice goes to the record's `reply_to` only when that is a reply stream
-- of the task's own class (`<base>reply:<producer id>`, in the same slot).
--
-- Returns {'not_found'}, {'finished', status}, {'cancelled'} or {'requested'};
-- a WRONGTYPE error, with nothing written, when a key it would change holds
-- another type. A reply stream of another type only loses the notice: the
-- cancel stands, and the record's `notice_error` says why no notice came.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'not_found'}
end
if is_terminal(status) then
  return {'finished', status}
end
local now = now_ms()
local split = redis.call('HMGET', KEYS[1], 'shards', 'owner', 'shard_ids')
local waiting_for_shards = split[1] and not split[2]
if status == 'running' and not waiting_for_shards then
  redis.call('HSET', KEYS[1], 'cancel_requested_at_ms', int(now))
  redis.call('PUBLISH', ARGV[1], ARGV[5])
  return {'requested'}
end

local found = redis.call('HMGET', KEYS[1], 'entry', 'priority', 'reply_to', 'kind')
local entry, priority, reply_to, kind = found[1], found[2], found[3], found[4]
local base = string.match(KEYS[1], '^(.*:)task:[^:]+$')
local checks = {base .. 'delayed', 'zset'}
if status == 'delayed' and kind then
  checks[#checks + 1] = base .. 'held:' .. kind
  checks[#checks + 1] = 'zset'
end
if priority then
  checks[#checks + 1] = base .. 'stream:' .. priority
  checks[#checks + 1] = 'stream'
end
if waiting_for_shards then
  add_shard_checks(checks, base, split[3])
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local outcome = {'status', 'cancelled', 'finished_at_ms', int(now),
  'error_code', 'CANCELLED', 'error_message', waiting_for_shards and 'cancelled by a producer while its shards ran'
  or (status == 'delayed' and 'cancelled by a producer while it was delayed')
  or 'cancelled by a producer before it started'}
if not waiting_for_shards then
  give_back_params(base, held_params(base, ARGV[5], status, entry, priority))
end
redis.call('HSET', KEYS[1], unpack(outcome))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if status == 'retrying' or status == 'delayed' then
  redis.call('ZREM', base .. 'delayed', ARGV[5])
  if kind then
    redis.call('ZREM', base .. 'held:' .. kind, ARGV[5])
  end
  redis.call('DEL', base .. 'retry:' .. ARGV[5])
  redis.call('HDEL', KEYS[1], 'retry_at_ms', 'retry_stream', 'delay_reason')
elseif status == 'waiting' then
  -- A workflow node waiting for its parents: its entry waits here.
  redis.call('DEL', base .. 'wait:' .. ARGV[5])
  redis.call('HDEL', KEYS[1], 'wf_waiting')
elseif entry and priority then
  redis.call('XDEL', base .. 'stream:' .. priority, entry)
end
if waiting_for_shards then
  cancel_shards(base, split[3], now, ARGV[2], 'the task it is a shard of was cancelled')
  drop_split(base, ARGV[5])
end
local reply_prefix = base .. 'reply:'
if reply_to and string.sub(reply_to, 1, #reply_prefix) == reply_prefix and #reply_to > #reply_prefix then
  local unsent = notify(reply_to, ARGV[5], redis.call('HMGET', KEYS[1], unpack(NOTICE_FIELDS)), outcome,
    ARGV[3], ARGV[4])
  if unsent then
    redis.call('HSET', KEYS[1], 'notice_error', unsent)
  end
end
emit_event(base, 'cancelled', ARGV[5], KEYS[1])
-- A workflow node: its workflow counts it and cancels by its policy.
workflow_settle(KEYS[1], 'cancelled', nil, now, {ttl_s = ARGV[2], reply_maxlen = ARGV[3], reply_ttl_s = ARGV[4]})
return {'cancelled'}
