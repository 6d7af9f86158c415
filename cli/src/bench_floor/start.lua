-- The floor's start of delivered entries (see bench_floor.rs): for each,
-- the record read (status, cancel), then written `running` with its owner
-- (the fence a commit checks), the `started` event and the state index.
--
-- KEYS[1] the events stream, KEYS[2] the running index, then per entry its
-- record
-- ARGV[1] consumer, ARGV[2] n, then per entry: its entry id, its task id
--
-- EVENTS is the line the loader puts first (`local EVENTS = true` or
-- `false`, as `events` is set): without events, no XADD to the events stream.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
for i = 1, tonumber(ARGV[2]) do
  local record, entry_id, id = KEYS[2 + i], ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  redis.call('HMGET', record, 'status', 'cancel_requested_at_ms')
  redis.call('HSET', record, 'status', 'running', 'started_at_ms', now, 'worker', ARGV[1], 'device', 'cpu',
    'owner', ARGV[1] .. ' ' .. entry_id)
  if EVENTS then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100000, '*', 'event', 'started', 'id', id, 'class', 'floor',
      'at_ms', now, 'kind', 'noop', 'worker', ARGV[1], 'device', 'cpu', 'attempt', '1')
  end
  redis.call('ZADD', KEYS[2], now, id)
end
return 1
