-- Claims up to `max` tasks for one worker and starts them, in one atomic
-- step: a task is never seen as claimed but not started, so a cancel finds
-- it either queued (and it never runs) or running. In order:
--
-- 1. promote: retries that are due move from the delayed sets of the
--    worker's classes back into their streams (when asked);
-- 2. reap: the pending entries of dead workers (their heartbeat lapsed, or
--    their process is known to have ended; the worker names them) are taken
--    over, and a dead worker with nothing left pending is removed from the
--    group;
-- 3. sweep: entries idle longer than the lease timeout, whoever holds them,
--    are taken over (the backstop; when asked);
-- 4. aging: one task from each stream below the highest one with waiting
--    tasks whose next entry has waited at least aging_ms (when asked);
-- 5. the main pass: new entries in stream order, highest priority first.
--
-- Routing: each stream comes with the worker's rule for its class (see
-- shared/src/routing.rs), and the claim carries the worker's free device
-- memory. An entry is taken only when the rule admits it: it fits the free
-- memory, the class's per-claim limit is not reached, and one of the rule's
-- clauses holds (it has waited long enough, and declares more memory than
-- the clause's floor). Entries are taken in order, so a stream whose next
-- entry is refused is passed over; the reply says why (`blocked`). Taken-over
-- entries (reap, sweep) are judged by the same rule, their wait being their
-- idle time.
--
-- Nothing is taken beyond `max`, so a worker never holds more than it can
-- start. Entries are deleted when acknowledged, so a stream of length 0 has
-- nothing to deliver: XLEN (cheap) screens streams out of the new-entry and
-- aging passes. Without the aging pass, a promotion or a take-over, the
-- main pass reads each stream's length as it comes to it and stops when
-- the claim is full (a claim of one slot reads the lengths down to the
-- first stream with work, not all 16).
--
-- KEYS     the worker's task streams, highest priority first
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the worker id)
-- ARGV[3]  max tasks to claim
-- ARGV[4]  device name written into started records
-- ARGV[5]  aging threshold, ms (0: skip the aging pass)
-- ARGV[6]  1 to return last_ids when the streams run dry (to arm the
--          worker's blocking wait); 0 when its wait is still armed
-- ARGV[7]  sweep: min idle time, ms (0: skip the sweep)
-- ARGV[8]  max deliveries: a task whose blame (below) reaches this is
--          poison, not started
-- ARGV[9]  1 to promote due retries
-- ARGV[10] free device memory, bytes (-1: no limit)
-- ARGV[11] number of dead consumers that follow
-- ARGV[12..] dead consumers, two values each: the name, then `dead` (its
--          process ended, or nothing more is known) or `stalled` (its
--          process still exists: stopped or hung, so its tasks did not kill
--          it); then the number of doorbell arrivals that follow (see
--          Wake-ups below; 0 for none) and two values each: the stream's
--          position in KEYS and the entry id; then one rule per key: `off`,
--          or `limit=N` (optional) then clauses `AGE/OVER` (ms waited,
--          memory floor in bytes, -1 for none): `0/-1` takes everything at
--          once
--
-- Blame: a take-over tells apart a task that kills its worker from one
-- whose worker died for other reasons. The worker it is taken from held n
-- tasks (its pending entries in these streams when it died): a death while
-- the task was the only one (n = 1) counts 1, a death beside others 1/n
-- (any of them may have caused it), a stalled worker 0. The task's record
-- keeps the sum for its current entry in `deaths`, with what was observed,
-- and its history gets a `taken_over` attempt. A task whose blame plus its
-- entry's `interrupted` (hand-backs by failed devices) reaches max
-- deliveries is poison. When a dead worker's entries are not all taken in
-- one claim, the rest are marked (`died_with`) with the n it died holding.
--
-- Wake-ups: an idle worker claims when its doorbell (a blocking XREAD on
-- its streams) reads an arrival, and every idle worker watching the stream
-- reads the same one. The worker passes the arrivals that woke it. When the
-- claim has nothing else to do (no promotion, sweep, take-over or aging
-- pass) and the group has already delivered every one of them (its
-- last-delivered-id is at or past each: another worker's claim, run first,
-- took them and all before them), there is nothing new for this claim: it
-- returns at once, {{}, {}, {}, {}, 1}, without reading a length or an
-- entry, and the worker waits again from just past the arrivals. An arrival
-- still undelivered (no claim ran yet, or the one that ran was full or its
-- routing refused it) makes the claim run in full, so routing and priority
-- order are as without the gate; only the claims for nothing are cut.
--
-- Returns {claimed, last_ids, gone, blocked}. claimed holds {stream index, entry id,
-- verdict, fields, attempt, observed} per entry; verdict is
--   run        started: the record says running, on this worker
--   expired    past its deadline; not started (the worker records it)
--   skip       its record is already final; acknowledged and deleted here
--   malformed  no readable task id; not started (the worker buries it)
--   poison     blamed for max deliveries worker deaths (see Blame); not
--              started (the worker dead-letters it with the sixth value of
--              its tuple: what was observed)
-- last_ids, only when fewer than max were claimed (and asked for), holds the
-- newest entry id of every stream (0-0 for an empty one), from which the
-- worker's blocking XREAD waits. gone lists "stream entry-id" of entries
-- the take-over or the sweep found deleted while pending (Redis drops them
-- from the pending list; the worker logs them). blocked holds, per stream,
-- why its next entry was not taken: 0 (it was, or the stream is empty or
-- off), N > 0 (a clause admits it in N ms), -1 (it does not fit the free
-- memory), -2 (no clause admits it).

-- Flow control, read before anything is written: each class's
-- `<base>flow` hash (written by `tandem pause` and `tandem limit`; see
-- docs/wire-format.md) holds its pauses and rate limits. An empty or
-- absent hash (the usual case) costs one HGETALL per class and nothing per
-- entry. A paused class or priority is passed over like a stream whose
-- rule is off; a paused kind's entries and rate-limited entries are parked
-- (see park in common.lua) as they are read, so they hold no slot and do
-- not block the entries behind them.
local flows = {}
local flow_bases = {}
-- Reads the flow hash of class `base` (once) and checks the keys its
-- parking may write; returns an error reply, or nil.
local function load_flow(base)
  if flows[base] then
    return nil
  end
  local flow_key = base .. 'flow'
  local raw = redis.pcall('HGETALL', flow_key)
  if type(raw) == 'table' and raw.err then
    return redis.error_reply('WRONGTYPE ' .. flow_key .. ' holds a ' .. redis.call('TYPE', flow_key)['ok']
      .. ', not a hash; the call changed nothing')
  end
  local flow = {paused = false, priorities = {}, kinds = {}, limits = {}, checks = false}
  for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    local priority = string.match(name, '^pause:priority:(.+)$')
    local kind = string.match(name, '^pause:kind:(.+)$')
    local target = string.match(name, '^limit:(.+)$')
    if name == 'pause' then
      flow.paused = true
    elseif priority then
      flow.priorities[priority] = true
    elseif kind then
      flow.kinds[kind] = true
      flow.checks = true
    elseif target then
      -- `N/P`: at most N starts per P ms; kept as the emission interval
      -- in microseconds (GCRA's T). A value in another form is ignored.
      local count, period = string.match(value, '^(%d+)/(%d+)$')
      if count and tonumber(count) > 0 and tonumber(period) > 0 then
        flow.limits[target] = tonumber(period) * 1000 / tonumber(count)
        flow.checks = true
      end
    end
  end
  flows[base] = flow
  if flow.checks then
    flow_bases[#flow_bases + 1] = base
    -- What parking may write, checked here for the same reason as below.
    local checks = {base .. 'delayed', 'zset', base .. 'limit_tat', 'hash'}
    for kind in pairs(flow.kinds) do
      checks[#checks + 1] = base .. 'held:' .. kind
      checks[#checks + 1] = 'zset'
    end
    local problem = wrong_type(checks)
    if problem then
      return redis.error_reply(problem)
    end
  end
  return nil
end
-- Which classes' flows are read: every class's when this claim may write
-- before its streams' XLEN (a promotion) or take over pending entries (a
-- reap or a sweep: a stream of length 0 may still hold some), else only
-- those of classes with an entry waiting (read after the XLEN below: a
-- claim of one free slot over 4 classes then reads 1 hash, not 4).
local flows_first = ARGV[9] == '1' or (tonumber(ARGV[7]) or 0) > 0 or (tonumber(ARGV[11]) or 0) > 0
if flows_first then
  for idx = 1, #KEYS do
    local base = base_of(KEYS[idx])
    if base then
      local problem = load_flow(base)
      if problem then
        return problem
      end
    end
  end
end

-- Type checks before the first write (see wrong_type in common.lua). The
-- only writes before the streams' XLEN below are the promotion of due
-- retries (once a second): when it runs, the streams, each class's delayed
-- set and the retry hashes, records and streams of the retries that may be
-- due are checked here; otherwise the XLEN itself checks each stream, still
-- before any write, and a claim does not pay a TYPE per stream (at one
-- free slot that was 16 calls per task: the queue bench's consume 0.82x).
-- A key of another type fails the claim with a WRONGTYPE error that names
-- it, and nothing is changed.
if ARGV[9] == '1' then
  local checks, bases = {}, {}
  for idx = 1, #KEYS do
    checks[#checks + 1] = KEYS[idx]
    checks[#checks + 1] = 'stream'
    local base = base_of(KEYS[idx])
    if base and not bases[base] then
      bases[base] = true
      bases[#bases + 1] = base
    end
  end
  -- A second ahead of the promote pass's own clock, so that its due
  -- retries are among these.
  local horizon = now_ms() + 1000
  for _, base in ipairs(bases) do
    add_promote_checks(checks, base, horizon, 100)
  end
  local problem = wrong_type(checks)
  if problem then
    return redis.error_reply(problem)
  end
end

-- The class prefix of stream `idx` (`tandem:{cpu}:`), matched once per claim.
local bases_at = {}
local function base_at(idx)
  local base = bases_at[idx]
  if base == nil then
    base = base_of(KEYS[idx])
    bases_at[idx] = base
  end
  return base
end

local group, consumer, device = ARGV[1], ARGV[2], ARGV[4]
local remaining = tonumber(ARGV[3])
local aging_ms = tonumber(ARGV[5]) or 0
local want_last_ids = ARGV[6] == '1'
local sweep_ms = tonumber(ARGV[7]) or 0
local max_deliveries = tonumber(ARGV[8]) or 3
local promote = ARGV[9] == '1'
local free_mem = tonumber(ARGV[10]) or -1
local dead_count = tonumber(ARGV[11]) or 0
local dead = {}
local stalled = {}
for i = 12, 10 + 2 * dead_count, 2 do
  dead[#dead + 1] = ARGV[i]
  stalled[ARGV[i]] = ARGV[i + 1] == 'stalled'
end
local arrivals_at = 12 + 2 * dead_count
local arrival_count = tonumber(ARGV[arrivals_at]) or 0

-- The id of the newest entry the group has given out in stream `idx`
-- (`0-0` when none yet; nil when the key holds no stream).
local function last_delivered(idx)
  local infos = redis.pcall('XINFO', 'GROUPS', KEYS[idx])
  if type(infos) ~= 'table' or infos.err then
    return nil
  end
  for _, info in ipairs(infos) do
    if field(info, 'name') == group then
      return field(info, 'last-delivered-id')
    end
  end
  return '0-0'
end

-- Wake-ups (see above): has the group given out entry `id` of stream `idx`?
local function delivered(idx, id)
  local last = KEYS[idx] and last_delivered(idx)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  local last_ms, last_seq = string.match(last or '', '^(%d+)-(%d+)$')
  if not (ms and last_ms) then
    return false
  end
  ms, last_ms = tonumber(ms), tonumber(last_ms)
  return last_ms > ms or (last_ms == ms and tonumber(last_seq) >= tonumber(seq))
end
if arrival_count > 0 and dead_count == 0 and not promote and sweep_ms == 0 and aging_ms == 0 then
  local elsewhere = true
  for i = arrivals_at + 1, arrivals_at + 2 * arrival_count, 2 do
    local idx = tonumber(ARGV[i])
    if not (idx and delivered(idx, ARGV[i + 1])) then
      elsewhere = false
      break
    end
  end
  if elsewhere then
    return {{}, {}, {}, {}, 1}
  end
end
local now = now_ms()
local claimed = {}
local gone = {}
local blocked = {}
local any_blocked = false

-- Rules, one per stream; streams of one class share theirs, so each text
-- is read once. A plain rule (take everything at once) with no memory
-- limit needs no look at the entries before reading them; a claim without
-- rules (a CPU worker with no GPU around) is all plain.
local PLAIN = {limit = 0, clauses = {{0, -1}}, off = false, plain = free_mem < 0}
local function parse_rule(text)
  local rule = {limit = 0, clauses = {}}
  if text ~= 'off' then
    for token in string.gmatch(text, '%S+') do
      local limit = string.match(token, '^limit=(%d+)$')
      if limit then
        rule.limit = tonumber(limit)
      else
        local age, over = string.match(token, '^(%d+)/(%-?%d+)$')
        if age then
          rule.clauses[#rule.clauses + 1] = {tonumber(age), tonumber(over)}
        end
      end
    end
  end
  rule.off = #rule.clauses == 0
  rule.plain = free_mem < 0 and rule.limit == 0 and #rule.clauses == 1
    and rule.clauses[1][1] == 0 and rule.clauses[1][2] < 0
  return rule
end
local rules = {}
local first_rule = arrivals_at + 1 + 2 * arrival_count
if #ARGV < first_rule then
  for idx = 1, #KEYS do
    rules[idx] = PLAIN
  end
else
  local parsed = {}
  for idx = 1, #KEYS do
    local text = ARGV[first_rule - 1 + idx] or '0/-1'
    local rule = parsed[text]
    if rule == nil then
      rule = parse_rule(text)
      parsed[text] = rule
    end
    rules[idx] = rule
  end
end
local taken_per_class = {}

-- A paused class or priority: its streams are passed over, take-overs
-- included (nothing starts), and `blocked` says -3 while an entry waits.
local paused_stream = {}
local function mark_paused()
  for idx = 1, #KEYS do
    local base = base_at(idx)
    local flow = base and flows[base]
    if flow and (flow.paused or flow.priorities[string.match(KEYS[idx], ':stream:([^:]+)$')]) then
      paused_stream[idx] = true
      rules[idx] = {limit = 0, clauses = {}, off = true, plain = false}
    end
  end
end
if flows_first then
  mark_paused()
end

-- Whether stream idx's rule admits an entry with these fields that has
-- waited age ms. Returns true, or false and the `blocked` code.
local function admits(idx, fields, age)
  local rule = rules[idx]
  if rule.off then
    return false, -2
  end
  if rule.plain then
    return true
  end
  if rule.limit > 0 and (taken_per_class[base_at(idx)] or 0) >= rule.limit then
    return false, -2
  end
  local mem = tonumber(field(fields, 'memory_bytes') or '0') or 0
  if free_mem >= 0 and mem > free_mem then
    return false, -1
  end
  -- This device handed it back (out of memory): leave it for another.
  local avoid = field(fields, 'avoid')
  if avoid and string.find(',' .. avoid .. ',', ',' .. device .. ',', 1, true) then
    return false, -1
  end
  local wait = nil
  for _, clause in ipairs(rule.clauses) do
    if clause[2] < 0 or mem > clause[2] then
      if age >= clause[1] then
        return true
      end
      if wait == nil or clause[1] - age < wait then
        wait = clause[1] - age
      end
    end
  end
  return false, wait or -2
end

-- Books an admitted entry against the class limit and the free memory.
local function book(idx, fields)
  if rules[idx].limit > 0 then
    local base = base_at(idx)
    taken_per_class[base] = (taken_per_class[base] or 0) + 1
  end
  if free_mem >= 0 then
    free_mem = math.max(0, free_mem - (tonumber(field(fields, 'memory_bytes') or '0') or 0))
  end
end

local function refuse(idx, code)
  if blocked[idx] == nil then
    blocked[idx] = code
    any_blocked = true
  end
end

-- How long ago (ms) an entry id was added.
local function waited(entry_id)
  local added = tonumber(string.match(entry_id, '^(%d+)')) or now
  return now - added
end

-- 1. Promote due retries (and delayed tasks: the workers' promoters move
-- those on time; this is the backstop).
if promote then
  local seen = {}
  for idx = 1, #KEYS do
    local base = base_at(idx)
    if base and not seen[base] then
      seen[base] = true
      promote_due(base, now, 100)
    end
  end
end

-- The streams' lengths, read with XLEN. Without a promotion nothing was
-- written yet, so a stream of another type can still fail the claim
-- cleanly (with one, it was checked above); that holds for a stream first
-- read in the main pass too, since a stream is read there before anything
-- is written to it, and the writes of the streams above it (their started
-- records) are a claim that stands on its own.
local lengths = {}
local function read_length(idx)
  local length = redis.pcall('XLEN', KEYS[idx])
  if type(length) == 'table' and length.err then
    return redis.error_reply('WRONGTYPE ' .. KEYS[idx] .. ' holds a ' .. redis.call('TYPE', KEYS[idx])['ok']
      .. ', not a stream; the call changed nothing')
  end
  lengths[idx] = length
  return nil
end
-- Whether every stream's length is read before anything else (the aging
-- pass compares the streams, and a claim that reads flows first may have
-- written already); otherwise the main pass reads them one at a time,
-- highest priority first, and stops when the claim is full: a claim of
-- one slot whose first stream has work reads the lengths down to that
-- stream, not all 16. A stream with fewer entries than the claim's free
-- slots has the rest read before its entries are. A claim that ends with
-- free slots has read them all (its `last_ids` and `blocked` are then as
-- before).
local eager_lengths = flows_first or (tonumber(ARGV[5]) or 0) > 0
-- Whether the main pass read any entry, and whether it stopped at a key
-- of another type after that (see below).
local read_any, cut_short = false, false
-- The flow and pause of stream idx once its length is known (a class's
-- flow is read when one of its streams has an entry waiting).
local function screen(idx)
  if not flows_first and lengths[idx] > 0 then
    local base = base_at(idx)
    if base then
      local problem = load_flow(base)
      if problem then
        return problem
      end
      local flow = flows[base]
      if flow and (flow.paused or (next(flow.priorities) ~= nil
          and flow.priorities[string.match(KEYS[idx], ':stream:([^:]+)$')])) then
        paused_stream[idx] = true
        rules[idx] = {limit = 0, clauses = {}, off = true, plain = false}
      end
    end
  end
  if paused_stream[idx] and lengths[idx] > 0 then
    refuse(idx, -3)
  end
  return nil
end
if eager_lengths then
  for idx = 1, #KEYS do
    local problem = read_length(idx)
    if problem then
      return problem
    end
  end
  for idx = 1, #KEYS do
    local problem = screen(idx)
    if problem then
      return problem
    end
  end
end

-- Entries taken over from each consumer in this claim so far, and what
-- each held before this claim took any (see held_once).
local taken_from = {}
local held_known = {}

-- How many tasks `name` held before this claim took any: its pending
-- entries in these streams now, plus those this claim took from it.
local function held(name)
  local count = taken_from[name] or 0
  for idx = 1, #KEYS do
    local summary = redis.call('XPENDING', KEYS[idx], group)
    if type(summary[4]) == 'table' then
      for _, c in ipairs(summary[4]) do
        if c[1] == name then
          count = count + (tonumber(c[2]) or 0)
        end
      end
    end
  end
  return count
end

-- held(name), remembered from the first look: call it before taking any of
-- name's entries.
local function held_once(name)
  if held_known[name] == nil then
    held_known[name] = held(name)
  end
  return held_known[name]
end

-- The text of a record's `deaths` for `entry_id`: blame (thousandths), then
-- deaths alone, beside others, and stalls. Zeros for another entry's.
local function read_deaths(text, entry_id)
  local entry, blame, alone, shared, stalls =
    string.match(text or '', '^(%S+) (%d+) (%d+) (%d+) (%d+)$')
  if entry ~= entry_id then
    return 0, 0, 0, 0
  end
  return tonumber(blame), tonumber(alone), tonumber(shared), tonumber(stalls)
end

-- What was observed, for a poison task's dead letter.
local function observed(alone, shared, stalls, interrupted, blame)
  return string.format('its worker died %d times while it was the only task running (a task that '
    .. 'kills its worker) and %d times beside other tasks (each counted as a share); %d stalled '
    .. 'workers (not counted); %d failed devices; blame %.2f reached max_deliveries %d',
    alone, shared, stalls, interrupted, blame / 1000, max_deliveries)
end

-- Entries parked by one claim at most, so that a claim stays short behind
-- a long run of held entries (the next claim goes on).
local parks_left = 256

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Whether a first delivery with these fields must wait: nil, or why
-- (`paused`, `limited`) and, for a limit, when it may start (us).
--
-- Rate limits are GCRA without burst: each limit (`kind:K`, `key:K`) keeps
-- its theoretical arrival time in `<base>limit_tat` (us); a task starts when
-- every limit that applies has reached it, and moves each on by its
-- emission interval T = P / N, so starts are at least T apart. A task that
-- must wait reserves its turn the same way (the time goes into the entry
-- as `limit_slot_us`) and is parked until then; back in its stream it
-- starts on that reservation when claimed within T + RESERVATION_GRACE_US
-- of it, else it queues again. So the waiting tasks of a limit come back
-- one per T, in order, without polling, and a promotion a few ms late
-- does not waste its turn (at 100/s T is 10 ms; a turn missed costs the
-- rate one start).
local RESERVATION_GRACE_US = 50000
local function flow_hold(base, fields)
  local flow = flows[base]
  local kind = field(fields, 'kind') or ''
  if flow.kinds[kind] then
    return 'paused'
  end
  local names, intervals = {}, {}
  local interval = flow.limits['kind:' .. kind]
  if interval then
    names[#names + 1] = 'kind:' .. kind
    intervals[#intervals + 1] = interval
  end
  local rate_key = field(fields, 'rate_key')
  interval = rate_key and flow.limits['key:' .. rate_key]
  if interval then
    names[#names + 1] = 'key:' .. rate_key
    intervals[#intervals + 1] = interval
  end
  if #names == 0 then
    return nil
  end
  local clock = now_us()
  local slot = tonumber(field(fields, 'limit_slot_us') or '')
  if slot then
    local widest = 0
    for _, each in ipairs(intervals) do
      widest = math.max(widest, each)
    end
    if clock >= slot and clock < slot + widest + RESERVATION_GRACE_US then
      return nil
    end
  end
  local tat_key = base .. 'limit_tat'
  local tats = redis.call('HMGET', tat_key, unpack(names))
  local go = clock
  for i = 1, #names do
    go = math.max(go, tonumber(tats[i]) or 0)
  end
  for i = 1, #names do
    redis.call('HSET', tat_key, names[i], string.format('%d', go + intervals[i]))
  end
  if go <= clock then
    return nil
  end
  return 'limited', go
end

-- Parks a delivered entry (see park in common.lua) and takes it out of
-- its stream.
local function park_entry(idx, entry_id, id, fields, reason, go_us)
  local base = base_at(idx)
  local kept = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= 'limit_slot_us' then
      kept[#kept + 1] = fields[i]
      kept[#kept + 1] = fields[i + 1]
    end
  end
  if reason == 'limited' then
    kept[#kept + 1] = 'limit_slot_us'
    kept[#kept + 1] = string.format('%d', go_us)
    park(base, id, KEYS[idx], kept, base .. 'delayed', math.ceil(go_us / 1000), 'limited')
  else
    park(base, id, KEYS[idx], kept, base .. 'held:' .. (field(fields, 'kind') or ''), now, 'paused')
  end
  redis.call('XACK', KEYS[idx], group, entry_id)
  redis.call('XDEL', KEYS[idx], entry_id)
  parks_left = parks_left - 1
end

-- Starts one claimed entry, delivered `deliveries` times so far; `prev`
-- names the worker it is taken over from (nil for a first delivery).
-- Returns true when the entry was parked instead (flow control): it is
-- not claimed, and takes none of `max`.
local function start(idx, entry, deliveries, prev)
  local entry_id, fields = entry[1], entry[2]
  local id = field(fields, 'id')
  local attempt = (tonumber(field(fields, 'attempt') or '1') or 1) + deliveries - 1
  -- Hand-backs from failed devices count too: a task that fails every
  -- device it touches is poison as well.
  local interrupted = tonumber(field(fields, 'interrupted') or '0') or 0
  local verdict
  local note = ''
  local record = id and is_task_id(id) and base_at(idx) .. 'task:' .. id
  -- A record key of another type would fail the HMGET below after earlier
  -- entries of this claim were started: the claim would be half-done and
  -- the stream blocked at this entry. Such an entry goes to the dead
  -- letters, as one without a task id does, saying why.
  -- (The HMGET is the type check: it fails on a key of another type, and
  -- only then is the type asked for, to name it.)
  local current = record and redis.pcall('HMGET', record, 'status', 'deaths', 'died_with',
    'started_at_ms', 'attempt', 'device', 'owner')
  if not record then
    verdict = 'malformed'
  elseif current.err then
    verdict = 'malformed'
    note = 'its task record ' .. record .. ' holds a ' .. redis.call('TYPE', record)['ok'] .. ', not a hash'
  else
    local status = current[1]
    local blame, alone, shared, stalls = read_deaths(current[2], entry_id)
    if prev and status and not is_terminal(status) then
      -- A swept entry (prev is this worker) names its holder in the
      -- record's owner; an unknown holder's death counts whole.
      local n = 1
      if prev == consumer then
        prev = string.match(current[7] or '', '^(%S+) ') or consumer
      end
      if prev ~= consumer then
        local marked, marked_n = string.match(current[3] or '', '^(%S+) (%d+)$')
        if marked == prev then
          n = tonumber(marked_n)
        else
          n = held_known[prev] or held(prev)
        end
      end
      local why
      if stalled[prev] then
        stalls = stalls + 1
        why = 'its worker stalled (the process still exists): not counted'
      elseif n <= 1 then
        alone = alone + 1
        blame = blame + 1000
        why = 'its worker died while it was the only task running'
      else
        shared = shared + 1
        blame = blame + math.floor(1000 / n)
        why = string.format('its worker died running %d tasks: counted 1/%d', n, n)
      end
      taken_from[prev] = (taken_from[prev] or 0) + 1
      redis.call('HSET', record, 'deaths',
        entry_id .. ' ' .. int(blame) .. ' ' .. int(alone) .. ' ' .. int(shared) .. ' ' .. int(stalls))
      redis.call('HDEL', record, 'died_with')
      if current[4] then
        add_history(record, {attempt = current[5] or '1', started_at_ms = current[4],
          finished_at_ms = int(now), status = 'taken_over', worker = prev, device = current[6] or '',
          error_code = 'WORKER_LOST', error_message = why})
      end
    end
    -- `owner` names the worker and entry that hold the task now; commits
    -- are fenced on it (complete.lua).
    local owner = consumer .. ' ' .. entry_id
    if is_terminal(status) then
      redis.call('XACK', KEYS[idx], group, entry_id)
      redis.call('XDEL', KEYS[idx], entry_id)
      verdict = 'skip'
    elseif blame + 1000 * interrupted >= 1000 * max_deliveries then
      redis.call('HSET', record, 'owner', owner)
      verdict = 'poison'
      note = observed(alone, shared, stalls, interrupted, blame + 1000 * interrupted)
    else
      local deadline = tonumber(field(fields, 'deadline_ms') or '0') or 0
      if deadline > 0 and now > deadline then
        redis.call('HSET', record, 'owner', owner)
        verdict = 'expired'
      else
        local base = base_at(idx)
        if not prev and flows[base] and flows[base].checks then
          local reason, go_us = flow_hold(base, fields)
          if reason then
            park_entry(idx, entry_id, id, fields, reason, go_us)
            return true
          end
        end
        -- The record's `attempt` is written only when it changes (a
        -- take-over's next delivery): the submit or the promotion that
        -- queued this entry wrote the same number already.
        local attempt_text = int(attempt)
        if current[5] == attempt_text then
          redis.call('HSET', record, 'status', 'running', 'worker', consumer, 'device', device,
            'started_at_ms', int(now), 'owner', owner)
        else
          redis.call('HSET', record, 'status', 'running', 'worker', consumer, 'device', device,
            'attempt', attempt_text, 'started_at_ms', int(now), 'owner', owner)
        end
        verdict = 'run'
        -- Every field of the event is known here: it reads nothing back.
        -- A first attempt was never `retrying` (only a retry's promotion
        -- queues an attempt above 1): the state index skips that ZREM.
        emit_event(base_at(idx), 'started', id, record, {kind = field(fields, 'kind'),
          worker = consumer, device = device, attempt = attempt_text}, now, attempt == 1)
      end
    end
  end
  claimed[#claimed + 1] = {idx, entry_id, verdict, fields, attempt, note}
end

-- Marks the tasks `name` still holds with the number it died holding, so
-- that a later claim taking them counts the same share.
local function mark_leftovers(name, n)
  for idx = 1, #KEYS do
    for _, p in ipairs(redis.call('XPENDING', KEYS[idx], group, '-', '+', 100, name)) do
      local id = field(entry_fields(KEYS[idx], p[1]), 'id')
      if id and is_task_id(id) then
        local record = base_at(idx) .. 'task:' .. id
        local mark = redis.call('HGET', record, 'died_with')
        if redis.call('EXISTS', record) == 1 and not (mark and string.sub(mark, 1, #name + 1) == name .. ' ') then
          redis.call('HSET', record, 'died_with', name .. ' ' .. int(n))
        end
      end
    end
  end
end

-- Takes over entries already pending ({id, consumer, idle, deliveries}
-- from XPENDING), keeping their delivery counts; those the stream's rule
-- refuses stay where they are.
local function take_over(idx, pending)
  local ids, counts, owners = {}, {}, {}
  for _, p in ipairs(pending) do
    if remaining - #ids <= 0 then
      break
    end
    local admitted, why = true, 0
    if not rules[idx].plain then
      local fields = entry_fields(KEYS[idx], p[1])
      -- A deleted entry is taken too, so XCLAIM reports it gone.
      if #fields > 0 then
        admitted, why = admits(idx, fields, p[3])
        if admitted then
          book(idx, fields)
        end
      end
    end
    if admitted then
      ids[#ids + 1] = p[1]
      counts[p[1]] = p[4]
      owners[p[1]] = p[2]
    else
      refuse(idx, why)
    end
  end
  if #ids == 0 then
    return
  end
  for _, id in ipairs(ids) do
    held_once(owners[id])
  end
  local taken = {}
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[idx], group, consumer, 0, unpack(ids))) do
    taken[entry[1]] = true
    remaining = remaining - 1
    start(idx, entry, counts[entry[1]] + 1, owners[entry[1]])
  end
  -- XCLAIM drops entries deleted while pending; say which.
  for _, id in ipairs(ids) do
    if not taken[id] then
      gone[#gone + 1] = KEYS[idx] .. ' ' .. id
    end
  end
end

-- 2. Reap dead workers. What each held is counted before any is taken.
for _, name in ipairs(dead) do
  if name ~= consumer then
    held_once(name)
  end
end
-- (A claim with no dead worker to reap, the usual case, skips the loop:
-- 16 empty passes cost a one-slot claim about 1 us.)
for idx = 1, dead_count > 0 and #KEYS or 0 do
  if not rules[idx].off then
    for _, name in ipairs(dead) do
      if name ~= consumer then
        -- No XLEN screen here: an entry deleted while pending leaves a
        -- stream of length 0 with something still pending.
        if remaining > 0 then
          take_over(idx, redis.call('XPENDING', KEYS[idx], group, '-', '+', 100, name))
        end
        if #redis.call('XPENDING', KEYS[idx], group, '-', '+', 1, name) == 0 then
          redis.call('XGROUP', 'DELCONSUMER', KEYS[idx], group, name)
        end
      end
    end
  end
end
for _, name in ipairs(dead) do
  local n = held_known[name] or 0
  if n > 1 and (taken_from[name] or 0) > 0 and (taken_from[name] or 0) < n then
    mark_leftovers(name, n)
  end
end

-- 3. Sweep entries whose lease ran out. XAUTOCLAIM looks at no more than
-- ten times COUNT pending entries a call, so follow its cursor. A stream
-- with a rule looks at the idle entries first and takes those it admits.
if sweep_ms > 0 then
  for idx = 1, #KEYS do
    if rules[idx].plain then
      local cursor = '0-0'
      local rounds = 0
      while remaining > 0 and rounds < 10 do
        rounds = rounds + 1
        local reply = redis.call('XAUTOCLAIM', KEYS[idx], group, consumer, sweep_ms, cursor, 'COUNT', remaining)
        cursor = reply[1]
        -- XAUTOCLAIM has moved the entries already: their holders, named
        -- by the records' owners, held these besides what they hold now.
        local holders, batch = {}, {}
        for _, entry in ipairs(reply[2]) do
          local id = field(entry[2], 'id')
          local holder = consumer
          if id and is_task_id(id) then
            local owner = redis.call('HGET', base_at(idx) .. 'task:' .. id, 'owner')
            holder = string.match(owner or '', '^(%S+) ') or consumer
          end
          holders[entry[1]] = holder
          if holder ~= consumer and held_known[holder] == nil then
            batch[holder] = (batch[holder] or 0) + 1
          end
        end
        for holder, count in pairs(batch) do
          held_known[holder] = held(holder) + count
        end
        for _, entry in ipairs(reply[2]) do
          local info = redis.call('XPENDING', KEYS[idx], group, entry[1], entry[1], 1)
          remaining = remaining - 1
          start(idx, entry, info[1] and info[1][4] or 1, holders[entry[1]])
        end
        for _, id in ipairs(reply[3] or {}) do
          gone[#gone + 1] = KEYS[idx] .. ' ' .. id
        end
        if cursor == '0-0' then
          break
        end
      end
    elseif not rules[idx].off and remaining > 0 then
      local idle = {}
      for _, p in ipairs(redis.call('XPENDING', KEYS[idx], group, 'IDLE', sweep_ms, '-', '+', 100)) do
        if p[2] ~= consumer then
          idle[#idle + 1] = p
        end
      end
      take_over(idx, idle)
    end
  end
end

-- The next entries no worker has been given yet, oldest first.
local function waiting(idx, count)
  return redis.call('XRANGE', KEYS[idx], '(' .. (last_delivered(idx) or '0-0'), '+', 'COUNT', count)
end

-- Reads `count` entries and starts them; entries parked instead (flow
-- control) free their places, which the entries behind them take, up to
-- parks_left.
local function read(idx, count)
  while count > 0 do
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
      'STREAMS', KEYS[idx], '>')
    if not reply then
      return
    end
    read_any = true
    local parked = 0
    for _, entry in ipairs(reply[1][2]) do
      remaining = remaining - 1
      if start(idx, entry, 1) then
        remaining = remaining + 1
        parked = parked + 1
      end
    end
    if parked == 0 or parks_left <= 0 or not rules[idx].plain then
      return
    end
    count = math.min(parked, remaining)
  end
end

-- Reads up to `count` entries the stream's rule admits, in order, stopping
-- at the first it refuses.
local function read_admitted(idx, count)
  if rules[idx].off then
    return
  end
  if rules[idx].plain then
    read(idx, count)
    return
  end
  local admitted = 0
  for _, entry in ipairs(waiting(idx, count)) do
    local ok, why = admits(idx, entry[2], waited(entry[1]))
    if not ok then
      refuse(idx, why)
      break
    end
    book(idx, entry[2])
    admitted = admitted + 1
  end
  if admitted > 0 then
    read(idx, admitted)
  end
end

-- 4. Aging: the first stream with waiting entries is served by the main pass
-- anyway. Of the streams below it, those whose next waiting entry has waited
-- at least aging_ms get one task each, the longest-waiting first.
if aging_ms > 0 and remaining > 0 then
  local first_waiting = nil
  local aged = {}
  for idx = 1, #KEYS do
    if lengths[idx] > 0 and not rules[idx].off then
      local next_entry = waiting(idx, 1)
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
    read_admitted(candidate[1], 1)
  end
end

-- 5. New entries, highest priority first.
for idx = 1, #KEYS do
  if remaining <= 0 then break end
  if not eager_lengths then
    local problem = read_length(idx) or screen(idx)
    if problem then
      -- Once entries were read (started, skipped or parked), the claim
      -- stands: it ends here with what it took, and without `last_ids`;
      -- the next claim that finds the streams above empty (at the latest
      -- the aging pass's, which reads every length first) fails with this
      -- error and changes nothing. (Only when a stream's length counted
      -- entries that others hold: see below.)
      if read_any then
        cut_short = true
        break
      end
      return problem
    end
    -- A stream that cannot fill the claim: the lengths below it are read
    -- now, before its entries, so that a key of another type there fails
    -- the claim before its first write, as when all are read first.
    if lengths[idx] > 0 and lengths[idx] < remaining then
      for below = idx + 1, #KEYS do
        problem = read_length(below) or screen(below)
        if problem then
          if read_any then
            cut_short = true
            break
          end
          return problem
        end
      end
      if cut_short then
        break
      end
      eager_lengths = true
    end
  end
  if lengths[idx] > 0 then
    read_admitted(idx, remaining)
  end
end

local last_ids = {}
if remaining > 0 and want_last_ids and not cut_short then
  for idx = 1, #KEYS do
    last_ids[idx] = '0-0'
    -- A stream empty at the start is empty still: this claim only takes
    -- entries out (or parks them), never adds any.
    if lengths[idx] > 0 and redis.call('XLEN', KEYS[idx]) > 0 then
      local newest = redis.call('XREVRANGE', KEYS[idx], '+', '-', 'COUNT', 1)
      if #newest > 0 then
        last_ids[idx] = newest[1][1]
      end
    end
  end
end
if any_blocked then
  for idx = 1, #KEYS do
    blocked[idx] = blocked[idx] or 0
  end
end
return {claimed, last_ids, gone, blocked}
