-- The floor's submit (see bench_floor.rs): what a no-op task's submit must
-- write, and nothing else. For each task: its record, created only if the
-- id has none (the idempotent submit), its entry, the record's fields, the
-- `submitted` event. No checks, no delayed tasks, no idempotency keys.
--
-- KEYS[1] the stream, KEYS[2] the events stream, then per task its record
-- ARGV[1] n, then per task: its id, the entry's pair count m, the m pairs
--
-- EVENTS is the line the loader puts first (`local EVENTS = true` or
-- `false`, as `events` is set): without events, no XADD to the events stream.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local replies = {}
local a = 2
for i = 1, tonumber(ARGV[1]) do
  local record, id, npairs = KEYS[2 + i], ARGV[a], tonumber(ARGV[a + 1])
  local pairs = {unpack(ARGV, a + 2, a + 1 + 2 * npairs)}
  a = a + 2 + 2 * npairs
  if redis.call('HSETNX', record, 'status', 'queued') == 1 then
    local entry_id = redis.call('XADD', KEYS[1], '*', 'submitted_at_ms', now, unpack(pairs))
    redis.call('HSET', record, 'submitted_at_ms', now, 'entry', entry_id, unpack(pairs))
    if EVENTS then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'submitted', 'id', id, 'class', 'floor',
        'at_ms', now, 'kind', 'noop', 'attempt', '1')
    end
  end
  replies[i] = {id, 1}
end
return replies
