-- Commits what became of a task, in one atomic step, only while this worker
-- still holds its entry (the fence: a worker whose task was taken over, or
-- handed back, changes nothing). Then, by disposition:
--   final  the record gets its final status (succeeded, cancelled, expired)
--          and the result or error; the producer is notified
--   retry  the entry's fields are parked in a retry hash, the task id goes
--          into the class's delayed set for when the retry is due, the record
--          says `retrying`
--   dead   the entry goes to the class's dead-letter stream with the reason
--          and the attempt history; the record ends `failed`; the producer is
--          notified
--   handback  the entry goes back to the end of its stream at once, its
--          `memory_bytes` raised to at least ARGV[11] and the device it ran
--          on added to its `avoid` list (that device ran out of memory, or
--          cannot run the kind), so its worker leaves it for another; the
--          record says `queued` again and its history notes the attempt as
--          `handed_back`. Not a failed attempt.
-- In every case the entry is acknowledged and deleted. A record that is
-- already final is left alone, and a cancel requested while the task ran
-- turns any outcome into `cancelled`.
--
-- Shards of a split task (records with `parent`, see split.lua): a shard
-- that succeeds stores its result in the parent's parts hash (not in its
-- own record) and counts itself in the parent's `shards_done`; the last
-- one puts the parent's entry back into the stream with `merge` = 1. A
-- shard that ends any other way for good fails the parent (fail_parent in
-- common.lua); its own dead letter is the parent's. A split parent that
-- becomes final drops its split and parts hashes.
--
-- A commit batch: one call commits many tasks of one class (one hash
-- slot), each exactly as if it were committed alone: its own fence, its own
-- checks and its own outcome. A task whose commit fails (a key of another
-- type, or an error Redis raises) gets an error in its place of the reply,
-- with the others committed. The worker sends, in one call, the tasks that
-- finished while its previous round trip was on the wire.
--
-- KEYS     each task's keys in turn (4 or 5, as counted in ARGV)
-- ARGV[1]  number of tasks n
-- ARGV[2..] per task: its key count, its argument count, then its
--          arguments; a task's keys and arguments are, in its own numbering:
--
-- KEYS[1]  the task record
-- KEYS[2]  the task's stream
-- KEYS[3]  the class's delayed set
-- KEYS[4]  the class's dead-letter stream
-- KEYS[5]  the producer's reply stream of the task's class (only when there
--          is one to notify): `<base>reply:<producer id>`, in the class's slot
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  consumer (this worker)
-- ARGV[4]  record TTL once final, s
-- ARGV[5]  reply stream approximate max length
-- ARGV[6]  reply stream TTL, s
-- ARGV[7]  largest result, bytes, carried inside the notice
-- ARGV[8]  task id
-- ARGV[9]  status: succeeded, failed, cancelled or expired
-- ARGV[10] disposition: final, retry, dead or handback
-- ARGV[11] for retry: ms from now until the retry is due; for handback: the
--          least memory_bytes the entry goes back with
-- ARGV[12] dead-letter stream approximate max length
-- ARGV[13] attempt number
-- ARGV[14..] record pairs (worker, device, run_us, result_bytes and result,
--           or error_code and error_message)
--
-- Returns one reply per task, in order: 1 when committed, 2 when committed
-- as `cancelled` because a cancel was requested while it ran (whatever
-- ARGV[9] said), 0 when the record was already final (the entry is
-- acknowledged), -1 when this worker no longer owns the entry; a
-- WRONGTYPE error, with nothing written, when a key it would change holds
-- another type (the entry then stays pending). A reply stream of another
-- type only loses the notice: the outcome is committed, and the record's
-- `notice_error` says why no notice came (see notify in common.lua).

-- The record fields of NOTICE_FIELDS a commit reads for itself: a split's
-- or shard's links, the start (for the history), a cancel request, and the
-- kind and attempt (for the event).
local COMMIT_FIELDS = {'parent', 'shard', 'shards', 'started_at_ms', 'cancel_requested_at_ms',
  'kind', 'attempt'}

