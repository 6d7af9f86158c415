-- The floor's commit (see bench_floor.rs): per task, the record's owner and
-- status read (the fence), the final state and result written, the record's
-- TTL, the entry acknowledged and deleted, the state index moved, the
-- `succeeded` event.
--
-- KEYS[1] the stream, KEYS[2] the events stream, KEYS[3] the running index,
-- KEYS[4] the succeeded index, then per task its record
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] n, then per task: its id, its
-- entry id
--
-- EVENTS is the line the loader puts first (`local EVENTS = true` or
-- `false`, as `events` is set): without events, no XADD to the events stream.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local results = {}
for i = 1, tonumber(ARGV[3]) do
  local record, id, entry_id = KEYS[4 + i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  redis.call('HMGET', record, 'owner', 'status')
  redis.call('HSET', record, 'status', 'succeeded', 'finished_at_ms', now, 'worker', ARGV[2], 'device', 'cpu',
    'run_us', '43', 'result_bytes', '1', 'result', '\192')
  redis.call('EXPIRE', record, 600)
  redis.call('XACK', KEYS[1], ARGV[1], entry_id)
  redis.call('XDEL', KEYS[1], entry_id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[4], now, id)
  if EVENTS then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'succeeded', 'id', id, 'class', 'floor',
      'at_ms', now, 'kind', 'noop', 'worker', ARGV[2], 'device', 'cpu', 'attempt', '1')
  end
  results[i] = 1
end
return results
