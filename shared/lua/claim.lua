-- Claims up to `max` tasks for one worker in strict priority order and starts
-- them, in one atomic step: a task is never seen as claimed but not started,
-- so a cancel either finds it queued (and it never runs) or running.
--
-- KEYS     the worker's task streams, highest priority first
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the worker id)
-- ARGV[3]  max tasks to claim
-- ARGV[4]  device name written into started records
-- ARGV[5]  aging threshold, ms: when > 0, first take one task from each
--          stream, below the highest one with waiting tasks, whose next
--          waiting entry is at least this old (so low priorities are never
--          starved); 0 skips that pass
-- ARGV[6]  1 to return last_ids when the streams run dry; 0 when the
--          worker's blocking wait is still armed and needs none
--
-- Returns {claimed, last_ids}. claimed holds {stream index, entry id, verdict,
-- fields} per entry; verdict is
--   run        started: the record says running, on this worker
--   expired    past its deadline; not started (the worker records it)
--   skip       its record is already final (cancelled, ...); acknowledged here
--   malformed  no readable task id; not started (the worker refuses it)
-- last_ids, only when fewer than max were claimed (and asked for), holds the
-- newest entry id of every stream (0-0 for an empty one), from which the
-- worker's blocking XREAD waits.
--
-- Entries are deleted when acknowledged, so a stream of length 0 has nothing
-- to deliver: XLEN (cheap) screens out empty streams before XREADGROUP.

local group, consumer, device = ARGV[1], ARGV[2], ARGV[4]
local remaining = tonumber(ARGV[3])
local aging_ms = tonumber(ARGV[5]) or 0
local want_last_ids = ARGV[6] == '1'
local now = now_ms()
local claimed = {}

local lengths = {}
for idx = 1, #KEYS do
  lengths[idx] = redis.call('XLEN', KEYS[idx])
end

local function start(idx, entry)
  local entry_id, fields = entry[1], entry[2]
  local id = field(fields, 'id')
  local verdict
  if not id or not is_task_id(id) then
    verdict = 'malformed'
  else
    local base = string.match(KEYS[idx], '^(.*:)stream:[^:]+$')
    local record = base .. 'task:' .. id
    local status = redis.call('HGET', record, 'status')
    if is_terminal(status) then
      redis.call('XACK', KEYS[idx], group, entry_id)
      redis.call('XDEL', KEYS[idx], entry_id)
      verdict = 'skip'
    else
      local deadline = tonumber(field(fields, 'deadline_ms') or '0') or 0
      if deadline > 0 and now > deadline then
        verdict = 'expired'
      else
        redis.call('HSET', record, 'status', 'running', 'worker', consumer, 'device', device,
          'attempt', field(fields, 'attempt') or '1', 'started_at_ms', int(now))
        verdict = 'run'
      end
    end
  end
  claimed[#claimed + 1] = {idx, entry_id, verdict, fields}
end

local function read(idx, count)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', KEYS[idx], '>')
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      remaining = remaining - 1
      start(idx, entry)
    end
  end
end

-- Aging: the first stream with waiting entries is served by the main pass
-- anyway. Of the streams below it, those whose next waiting entry has waited
-- at least aging_ms get one task each, the longest-waiting first.
if aging_ms > 0 then
  local first_waiting = nil
  local aged = {}
  for idx = 1, #KEYS do
    if lengths[idx] > 0 then
      local last_delivered = '0-0'
      for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[idx])) do
        if field(info, 'name') == group then
          last_delivered = field(info, 'last-delivered-id')
        end
      end
      local next_entry = redis.call('XRANGE', KEYS[idx], '(' .. last_delivered, '+', 'COUNT', 1)
      if #next_entry > 0 then
        if first_waiting == nil then
          first_waiting = idx
        else
          local added_ms = tonumber(string.match(next_entry[1][1], '^(%d+)'))
          if added_ms and now - added_ms >= aging_ms then
            aged[#aged + 1] = {idx, added_ms}
          end
        end
      end
    end
  end
  table.sort(aged, function(a, b) return a[2] < b[2] end)
  for _, candidate in ipairs(aged) do
    if remaining <= 0 then break end
    read(candidate[1], 1)
  end
end

for idx = 1, #KEYS do
  if remaining <= 0 then break end
  if lengths[idx] > 0 then
    read(idx, remaining)
  end
end

local last_ids = {}
if remaining > 0 and want_last_ids then
  for idx = 1, #KEYS do
    last_ids[idx] = '0-0'
    if lengths[idx] > 0 then
      local newest = redis.call('XREVRANGE', KEYS[idx], '+', '-', 'COUNT', 1)
      if #newest > 0 then
        last_ids[idx] = newest[1][1]
      end
    end
  end
end
return {claimed, last_ids}