-- What a commit's one HMGET reads (see below) for the `repeated` fields
-- (NOTICE_FIELDS or COMMIT_FIELDS): built once a call, not once a task of
-- a batch (the last list is kept).
local read_for, read_built = nil, nil
local function read_list(repeated)
  if repeated ~= read_for then
    local read = {'status', 'history', 'owner'}
    for i = 1, #repeated do
      read[#read + 1] = repeated[i]
    end
    for _, name in ipairs({'workflow', 'wf_node', 'wf_children'}) do
      read[#read + 1] = name
    end
    read_for, read_built = repeated, read
  end
  return read_built
end

local function commit_task(KEYS, ARGV)
  local record_key, stream_key = KEYS[1], KEYS[2]
  local group, entry_id, consumer = ARGV[1], ARGV[2], ARGV[3]
  -- One read for everything below: the status, history and owner, then the
  -- fields a notice repeats (among them the cancel request, the start, and a
  -- shard's parent or a split task's shard count), by name in `known`.
  -- The workflow fields come last: a task outside any workflow then pays no
  -- further read for the workflow checks and hook below.
  -- A task without a notice (no reply stream: KEYS[5] absent) reads only
  -- the fields this script uses itself.
  local repeated = NOTICE_FIELDS
  if #KEYS < 5 then
    repeated = COMMIT_FIELDS
  end
  local current = redis.call('HMGET', record_key, unpack(read_list(repeated)))
  local known = {}
  for i = 1, #repeated do
    known[repeated[i]] = current[3 + i]
  end
  local wf_at = 3 + #repeated
  local workflow_node = {current[wf_at + 1], current[wf_at + 2], current[wf_at + 3]}
  local owner = current[3]
  local parent_id, shard_index, split_parent = known.parent, known.shard, known.shards
  local started_at_ms = known.started_at_ms
  -- The fence. Every step that hands an entry to a worker (claim, take-over,
  -- sweep) sets `owner` to that worker and entry in the same script, and a
  -- retry or hand-back clears it, so `owner` is who holds the entry now.
  if owner ~= consumer .. ' ' .. entry_id then
    return -1
  end
  -- Every key this commit may change, checked before the first write: the
  -- retry set and the dead-letter stream only when the outcome may go there
  -- (a cancel only ever makes it final).
  do
    local base = base_of(stream_key)
    -- (The retry hash is deleted before it is written, so its type does not
    -- matter.)
    local checks = {stream_key, 'stream'}
    if ARGV[10] ~= 'final' then
      for _, pair in ipairs({{KEYS[3], 'zset'}, {KEYS[4], 'stream'}}) do
        checks[#checks + 1] = pair[1]
        checks[#checks + 1] = pair[2]
      end
    end
    if parent_id then
      add_parent_checks(checks, base, parent_id)
    end
    if split_parent then
      add_shard_checks(checks, base, redis.call('HGET', record_key, 'shard_ids'))
    end
    -- Workflows: the node's workflow and children (see workflow_settle).
    if not parent_id then
      add_workflow_checks(checks, record_key, {workflow_node[1], workflow_node[3]})
    end
    local problem = wrong_type(checks)
    if problem then
      return redis.error_reply(problem)
    end
  end
  if is_terminal(current[1]) then
    redis.call('XACK', stream_key, group, entry_id)
    redis.call('XDEL', stream_key, entry_id)
    return 0
  end

  local now = now_ms()
  local status, disposition = ARGV[9], ARGV[10]
  local cancelled = status ~= 'expired' and known.cancel_requested_at_ms ~= false
  if cancelled then
    status, disposition = 'cancelled', 'final'
  end

  -- The record's new fields: status and finish time first, then the
  -- outcome pairs (worker, device, error_code, ...), also kept by name for
  -- the retry and dead paths below (the first of a name counts).
  local record = {'status', status, 'finished_at_ms', int(now)}
  local outcomes = {}
  local function add_outcome(name, value)
    record[#record + 1] = name
    record[#record + 1] = value
    if outcomes[name] == nil then
      outcomes[name] = value
    end
  end
  for i = 14, #ARGV, 2 do
    local name = ARGV[i]
    local dropped = (cancelled and (name == 'result' or name == 'result_bytes' or name == 'error_code'
      or name == 'error_message')) or (parent_id and name == 'result')
    if not dropped then
      add_outcome(name, ARGV[i + 1])
    end
  end
  if cancelled then
    redis.call('HDEL', record_key, 'result', 'result_bytes')
    add_outcome('error_code', 'CANCELLED')
    add_outcome('error_message', 'cancelled by a producer while running')
  end

  -- The value of an outcome pair.
  local function outcome(name)
    return outcomes[name]
  end

  if disposition == 'handback' then
    local fields = entry_fields(stream_key, entry_id)
    if #fields > 0 then
      local min_memory = tonumber(ARGV[11]) or 0
      local device = outcome('device') or ''
      local entry = {stream_key, '*'}
      local has_memory, has_avoid = false, false
      for i = 1, #fields, 2 do
        local value = fields[i + 1]
        if fields[i] == 'memory_bytes' then
          has_memory = true
          if (tonumber(value) or 0) < min_memory then
            value = int(min_memory)
          end
        elseif fields[i] == 'avoid' then
          has_avoid = true
          if not string.find(',' .. value .. ',', ',' .. device .. ',', 1, true) then
            value = value .. ',' .. device
          end
        end
        entry[#entry + 1] = fields[i]
        entry[#entry + 1] = value
      end
      if not has_memory then
        entry[#entry + 1] = 'memory_bytes'
        entry[#entry + 1] = int(min_memory)
      end
      if not has_avoid and device ~= '' then
        entry[#entry + 1] = 'avoid'
        entry[#entry + 1] = device
      end
      local new_id = redis.call('XADD', unpack(entry))
      if started_at_ms then
        add_history(record_key, {attempt = ARGV[13], started_at_ms = started_at_ms,
          finished_at_ms = int(now), status = 'handed_back', worker = outcome('worker'),
          device = outcome('device'), error_code = outcome('error_code'),
          error_message = outcome('error_message')})
      end
      redis.call('HSET', record_key, 'status', 'queued', 'entry', new_id)
      redis.call('HDEL', record_key, 'started_at_ms', 'worker', 'device', 'owner')
      redis.call('XACK', stream_key, group, entry_id)
      redis.call('XDEL', stream_key, entry_id)
      return 1
    end
    -- The entry vanished while running; nothing to hand back.
    disposition = 'dead'
  end

  -- The attempt, for the history: kept for tasks that needed more than one
  -- attempt or did not succeed (a first attempt that succeeded says all it has
  -- to say in the record itself); only attempts that started have one.
  local history = nil
  local needs_history = status ~= 'succeeded' or ARGV[13] ~= '1' or current[2] ~= false
  if started_at_ms and needs_history then
    history = add_history(record_key, {attempt = ARGV[13], started_at_ms = started_at_ms,
      finished_at_ms = int(now), status = status, worker = outcome('worker'), device = outcome('device'),
      error_code = outcome('error_code'), error_message = outcome('error_message')})
  end

  -- Only a retry or a dead letter needs the entry's fields.
  local fields = {}
  if disposition ~= 'final' then
    fields = entry_fields(stream_key, entry_id)
  end
  if disposition == 'retry' and #fields == 0 then
    -- The entry vanished while running; nothing to retry from.
    disposition = 'dead'
  end

  if disposition == 'retry' then
    local base = base_of(stream_key)
    local task_id = ARGV[8]
    local due = now + (tonumber(ARGV[11]) or 0)
    local retry_key = base .. 'retry:' .. task_id
    redis.call('DEL', retry_key)
    redis.call('HSET', retry_key, unpack(fields))
    redis.call('ZADD', KEYS[3], due, task_id)
    local retrying = {'status', 'retrying', 'retry_at_ms', int(due), 'retry_stream', stream_key}
    for _, name in ipairs({'error_code', 'error_message', 'worker', 'device'}) do
      local value = outcome(name)
      if value then
        retrying[#retrying + 1] = name
        retrying[#retrying + 1] = value
      end
    end
    redis.call('HSET', record_key, unpack(retrying))
    redis.call('HDEL', record_key, 'owner')
    redis.call('XACK', stream_key, group, entry_id)
    redis.call('XDEL', stream_key, entry_id)
    emit_event(base, 'retried', task_id, record_key, {error_code = outcome('error_code'),
      retry_at_ms = int(due)})
    return 1
  end

  local base = base_of(stream_key)
  local split_opts = nil
  if parent_id then
    split_opts = {dead_maxlen = ARGV[12], ttl_s = ARGV[4], reply_maxlen = ARGV[5], reply_ttl_s = ARGV[6],
      reply_prefix = base .. 'reply:'}
  end
  local dead_id = nil
  if parent_id and status ~= 'succeeded' then
    -- The parent's dead letter stands for the shard's.
    dead_id = fail_parent(base, parent_id, shard_index, outcome('error_code') or 'HANDLER_ERROR',
      outcome('error_message'), now, split_opts)
  elseif disposition == 'dead' then
    -- A merge entry is buried as the task it came from, so a requeue runs
    -- the whole task again.
    local kept = {}
    for i = 1, #fields, 2 do
      if fields[i] ~= 'merge' and fields[i] ~= 'shards' then
        kept[#kept + 1] = fields[i]
        kept[#kept + 1] = fields[i + 1]
      end
    end
    dead_id = bury(KEYS[4], ARGV[12], kept, {'reason', outcome('error_code') or 'BAD_PAYLOAD',
      'error_message', outcome('error_message') or '', 'attempts', ARGV[13], 'history', history or '[]',
      'dead_at_ms', int(now), 'stream', stream_key, 'entry', entry_id})
  end
  if dead_id then
    record[#record + 1] = 'dead_letter'
    record[#record + 1] = dead_id
  end
  -- A split task's record describes the whole task, not only its merge step:
  -- when its first shard started, the handler time of all its shards and the
  -- devices they ran on (in shard order, each once). The shards' records are
  -- final and still there (they expire with the parent's). Only reads, and a
  -- key that is not a hash (a hand edit) is skipped: an error here would leave
  -- the writes above without the record's.
  if split_parent and not parent_id then
    local first, run_us, devices, seen = nil, 0, {}, {}
    local shard_ids = redis.call('HGET', record_key, 'shard_ids') or ''
    for shard_id in string.gmatch(shard_ids, '%S+') do
      local shard_key = base .. 'task:' .. shard_id
      local shard = {false, false, false}
      if redis.call('TYPE', shard_key).ok == 'hash' then
        shard = redis.call('HMGET', shard_key, 'started_at_ms', 'run_us', 'device')
      end
      local started = tonumber(shard[1])
      if started and (first == nil or started < first) then
        first = started
      end
      run_us = run_us + (tonumber(shard[2]) or 0)
      if shard[3] and not seen[shard[3]] then
        seen[shard[3]] = true
        devices[#devices + 1] = shard[3]
      end
    end
    if first then
      record[#record + 1] = 'shards_started_at_ms'
      record[#record + 1] = int(first)
    end
    record[#record + 1] = 'shards_run_us'
    record[#record + 1] = int(run_us)
    record[#record + 1] = 'shards_devices'
    record[#record + 1] = table.concat(devices, ',')
  end
  redis.call('HSET', record_key, unpack(record))
  redis.call('EXPIRE', record_key, ARGV[4])
  redis.call('XACK', stream_key, group, entry_id)
  redis.call('XDEL', stream_key, entry_id)
  -- The event's fields as the record holds them now (read above, or written
  -- here), so that it reads nothing back when the worker sent its name and
  -- device.
  emit_event(base, status, ARGV[8], record_key, {error_code = outcome('error_code'), dead_letter = dead_id,
    kind = outcome('kind') or known.kind, attempt = outcome('attempt') or known.attempt,
    worker = outcome('worker'), device = outcome('device')}, now)
  if dead_id and not parent_id then
    emit_event(base, 'dead_lettered', ARGV[8], record_key, {error_code = outcome('error_code'),
      dead_letter = dead_id})
  end

  if split_parent then
    drop_split(base, ARGV[8])
  end

  -- Side effects of a success: the record is final and the entry gone; what
  -- a succeeded task releases elsewhere (a shard's part of its parent) goes
  -- here, before the notice below.
  if parent_id and status == 'succeeded' then
    local parent_key = base .. 'task:' .. parent_id
    local parent = redis.call('HMGET', parent_key, 'status', 'shards')
    if parent[1] and not is_terminal(parent[1]) then
      local result = ''
      for i = 14, #ARGV, 2 do
        if ARGV[i] == 'result' then
          result = ARGV[i + 1]
        end
      end
      redis.call('HSET', base .. 'parts:' .. parent_id, shard_index, result)
      local done = redis.call('HINCRBY', parent_key, 'shards_done', 1)
      -- The parent's progress, by shards done (the merge is the rest).
      local total = tonumber(parent[2]) or 0
      if total > 0 then
        local fraction = string.format('%.4f', math.min(done / total, 1))
        local message = int(done) .. ' of ' .. int(total) .. ' shards done'
        redis.call('HSET', parent_key, 'progress', fraction, 'progress_msg', message, 'progress_at_ms', int(now))
        emit_event(base, 'progress', parent_id, parent_key, {progress = fraction, progress_msg = message})
      end
      if done >= (tonumber(parent[2]) or 0) then
        local merge = redis.call('HGETALL', base .. 'split:' .. parent_id)
        if #merge > 0 then
          for _, pair in ipairs({{'merge', '1'}, {'shards', parent[2]}}) do
            merge[#merge + 1] = pair[1]
            merge[#merge + 1] = pair[2]
          end
          local merge_id = redis.call('XADD', stream_key, '*', unpack(merge))
          redis.call('HSET', parent_key, 'entry', merge_id)
        else
          fail_parent(base, parent_id, shard_index, 'BAD_PAYLOAD', 'the parent task entry is gone', now,
            split_opts)
        end
      end
    end
  end

  -- Workflows: a node's success releases the children it was the last
  -- parent of, its failure cancels by the workflow's policy (common.lua).
  if not parent_id and workflow_node[1] then
    workflow_settle(record_key, status, outcome('result'), now,
      {ttl_s = ARGV[4], reply_maxlen = ARGV[5], reply_ttl_s = ARGV[6]}, workflow_node)
  end

  if #KEYS >= 5 then
    local inline_limit = tonumber(ARGV[7])
    local notice = {}
    -- What the record says now, so that a wait shows what `status` shows:
    -- the fields as read above, or as this commit wrote them (no other step
    -- of a commit writes a notice field of its own record).
    local written = {}
    for i = 1, #record, 2 do
      local name = record[i]
      written[name] = record[i + 1]
      if not (name == 'result' and #record[i + 1] > inline_limit) then
        notice[#notice + 1] = name
        notice[#notice + 1] = record[i + 1]
      end
    end
    local now_known = {}
    for i = 1, #NOTICE_FIELDS do
      local name = NOTICE_FIELDS[i]
      local value = written[name]
      if value ~= nil then
        now_known[i] = value
      else
        now_known[i] = known[name]
      end
    end
    local unsent = notify(KEYS[5], ARGV[8], now_known, notice, ARGV[5], ARGV[6])
    if unsent then
      redis.call('HSET', record_key, 'notice_error', unsent)
    end
  end
  -- A cancel that came while the task ran made this outcome `cancelled`:
  -- say so, so that the worker counts what the record says, not what it sent.
  if cancelled and ARGV[9] ~= 'cancelled' then
    return 2
  end
  return 1
end

-- The batch: each task's keys and arguments in its own numbering, its
-- commit run under pcall, so that an error Redis raises in one task's
-- commit (after the checks, which return theirs) fails that task alone.
local n = tonumber(ARGV[1]) or 0
local results = {}
local key_at, arg_at = 1, 2
for t = 1, n do
  local key_count, arg_count = tonumber(ARGV[arg_at]), tonumber(ARGV[arg_at + 1])
  local keys = {unpack(KEYS, key_at, key_at + key_count - 1)}
  local args = {unpack(ARGV, arg_at + 2, arg_at + 1 + arg_count)}
  key_at = key_at + key_count
  arg_at = arg_at + 2 + arg_count
  local ok, result = pcall(commit_task, keys, args)
  if not ok then
    -- Redis's own errors keep their code (WRONGTYPE, NOGROUP, ...); a Lua
    -- error has none and gets ERR.
    local message = type(result) == 'table' and result.err or tostring(result)
    if not string.match(message, '^%u[%u_]* ') then
      message = 'ERR ' .. message
    end
    result = redis.error_reply(message)
  end
  results[t] = result
end
return results
