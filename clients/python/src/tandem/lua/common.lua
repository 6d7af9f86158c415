-- Helpers shared by every Tandem script; each script's source is this file
-- followed by the script's own body (see shared/src/scripts.rs).
--
-- Numbers leave Lua through string.format('%d'), never tostring: Redis turns
-- a Lua number into text with 14 significant digits, which would write large
-- times in exponent form.

-- The clock, read once a call: every time a call writes (a batch's tasks
-- included) is the same instant, as the call is one atomic step; Redis's
-- own expiry also holds the clock still while a script runs.
local clock_ms = nil
local function now_ms()
  if clock_ms == nil then
    local t = redis.call('TIME')
    clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock_ms
end

local function int(n)
  return string.format('%d', n)
end

-- The value of `name` in a flat {name, value, name, value, ...} list.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- `tandem:{cpu}:` from `tandem:{cpu}:stream:high`: the part every key of a
-- class shares (nil for a key of no stream). The last key's is kept: a
-- batch's tasks share their stream (a cache of one allocates nothing, so a
-- call of one task pays nothing for it).
local base_key, base_found = nil, nil
local function base_of(stream_key)
  if stream_key ~= base_key then
    base_key, base_found = stream_key, string.match(stream_key, '^(.*:)stream:[^:]+$')
  end
  return base_found
end

local function is_terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled' or status == 'expired'
end

