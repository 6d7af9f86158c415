-- Submits one task: appends its entry to the stream and creates its record,
-- unless an idempotency key already names a task, which is then returned,
-- or the task id already has a record: submitting the same task again (a
-- producer retrying after a lost reply) creates nothing new.
--
-- KEYS[1] the class and priority's stream
-- KEYS[2] the task record
-- KEYS[3] the idempotency key (only when the task has one)
-- ARGV[1] task id
-- ARGV[2] deadline relative to now, ms (0 = none)
-- ARGV[3] idempotency key TTL, s
-- ARGV[4] the idempotency key as given (copied into the record)
-- ARGV[5] params (MessagePack)
-- ARGV[6..] metadata pairs, copied into the entry and the record; two
--          names are not copied but read: `run_at_ms` (when to run it, ms
--          since the epoch by the Redis clock) and `delay_ms` (ms from
--          now), which make it a delayed task (see below)
--
-- A delayed task whose time has not come does not enter its stream: its
-- entry's fields wait in `<base>retry:<id>` and its id in the class's
-- delayed set, scored by its time; its record says `delayed` with
-- `delay_reason` `scheduled`, `run_at_ms` and `retry_at_ms`, and the
-- workers' promoters append it to the stream when it is due. Its deadline
-- counts from that time, not from now.
--
-- Returns {task id, 1} for a new task or {existing task id, 0}; a WRONGTYPE
-- error, with nothing written, when a key holds another type.

-- The delayed task's time, read before anything is written.
local run_at = nil
for i = 6, #ARGV, 2 do
  local name = ARGV[i]
  if name == 'run_at_ms' or name == 'delay_ms' then
    local value = tonumber(ARGV[i + 1])
    if not value or value ~= math.floor(value) or value < 0 then
      return redis.error_reply('ERR ' .. name .. ' must be a whole number of ms, 0 or more; got '
        .. string.format('%q', ARGV[i + 1]))
    end
    if name == 'delay_ms' then
      value = now_ms() + value
    end
    run_at = math.max(run_at or 0, value)
  end
end

local base = string.match(KEYS[2], '^(.*:)task:[^:]+$')
local checks = {KEYS[1], 'stream', KEYS[2], 'hash'}
if run_at and base then
  checks[#checks + 1] = base .. 'delayed'
  checks[#checks + 1] = 'zset'
end
if #KEYS >= 3 then
  checks[#checks + 1] = KEYS[3]
  checks[#checks + 1] = 'string'
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end

if #KEYS >= 3 then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    return {existing, 0}
  end
end

-- Claims the record (and says `queued`) only if the task id has none yet.
if redis.call('HSETNX', KEYS[2], 'status', 'queued') == 0 then
  return {ARGV[1], 0}
end

local now = now_ms()
local pairs_in = {}
for i = 6, #ARGV, 2 do
  if ARGV[i] ~= 'run_at_ms' and ARGV[i] ~= 'delay_ms' then
    pairs_in[#pairs_in + 1] = ARGV[i]
    pairs_in[#pairs_in + 1] = ARGV[i + 1]
  end
end
local extra = {}
if #KEYS >= 3 then
  extra = {'idempotency_key', ARGV[4]}
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
local later = run_at and {run_at = run_at, base = base, id = ARGV[1]}
add_task(KEYS[1], KEYS[2], now, tonumber(ARGV[2]) or 0, ARGV[5], pairs_in, extra, later)
-- Every field of the event is known here: it reads nothing back.
emit_event(base_of(KEYS[1]), 'submitted', ARGV[1], KEYS[2], {kind = field(pairs_in, 'kind') or false,
  attempt = field(pairs_in, 'attempt') or false, worker = false, device = false}, now)
return {ARGV[1], 1}
