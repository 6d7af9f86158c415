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
local deadline_in = tonumber(ARGV[2]) or 0
-- A delayed task's deadline counts from its time.
local deadline_from = math.max(now, run_at or now)

local entry = {KEYS[1], '*'}
local record = {KEYS[2], 'submitted_at_ms', int(now)}
for i = 6, #ARGV, 2 do
  if ARGV[i] ~= 'run_at_ms' and ARGV[i] ~= 'delay_ms' then
    entry[#entry + 1] = ARGV[i]
    entry[#entry + 1] = ARGV[i + 1]
    record[#record + 1] = ARGV[i]
    record[#record + 1] = ARGV[i + 1]
  end
end
entry[#entry + 1] = 'submitted_at_ms'
entry[#entry + 1] = int(now)
if deadline_in > 0 then
  entry[#entry + 1] = 'deadline_ms'
  entry[#entry + 1] = int(deadline_from + deadline_in)
  record[#record + 1] = 'deadline_ms'
  record[#record + 1] = int(deadline_from + deadline_in)
end
if run_at then
  record[#record + 1] = 'run_at_ms'
  record[#record + 1] = int(run_at)
end
-- Only the entry carries the parameters (`tandem task` reads them there,
-- or in the retry hash or dead letter): a copy in the record would turn it
-- from a compact listpack into a hash table once over 64 bytes.
entry[#entry + 1] = 'params'
entry[#entry + 1] = ARGV[5]

if run_at and run_at > now and base then
  -- Not due yet: it waits in the delayed set (park writes the record's
  -- status and times; the entry's fields are those XADD would write).
  local fields = {}
  for i = 3, #entry do
    fields[#fields + 1] = entry[i]
  end
  park(base, ARGV[1], KEYS[1], fields, base .. 'delayed', run_at, 'scheduled')
else
  local entry_id = redis.call('XADD', unpack(entry))
  record[#record + 1] = 'entry'
  record[#record + 1] = entry_id
end
if #KEYS >= 3 then
  record[#record + 1] = 'idempotency_key'
  record[#record + 1] = ARGV[4]
  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[3])
end
redis.call('HSET', unpack(record))
emit_event(base_of(KEYS[1]), 'submitted', ARGV[1], KEYS[2])
return {ARGV[1], 1}