local function is_task_id(text)
  return string.match(text, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') ~= nil
end

-- Redis does not roll a script back when one of its commands fails: a
-- WRONGTYPE error after the first write leaves the writes before it in
-- place (a task `succeeded` and acknowledged, but its notice missing).
-- So every script that writes more than one key first checks each key it
-- will write (or read between writes) with this: `checks` is a flat list
-- {key, type, key, type, ...}, a type as TYPE names it ('hash', 'stream',
-- 'zset', 'string'); an absent key passes. Returns nil, or a message naming
-- the first key of another type, which the script returns as a WRONGTYPE
-- error before writing anything. The last key found fit for a type is not
-- asked again in the same call (a batch's tasks share their stream): the
-- scripts write each key only as the type they checked it for.
local fit_key, fit_type = nil, nil
local function wrong_type(checks)
  for i = 1, #checks, 2 do
    local key, want = checks[i], checks[i + 1]
    if key ~= fit_key or want ~= fit_type then
      local found = redis.call('TYPE', key)['ok']
      if found ~= 'none' and found ~= want then
        return 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want
          .. '; the call changed nothing'
      end
      fit_key, fit_type = key, want
    end
  end
  return nil
end

-- Flow control: delayed tasks, pauses and rate limits (promote.lua, the
-- claim's flow checks, submit.lua's `run_at_ms`). A task that must wait
-- leaves its stream: its entry's fields go to `<base>retry:<id>` (as a
-- retry's do), its id to the class's delayed set scored by when it may run
-- (or, held by a paused kind, to `<base>held:<kind>` until a resume), and
-- its record says `delayed` with a `delay_reason`: `scheduled` (submitted
-- for later), `limited` (a rate limit's next start) or `paused`. Promotion
-- appends it to the end of its stream again with the same attempt.

-- The channel every worker's promoter listens on: a delayed set got an
-- earlier head, or a resume released held tasks. `tandem:{cpu}:` gives
-- `tandem:promote`.
local function promote_channel(base)
  return (string.match(base, '^(.*):{[^}]*}:$') or 'tandem') .. ':promote'
end

-- Parks task `id` of stream `stream_key`: `fields` (the entry's, flat) into
-- its retry hash, its id into `zset_key` at `score` (ms), its record marked
-- `delayed` for `reason`. The caller deletes the stream entry, if any.
local function park(base, id, stream_key, fields, zset_key, score, reason)
  local retry_key = base .. 'retry:' .. id
  redis.call('DEL', retry_key)
  redis.call('HSET', retry_key, unpack(fields))
  if zset_key == base .. 'delayed' then
    -- The promoters sleep until the set's head is due: one that is to
    -- come sooner wakes them.
    local head = redis.call('ZRANGE', zset_key, 0, 0, 'WITHSCORES')
    if #head == 0 or tonumber(head[2]) > score then
      redis.call('PUBLISH', promote_channel(base), base)
    end
  end
  redis.call('ZADD', zset_key, score, id)
  local record_key = base .. 'task:' .. id
  redis.call('HSET', record_key, 'status', 'delayed', 'delay_reason', reason, 'retry_stream', stream_key)
  if reason == 'paused' then
    redis.call('HDEL', record_key, 'entry', 'owner', 'retry_at_ms')
  else
    redis.call('HSET', record_key, 'retry_at_ms', int(score))
    redis.call('HDEL', record_key, 'entry', 'owner')
  end
end

-- Adds to `checks` what promote_due (below) may write for the tasks of
-- class `base` due by `horizon`: the delayed set, each one's retry hash,
-- record and stream.
local function add_promote_checks(checks, base, horizon, limit)
  local delayed = base .. 'delayed'
  checks[#checks + 1] = delayed
  checks[#checks + 1] = 'zset'
  if redis.call('TYPE', delayed)['ok'] ~= 'zset' then
    return
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', horizon, 'LIMIT', 0, limit)) do
    local record_key = base .. 'task:' .. id
    for _, pair in ipairs({{base .. 'retry:' .. id, 'hash'}, {record_key, 'hash'}}) do
      checks[#checks + 1] = pair[1]
      checks[#checks + 1] = pair[2]
    end
    if redis.call('TYPE', record_key)['ok'] == 'hash' then
      local retry_stream = redis.call('HGET', record_key, 'retry_stream')
      if retry_stream and base_of(retry_stream) == base then
        checks[#checks + 1] = retry_stream
        checks[#checks + 1] = 'stream'
      end
    end
  end
end

-- Moves up to `limit` tasks of class `base` due by `now` from its delayed
-- set back into their streams; returns how many were looked at. A retry
-- comes back as its next attempt; a delayed task (scheduled, limited,
-- paused) as the same attempt. The cost is flat in the set's size: one
-- ZRANGEBYSCORE with LIMIT, then constant work per task. Scripts run one
-- at a time, and ZREM takes the id out in the same script, so two workers
-- never promote one task twice.
local function promote_due(base, now, limit)
  local delayed = base .. 'delayed'
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local retry_key = base .. 'retry:' .. id
    local record_key = base .. 'task:' .. id
    local fields = redis.call('HGETALL', retry_key)
    local known = redis.call('HMGET', record_key, 'retry_stream', 'status')
    local stream_key, status = known[1], known[2]
    if #fields > 0 and stream_key and base_of(stream_key) == base and status and not is_terminal(status) then
      local same_attempt = status == 'delayed'
      local entry = {stream_key, '*'}
      local attempt = 1
      for i = 1, #fields, 2 do
        local value = fields[i + 1]
        if fields[i] == 'attempt' then
          attempt = tonumber(value) or 1
          if not same_attempt then
            attempt = attempt + 1
          end
          value = int(attempt)
        end
        entry[#entry + 1] = fields[i]
        entry[#entry + 1] = value
      end
      if field(fields, 'attempt') == nil and not same_attempt then
        attempt = 2
        entry[#entry + 1] = 'attempt'
        entry[#entry + 1] = '2'
      end
      local entry_id = redis.call('XADD', unpack(entry))
      redis.call('HSET', record_key, 'status', 'queued', 'entry', entry_id, 'attempt', int(attempt))
      redis.call('HDEL', record_key, 'retry_at_ms', 'retry_stream', 'delay_reason')
    end
    redis.call('DEL', retry_key)
    redis.call('ZREM', delayed, id)
  end
  return #due
end

-- Adds to `checks` a task's record `key` (a hash) and, when it is one, the
-- stream its priority names (where a cancel deletes a queued task's entry).
local function add_record_checks(checks, base, key)
  checks[#checks + 1] = key
  checks[#checks + 1] = 'hash'
  if redis.call('TYPE', key)['ok'] == 'hash' then
    local priority = redis.call('HGET', key, 'priority')
    if priority then
      checks[#checks + 1] = base .. 'stream:' .. priority
      checks[#checks + 1] = 'stream'
    end
  end
end

-- Adds to `checks` the record of every shard in `shard_ids` and its stream
-- (see add_record_checks).
local function add_shard_checks(checks, base, shard_ids)
  for shard_id in string.gmatch(shard_ids or '', '%S+') do
    add_record_checks(checks, base, base .. 'task:' .. shard_id)
  end
end

-- The record fields a completion notice repeats besides the outcome: every
-- field a view of the finished task shows, so that what a waiting producer
-- learns from the notice equals what the record says.
local NOTICE_FIELDS = {'class', 'attempt', 'submitted_at_ms', 'started_at_ms', 'shards', 'kind',
  'priority', 'max_attempts', 'producer', 'deadline_ms', 'shards_done', 'parent', 'shard',
  'cancel_requested_at_ms', 'timeout_ms', 'progress', 'progress_msg', 'progress_at_ms'}

-- Appends a completion notice for task `id` to a producer's reply stream of
-- the task's class (the caller checks it is one, so it shares the slot):
-- `known`, the values of NOTICE_FIELDS in the record (HMGET order), then the
-- outcome `pairs` (status, finish time, worker, result or error, ...).
--
-- The reply stream belongs to the producer, not to the task: when its key
-- holds another type, the outcome stands and only the notice is left out.
-- Returns nil when the notice was written, else why not (the caller keeps
-- that in the record as `notice_error`, and it goes to Redis's log): the
-- producer's waiter finds the outcome in the record when it re-reads it.
local function notify(reply_key, id, known, pairs, maxlen, ttl_s)
  local args = {reply_key, 'MAXLEN', '~', maxlen, '*', 'id', id}
  for i = 1, #NOTICE_FIELDS do
    if known[i] then
      args[#args + 1] = NOTICE_FIELDS[i]
      args[#args + 1] = known[i]
    end
  end
  for i = 1, #pairs do
    args[#args + 1] = pairs[i]
  end
  -- A failed XADD writes nothing; only a key of another type is expected
  -- (and costs the TYPE that names it), anything else fails the script.
  local added = redis.pcall('XADD', unpack(args))
  if type(added) == 'table' and added.err then
    local found = redis.call('TYPE', reply_key)['ok']
    if found == 'none' or found == 'stream' then
      error(added.err)
    end
    local why = 'no completion notice: reply_to ' .. reply_key .. ' holds a ' .. found .. ', not a stream'
    redis.log(redis.LOG_WARNING, 'tandem: task ' .. id .. ': ' .. why)
    return why
  end
  redis.call('EXPIRE', reply_key, ttl_s)
  return nil
end

-- Appends one attempt to the record's history: a JSON array, one object per
-- attempt, every value a string (cjson would print large numbers in
-- exponent form).
local function add_history(record_key, attempt)
  local history = {}
  local current = redis.call('HGET', record_key, 'history')
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' then
      history = decoded
    end
  end
  history[#history + 1] = attempt
  local encoded = cjson.encode(history)
  redis.call('HSET', record_key, 'history', encoded)
  return encoded
end

-- Appends an entry's original fields, with why it died, to a dead-letter
-- stream; returns the dead letter's id. `fields` may be empty when the entry
-- itself is gone.
local function bury(dead_key, maxlen, fields, why)
  local args = {dead_key, 'MAXLEN', '~', maxlen, '*'}
  for i = 1, #fields do
    args[#args + 1] = fields[i]
  end
  for i = 1, #why do
    args[#args + 1] = why[i]
  end
  return redis.call('XADD', unpack(args))
end

-- The entry's fields, or an empty list when it was deleted.
local function entry_fields(stream_key, entry_id)
  local found = redis.call('XRANGE', stream_key, entry_id, entry_id)
  if #found == 1 then
    return found[1][2]
  end
  return {}
end

-- True when `consumer` still owns the pending entry: the fence every step
-- that finishes or extends a task passes first.
local function owns(stream_key, group, entry_id, consumer)
  local pending = redis.call('XPENDING', stream_key, group, entry_id, entry_id, 1)
  return #pending == 1 and pending[1][2] == consumer
end

-- The state index (shared/src/store/index.rs; wire format "State index"):
-- per class, one sorted set per state, `<base>index:<state>`, task ids
-- scored by when they entered it (ms), so that `tandem tasks --status`, the
-- dashboard and the queue metrics find tasks by state without a scan. Kept
-- by emit_event, the one call every change of state makes, whether events
-- are on or not. `running` and `retrying` hold the tasks in that state now
-- (an id leaves at its next change); the sets of ends (succeeded, failed,
-- cancelled, expired, dead) keep their newest INDEX_MAX ids, trimmed back
-- to that on one add in 16 (INDEX_TRIM_DIGIT): an id ends in random hex
-- digits (UUIDv7, or a schedule tick's hash), so between two trims a set
-- holds a few dozen ids over the cap, and a change of state costs one call
-- less the other 15 times. Readers skip
-- ids whose record expired or moved on. A key of another type only loses
-- the index entry (pcall), as an events stream of another type only loses
-- the event.
local INDEX_MAX = 10000
local INDEX_TRIM_DIGIT = 48 -- '0'
local INDEX_STATE = {started = 'running', retried = 'retrying', succeeded = 'succeeded',
  failed = 'failed', cancelled = 'cancelled', expired = 'expired', dead_lettered = 'dead'}
local function index_state(base, event, id, at_ms, never_retrying)
  local index = base .. 'index:'
  if event == 'requeued' then
    redis.pcall('ZREM', index .. 'dead', id)
    redis.pcall('ZREM', index .. 'failed', id)
    return
  end
  local state = INDEX_STATE[event]
  if not state then
    return
  end
  -- A task leaves `retrying` when it starts again, or ends without starting.
  -- (`never_retrying`: the caller knows it was not, a first attempt's start.)
  if (state == 'running' and not never_retrying) or state == 'cancelled' or state == 'expired' then
    redis.pcall('ZREM', index .. 'retrying', id)
  end
  if state ~= 'running' and state ~= 'dead' then
    redis.pcall('ZREM', index .. 'running', id)
  end
  redis.pcall('ZADD', index .. state, at_ms or now_ms(), id)
  if state ~= 'running' and state ~= 'retrying' and string.byte(id, -1) == INDEX_TRIM_DIGIT then
    redis.pcall('ZREMRANGEBYRANK', index .. state, 0, -(INDEX_MAX + 1))
  end
end

-- Lifecycle events (the wire format's "Events"): one entry per change of a
-- task in its class's `<base>events` stream, capped at about EVENTS_MAXLEN
-- entries. EVENTS_MAXLEN is the line the loader puts before this file
-- (shared/src/scripts.rs): 0 in the scripts a process loads with `events`
-- off, where this returns before any call, so that off costs one
-- comparison.
--
-- `event` is the event's name (submitted, started, progress, retried,
-- succeeded, failed, dead_lettered, cancelled, expired, requeued), `id` the
-- task's id, `record_key` its record, read for the kind, worker, device and
-- attempt after the change; `over` (name -> value, may be nil) replaces or
-- adds fields. The event is written after the change it reports; a key of
-- another type only loses the event (the change stands), as a reply stream
-- of another type only loses a notice.
local EVENT_FIELDS = {'kind', 'worker', 'device', 'attempt'}
-- The class in a base's braces (`cpu` of `tandem:{cpu}:`): the last
-- base's is kept.
local class_base, class_found = nil, nil
local function emit_event(base, event, id, record_key, over, at_ms, never_retrying)
  index_state(base, event, id, at_ms, never_retrying)
  if EVENTS_MAXLEN == 0 then
    return
  end
  over = over or {}
  -- The record is read only for what `over` does not give (the hot paths
  -- give all four, and the time as `at_ms`, and read nothing).
  local known = {}
  for i = 1, #EVENT_FIELDS do
    if over[EVENT_FIELDS[i]] == nil then
      known = redis.call('HMGET', record_key, unpack(EVENT_FIELDS))
      break
    end
  end
  if base ~= class_base then
    class_base, class_found = base, string.match(base, '{(.-)}') or ''
  end
  local class = class_found
  local args = {base .. 'events', 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', event, 'id', id,
    'class', class, 'at_ms', int(at_ms or now_ms())}
  for i = 1, #EVENT_FIELDS do
    local name = EVENT_FIELDS[i]
    local value = over[name]
    if value == nil then
      value = known[i]
    end
    if value then
      args[#args + 1] = name
      args[#args + 1] = value
    end
  end
  for name, value in pairs(over) do
    if value and not (name == 'kind' or name == 'worker' or name == 'device' or name == 'attempt') then
      args[#args + 1] = name
      args[#args + 1] = value
    end
  end
  local added = redis.pcall('XADD', unpack(args))
  if type(added) == 'table' and added.err then
    redis.log(redis.LOG_WARNING, 'tandem: no ' .. event .. ' event for task ' .. id .. ': ' .. added.err)
  end
end

-- Split tasks (split.lua). A split parent's record holds `shards`,
-- `shards_done` and `shard_ids`; its entry's fields wait in
-- `<base>split:<id>` and its shards' partial results in `<base>parts:<id>`
-- (field = shard index), both dropped once the parent is final.

-- Drops what a split parent keeps while its shards run.
local function drop_split(base, parent_id)
  redis.call('DEL', base .. 'split:' .. parent_id, base .. 'parts:' .. parent_id)
end

-- Ends every shard of a parent that is not final yet as `cancelled` (so no
-- worker starts one, and a running one's commit changes nothing), deleting
-- queued shards' entries.
local function cancel_shards(base, shard_ids, now, ttl_s, message)
  for shard_id in string.gmatch(shard_ids or '', '%S+') do
    local key = base .. 'task:' .. shard_id
    local found = redis.call('HMGET', key, 'status', 'entry', 'priority')
    if found[1] and not is_terminal(found[1]) then
      redis.call('HSET', key, 'status', 'cancelled', 'finished_at_ms', int(now),
        'error_code', 'CANCELLED', 'error_message', message)
      redis.call('HDEL', key, 'owner')
      redis.call('EXPIRE', key, ttl_s)
      if found[1] == 'queued' and found[2] and found[3] then
        redis.call('XDEL', base .. 'stream:' .. found[3], found[2])
      end
    end
  end
end

-- Parameter blobs of tasks no worker will run (revision 2.16). A task whose
-- `params` are a blob reference (wire format "Blob references": the
-- MessagePack map {"tandem_blob": ..., "len": ...}, these keys in this
-- order) holds one reference, kept by whatever holds its fields: its
-- stream entry, its retry hash, its workflow wait hash, a worker running
-- it (whose final commit gives it back, worker/src/blob_cache.rs). A
-- script that deletes those fields for good without a worker (a cancel of
-- a queued, retrying, delayed or waiting task, a workflow's cancel or
-- fail fast) calls this, once per task as the deletion is: the reference
-- goes onto the class's list `<base>blobs:release` as `<ms> <params>`,
-- which workers drain, releasing each once (worker/src/blob_release.rs).
-- A key of another type only loses the entry (pcall): the blob's TTL
-- remains the backstop.
local BLOB_REF_PREFIX = '\130\171tandem_blob'
local function give_back_params(base, params)
  if params and string.sub(params, 1, #BLOB_REF_PREFIX) == BLOB_REF_PREFIX then
    redis.pcall('RPUSH', base .. 'blobs:release', int(now_ms()) .. ' ' .. params)
  end
end

-- The parameters a task's stream entry, retry hash or wait hash holds,
-- by its status (nil when none, or when the key holds another type: only
-- the give-back is lost, as the callers' checks do not cover these reads).
local function held_params(base, id, status, entry, priority)
  local got
  if status == 'retrying' or status == 'delayed' then
    got = redis.pcall('HGET', base .. 'retry:' .. id, 'params')
  elseif status == 'waiting' then
    got = redis.pcall('HGET', base .. 'wait:' .. id, 'params')
  elseif entry and priority then
    local found = redis.pcall('XRANGE', base .. 'stream:' .. priority, entry, entry)
    if type(found) == 'table' and not found.err and #found == 1 then
      got = field(found[1][2], 'params')
    end
  end
  if type(got) == 'string' then
    return got
  end
  return nil
end

-- Workflows (workflow_submit.lua, workflow_cancel.lua, and the commit's
-- hook in complete.lua). A node is a task whose record holds `workflow`
-- (the key of the workflow's hash), `wf_node` (its name) and
-- `wf_children` (its children's record keys, space-separated). A node
-- whose parents have not all succeeded is `waiting`: its entry's fields
-- wait in `<base>wait:<id>` and `wf_waiting` counts the parents still to
-- succeed. The commit that makes a node `succeeded` copies its result into
-- each waiting child's wait hash as `input:<node>` and, for a child whose
-- count reaches 0, appends the child's entry to its stream (the results
-- in its field `inputs`): in the same script, so a crash cannot lose or
-- repeat a release.

-- The pub/sub channel of cancel requests: `tandem:cancel` from
-- `tandem:{cpu}:`.
local function cancel_channel(base)
  return (string.match(base, '^(.*):{[^}]*}:$') or 'tandem') .. ':cancel'
end

-- Counts one node of workflow `wf_key` as final (`ok`: it succeeded); the
-- last one makes the workflow final and sets its TTL.
local function wf_count_final(wf_key, ok, now, ttl_s)
  if redis.call('TYPE', wf_key)['ok'] ~= 'hash' then
    return
  end
  if not ok then
    redis.call('HINCRBY', wf_key, 'failed', 1)
  end
  if redis.call('HINCRBY', wf_key, 'remaining', -1) <= 0 then
    local state = redis.call('HMGET', wf_key, 'failed', 'cancel_requested_at_ms')
    local status = 'succeeded'
    if state[2] then
      status = 'cancelled'
    elseif (tonumber(state[1]) or 0) > 0 then
      status = 'failed'
    end
    redis.call('HSET', wf_key, 'status', status, 'finished_at_ms', int(now))
    redis.call('EXPIRE', wf_key, ttl_s)
  end
end

-- Cancels one node that is not final: at once when it waits, is queued,
-- retrying or delayed (its entry, wait hash or retry hash deleted, its
-- producer notified, its parameter blob's reference given back), by
-- request when it runs (the commit makes it `cancelled`). Returns 'final', 'requested', or nil when it was final
-- already. `opts`: ttl_s, reply_maxlen, reply_ttl_s, message.
local function wf_cancel_node(record_key, now, opts)
  local found = redis.call('HMGET', record_key, 'status', 'entry', 'priority', 'kind', 'reply_to',
    'owner', 'shards', 'shard_ids', 'cancel_requested_at_ms')
  local status = found[1]
  if not status or is_terminal(status) then
    return nil
  end
  local base, id = string.match(record_key, '^(.*:)task:([^:]+)$')
  local waiting_for_shards = found[7] and not found[6]
  if status == 'running' and not waiting_for_shards then
    if not found[9] then
      redis.call('HSET', record_key, 'cancel_requested_at_ms', int(now))
      redis.call('PUBLISH', cancel_channel(base), id)
    end
    return 'requested'
  end
  give_back_params(base, held_params(base, id, status, found[2], found[3]))
  local outcome = {'status', 'cancelled', 'finished_at_ms', int(now), 'error_code', 'CANCELLED',
    'error_message', opts.message}
  redis.call('HSET', record_key, unpack(outcome))
  redis.call('HDEL', record_key, 'owner', 'wf_waiting')
  redis.call('EXPIRE', record_key, opts.ttl_s)
  if status == 'retrying' or status == 'delayed' then
    redis.call('ZREM', base .. 'delayed', id)
    if found[4] then
      redis.call('ZREM', base .. 'held:' .. found[4], id)
    end
    redis.call('DEL', base .. 'retry:' .. id)
    redis.call('HDEL', record_key, 'retry_at_ms', 'retry_stream', 'delay_reason')
  elseif status == 'waiting' then
    redis.call('DEL', base .. 'wait:' .. id)
  elseif found[2] and found[3] then
    redis.call('XDEL', base .. 'stream:' .. found[3], found[2])
  end
  if waiting_for_shards then
    cancel_shards(base, found[8], now, opts.ttl_s, 'the task it is a shard of was cancelled')
    drop_split(base, id)
  end
  local reply_prefix = base .. 'reply:'
  local reply_to = found[5]
  if reply_to and string.sub(reply_to, 1, #reply_prefix) == reply_prefix and #reply_to > #reply_prefix then
    local unsent = notify(reply_to, id, redis.call('HMGET', record_key, unpack(NOTICE_FIELDS)), outcome,
      opts.reply_maxlen, opts.reply_ttl_s)
    if unsent then
      redis.call('HSET', record_key, 'notice_error', unsent)
    end
  end
  emit_event(base, 'cancelled', id, record_key)
  return 'final'
end

-- Cancels the given nodes (record keys), counting those that end now.
local function wf_cancel_nodes(wf_key, targets, now, opts)
  for _, target in ipairs(targets) do
    if wf_cancel_node(target, now, opts) == 'final' then
      wf_count_final(wf_key, false, now, opts.ttl_s)
    end
  end
end

-- Adds to `checks` what workflow_settle may write for node `record_key`:
-- the workflow's hash, and each child's record, wait hash and stream.
-- `node`, when the caller has read them already: {workflow, wf_children}
-- of the record (a commit reads them with the rest of it, so that a task
-- outside any workflow costs no call here).
local function add_workflow_checks(checks, record_key, node)
  local wf = node
  if not wf then
    if redis.call('TYPE', record_key)['ok'] ~= 'hash' then
      return
    end
    wf = redis.call('HMGET', record_key, 'workflow', 'wf_children')
  end
  if not wf[1] then
    return
  end
  checks[#checks + 1] = wf[1]
  checks[#checks + 1] = 'hash'
  for child in string.gmatch(wf[2] or '', '%S+') do
    local base, id = string.match(child, '^(.*:)task:([^:]+)$')
    if base then
      checks[#checks + 1] = base .. 'wait:' .. id
      checks[#checks + 1] = 'hash'
      add_record_checks(checks, base, child)
      -- A child with a delay or a run_at is parked at its release.
      checks[#checks + 1] = base .. 'retry:' .. id
      checks[#checks + 1] = 'hash'
      checks[#checks + 1] = base .. 'delayed'
      checks[#checks + 1] = 'zset'
    else
      checks[#checks + 1] = child
      checks[#checks + 1] = 'hash'
    end
  end
end

-- MessagePack of a string (a map key).
local function mp_str(text)
  local n = #text
  if n < 32 then
    return string.char(0xa0 + n) .. text
  elseif n < 256 then
    return string.char(0xd9, n) .. text
  elseif n < 65536 then
    return struct.pack('>BI2', 0xda, n) .. text
  end
  return struct.pack('>BI4', 0xdb, n) .. text
end

-- A released node's entry fields from its wait hash (flat): the parents'
-- results, each kept as `input:<parent>`, become one field `inputs`, a
-- MessagePack map from parent name to result, so that a chord of
-- thousands of parents is still an entry of a few fields.
local function wf_entry_fields(waiting)
  local fields = {}
  local parts = {}
  local count = 0
  for i = 1, #waiting, 2 do
    local name = waiting[i]
    if string.sub(name, 1, 6) == 'input:' then
      count = count + 1
      local result = waiting[i + 1]
      if result == '' then
        result = string.char(0xc0)
      end
      parts[#parts + 1] = mp_str(string.sub(name, 7))
      parts[#parts + 1] = result
    else
      fields[#fields + 1] = name
      fields[#fields + 1] = waiting[i + 1]
    end
  end
  if count > 0 then
    fields[#fields + 1] = 'inputs'
    fields[#fields + 1] = struct.pack('>BI4', 0xdf, count) .. table.concat(parts)
  end
  return fields
end

-- The commit's hook: node `record_key` became final with `status` (and
-- `result` when it succeeded). Releases the children whose last parent
-- this was: into their stream, or, for one with a `wf_delay_ms` (ms after
-- this release) or a `run_at_ms` still to come, into the delayed set until
-- the later of the two (workflow_submit.lua's header); on any other
-- outcome cancels, by the workflow's `on_failure`,
-- every node not yet final (`fail_fast`) or this node's descendants
-- (`continue`). Does nothing for a task of no workflow.
local function workflow_settle(record_key, status, result, now, opts, node)
  -- `node`: {workflow, wf_node, wf_children} when the caller read them.
  node = node or redis.call('HMGET', record_key, 'workflow', 'wf_node', 'wf_children')
  local wf_key, name, children = node[1], node[2], node[3]
  if not wf_key then
    return
  end
  wf_count_final(wf_key, status == 'succeeded', now, opts.ttl_s)
  if status == 'succeeded' then
    for child in string.gmatch(children or '', '%S+') do
      local found = redis.call('HMGET', child, 'status', 'priority', 'wf_delay_ms', 'run_at_ms')
      local base, id = string.match(child, '^(.*:)task:([^:]+)$')
      if found[1] == 'waiting' and found[2] and base then
        local wait_key = base .. 'wait:' .. id
        redis.call('HSET', wait_key, 'input:' .. (name or ''), result or '')
        if redis.call('HINCRBY', child, 'wf_waiting', -1) <= 0 then
          local stream = base .. 'stream:' .. found[2]
          local fields = wf_entry_fields(redis.call('HGETALL', wait_key))
          local due = tonumber(found[4]) or 0
          if found[3] then
            due = math.max(due, now + (tonumber(found[3]) or 0))
          end
          redis.call('HDEL', child, 'wf_waiting', 'wf_delay_ms')
          redis.call('DEL', wait_key)
          if due > now then
            park(base, id, stream, fields, base .. 'delayed', due, 'scheduled')
            redis.call('HSET', child, 'released_at_ms', int(now), 'run_at_ms', int(due))
          else
            local entry_id = redis.call('XADD', stream, '*', unpack(fields))
            redis.call('HSET', child, 'status', 'queued', 'entry', entry_id, 'released_at_ms', int(now))
          end
          emit_event(base, 'released', id, child, {parent_node = name, at_ms = now})
        end
      end
    end
    return
  end
  local why = 'workflow node ' .. (name or '?') .. ' ended ' .. status
  local cancel_opts = {ttl_s = opts.ttl_s, reply_maxlen = opts.reply_maxlen, reply_ttl_s = opts.reply_ttl_s,
    message = why}
  local targets = {}
  if redis.call('HGET', wf_key, 'on_failure') == 'continue' then
    -- The descendants, breadth first, each once.
    local seen = {}
    local queue = {}
    for child in string.gmatch(children or '', '%S+') do
      queue[#queue + 1] = child
    end
    local i = 1
    while i <= #queue do
      local at = queue[i]
      i = i + 1
      if not seen[at] then
        seen[at] = true
        targets[#targets + 1] = at
        for grandchild in string.gmatch(redis.call('HGET', at, 'wf_children') or '', '%S+') do
          queue[#queue + 1] = grandchild
        end
      end
    end
  else
    for other in string.gmatch(redis.call('HGET', wf_key, 'records') or '', '%S+') do
      if other ~= record_key then
        targets[#targets + 1] = other
      end
    end
  end
  wf_cancel_nodes(wf_key, targets, now, cancel_opts)
end

-- A dead workflow node put back in its stream (requeue.lua): its failure
-- was counted final when it was dead-lettered, so the workflow counts it
-- as not final again (`remaining` up, `failed` down) and, when that ended
-- the workflow, runs again (`status` `running`, no `finished_at_ms`, no
-- TTL). Its commit then counts it once more, as any node's. Nodes that its
-- failure cancelled stay cancelled. Does nothing for a task of no
-- workflow, or whose workflow's hash is gone.
local function workflow_requeued(record_key)
  local wf_key = redis.call('HGET', record_key, 'workflow')
  if not wf_key or redis.call('TYPE', wf_key)['ok'] ~= 'hash' then
    return
  end
  if (tonumber(redis.call('HGET', wf_key, 'failed')) or 0) > 0 then
    redis.call('HINCRBY', wf_key, 'failed', -1)
  end
  if redis.call('HINCRBY', wf_key, 'remaining', 1) == 1 then
    redis.call('HSET', wf_key, 'status', 'running')
    redis.call('HDEL', wf_key, 'finished_at_ms')
    redis.call('PERSIST', wf_key)
  end
end

-- Adds to `checks` what fail_parent (below) may write for a shard of
-- `parent_id`: the parent's record, split and parts hashes, the class's
-- dead-letter stream and the parent's other shards.
local function add_parent_checks(checks, base, parent_id)
  local parent_key = base .. 'task:' .. parent_id
  for _, pair in ipairs({{parent_key, 'hash'}, {base .. 'split:' .. parent_id, 'hash'},
      {base .. 'parts:' .. parent_id, 'hash'}, {base .. 'dead', 'stream'}}) do
    checks[#checks + 1] = pair[1]
    checks[#checks + 1] = pair[2]
  end
  if redis.call('TYPE', parent_key)['ok'] == 'hash' then
    add_shard_checks(checks, base, redis.call('HGET', parent_key, 'shard_ids'))
  end
end

-- A shard failed for good: its parent ends `failed` with the shard's error,
-- the parent's own entry goes to the dead-letter stream (requeueing it runs
-- the whole task again), the other shards are cancelled and the parent's
-- producer is told (on `reply_to` only when it starts with
-- `opts.reply_prefix`, the class's `<base>reply:`: a reply stream of the
-- same slot). A parent whose cancel was requested ends `cancelled`
-- instead, with no dead letter. Returns the dead letter's id, or nil when
-- there is none (the parent was already final, or is cancelled).
local function fail_parent(base, parent_id, shard_index, code, message, now, opts)
  local parent_key = base .. 'task:' .. parent_id
  local parent = redis.call('HMGET', parent_key, 'status', 'shards', 'shard_ids', 'reply_to',
    'cancel_requested_at_ms')
  if not parent[1] or is_terminal(parent[1]) then
    return nil
  end
  local text = 'shard ' .. shard_index .. ' of ' .. (parent[2] or '?') .. ' failed: ' .. (message or '')
  local outcome, dead_id
  if parent[5] then
    -- A producer asked to cancel the task (before it was split): it ends
    -- `cancelled`, as its commit would have made it, not `failed`, and
    -- nothing is dead-lettered.
    outcome = {'status', 'cancelled', 'finished_at_ms', int(now), 'error_code', 'CANCELLED',
      'error_message', 'cancelled by a producer while its shards ran (' .. text .. ')'}
  else
    local fields = redis.call('HGETALL', base .. 'split:' .. parent_id)
    local priority = field(fields, 'priority')
    dead_id = bury(base .. 'dead', opts.dead_maxlen, fields, {'reason', code, 'error_message', text,
      'attempts', field(fields, 'attempt') or '1', 'history', '[]', 'dead_at_ms', int(now),
      'stream', priority and (base .. 'stream:' .. priority) or '', 'entry', ''})
    outcome = {'status', 'failed', 'finished_at_ms', int(now), 'error_code', code,
      'error_message', text, 'dead_letter', dead_id}
  end
  redis.call('HSET', parent_key, unpack(outcome))
  redis.call('HDEL', parent_key, 'owner')
  redis.call('EXPIRE', parent_key, opts.ttl_s)
  cancel_shards(base, parent[3], now, opts.ttl_s, 'another shard of the task failed')
  drop_split(base, parent_id)
  emit_event(base, outcome[2], parent_id, parent_key, {error_code = code, dead_letter = dead_id})
  -- A split task that is a workflow node: its workflow learns it failed.
  workflow_settle(parent_key, outcome[2], nil, now, opts)
  if dead_id then
    emit_event(base, 'dead_lettered', parent_id, parent_key, {error_code = code, dead_letter = dead_id})
  end
  local reply_to = parent[4]
  if reply_to and string.sub(reply_to, 1, #opts.reply_prefix) == opts.reply_prefix
      and #reply_to > #opts.reply_prefix then
    local unsent = notify(reply_to, parent_id, redis.call('HMGET', parent_key, unpack(NOTICE_FIELDS)), outcome,
      opts.reply_maxlen, opts.reply_ttl_s)
    if unsent then
      redis.call('HSET', parent_key, 'notice_error', unsent)
    end
  end
  return dead_id
end

-- Creates a task whose record the caller has just claimed (`HSETNX
-- <record> status queued` answered 1): appends its entry to `stream_key`
-- (the metadata `pairs`, a flat list, then `submitted_at_ms`, `deadline_ms`
-- when `deadline_in` > 0, and `params`) and writes the same metadata, the
-- times and the entry id into the record, with the flat list `extra` of
-- record-only fields. The one creation path of submit.lua and fire.lua (a
-- schedule's tick).
--
-- `later` (may be nil) makes it a delayed task: {run_at = ms, base = the
-- class prefix, id = the task id}. Its deadline counts from run_at, the
-- record gets `run_at_ms`, and when run_at is still ahead the entry's
-- fields are parked in the class's delayed set instead of the stream (see
-- park; promotion appends them when due). Returns the entry id, or nil
-- when parked.
local function add_task(stream_key, record_key, now, deadline_in, params, pairs, extra, later)
  local entry = {stream_key, '*'}
  local record = {record_key, 'submitted_at_ms', int(now)}
  for i = 1, #pairs, 2 do
    entry[#entry + 1] = pairs[i]
    entry[#entry + 1] = pairs[i + 1]
    record[#record + 1] = pairs[i]
    record[#record + 1] = pairs[i + 1]
  end
  entry[#entry + 1] = 'submitted_at_ms'
  entry[#entry + 1] = int(now)
  if deadline_in > 0 then
    local deadline = math.max(now, later and later.run_at or now) + deadline_in
    entry[#entry + 1] = 'deadline_ms'
    entry[#entry + 1] = int(deadline)
    record[#record + 1] = 'deadline_ms'
    record[#record + 1] = int(deadline)
  end
  if later then
    record[#record + 1] = 'run_at_ms'
    record[#record + 1] = int(later.run_at)
  end
  -- Only the entry carries the parameters (`tandem task` reads them there,
  -- or in the retry hash or dead letter): a copy in the record would turn
  -- it from a compact listpack into a hash table once over 64 bytes.
  entry[#entry + 1] = 'params'
  entry[#entry + 1] = params
  local entry_id = nil
  if later and later.run_at > now and later.base then
    -- Not due yet: it waits in the delayed set (park writes the record's
    -- status and times; the fields are those XADD would write).
    local fields = {}
    for i = 3, #entry do
      fields[#fields + 1] = entry[i]
    end
    park(later.base, later.id, stream_key, fields, later.base .. 'delayed', later.run_at, 'scheduled')
  else
    entry_id = redis.call('XADD', unpack(entry))
    record[#record + 1] = 'entry'
    record[#record + 1] = entry_id
  end
  for i = 1, #extra do
    record[#record + 1] = extra[i]
  end
  redis.call('HSET', unpack(record))
  return entry_id
end

-- Submits one task (submit.lua's whole work; submit_many.lua's per task):
-- appends its entry and creates its record, unless the idempotency key
-- `idem_key` (nil when the task has none) already names a task, which is
-- then returned, or the task id already has a record. `args[first..last]`
-- are the metadata pairs (see submit.lua for `run_at_ms` and `delay_ms`).
-- Returns {id, 1} for a new task, {existing id, 0}, or an error table
-- ({err = ...}) with nothing written.
local function submit_task(stream_key, record_key, idem_key, id, deadline_in, ttl, idem_given, params,
    args, first, last)
  -- One clock reading for the whole submit: TIME moves on while a script
  -- runs, and a delay counts from the submit time the record shows.
  local now = now_ms()
  -- The delayed task's time, read before anything is written.
  local run_at = nil
  for i = first, last, 2 do
    local name = args[i]
    if name == 'run_at_ms' or name == 'delay_ms' then
      local value = tonumber(args[i + 1])
      if not value or value ~= math.floor(value) or value < 0 then
        return redis.error_reply('ERR ' .. name .. ' must be a whole number of ms, 0 or more; got '
          .. string.format('%q', args[i + 1]))
      end
      if name == 'delay_ms' then
        value = now + value
      end
      run_at = math.max(run_at or 0, value)
    end
  end

  local base = string.match(record_key, '^(.*:)task:[^:]+$')
  -- (The record is checked by its HSETNX below, the first write: it fails
  -- on a key of another type, and only then is the type asked for.)
  local checks = {stream_key, 'stream'}
  if run_at and base then
    checks[#checks + 1] = base .. 'delayed'
    checks[#checks + 1] = 'zset'
  end
  if idem_key then
    checks[#checks + 1] = idem_key
    checks[#checks + 1] = 'string'
  end
  local problem = wrong_type(checks)
  if problem then
    return redis.error_reply(problem)
  end

  if idem_key then
    local existing = redis.call('GET', idem_key)
    if existing then
      return {existing, 0}
    end
  end

  -- Claims the record (and says `queued`) only if the task id has none yet.
  local fresh = redis.pcall('HSETNX', record_key, 'status', 'queued')
  if type(fresh) == 'table' and fresh.err then
    -- Only a key of another type is the task's problem. Any other error is
    -- the server's (READONLY from a master demoted to a replica, OOM) and
    -- goes to the caller as it came, code and all, so that it retries
    -- where it should. This task wrote nothing (a batch's earlier tasks
    -- stand, and a retry finds them by their ids).
    if string.sub(fresh.err, 1, 10) ~= 'WRONGTYPE ' then
      error(fresh)
    end
    return redis.error_reply('WRONGTYPE ' .. record_key .. ' holds a ' .. redis.call('TYPE', record_key)['ok']
      .. ', not a hash; the call changed nothing')
  end
  if fresh == 0 then
    return {id, 0}
  end

  local pairs_in = {}
  for i = first, last, 2 do
    if args[i] ~= 'run_at_ms' and args[i] ~= 'delay_ms' then
      pairs_in[#pairs_in + 1] = args[i]
      pairs_in[#pairs_in + 1] = args[i + 1]
    end
  end
  local extra = {}
  if idem_key then
    extra = {'idempotency_key', idem_given}
    redis.call('SET', idem_key, id, 'EX', ttl)
  end
  local later = run_at and {run_at = run_at, base = base, id = id}
  add_task(stream_key, record_key, now, tonumber(deadline_in) or 0, params, pairs_in, extra, later)
  -- Every field of the event is known here: it reads nothing back.
  emit_event(base_of(stream_key), 'submitted', id, record_key, {kind = field(pairs_in, 'kind') or false,
    attempt = field(pairs_in, 'attempt') or false, worker = false, device = false}, now)
  return {id, 1}
end
