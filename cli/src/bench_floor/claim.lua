-- The floor's start (see bench_floor.rs): each entry's record read (status,
-- cancel), then written `running` with its owner (the fence a commit
-- checks), the `started` event and the state index. The entries are those
-- the caller's blocking XREADGROUP delivered (ARGV[5..]), or, without any,
-- up to ARGV[3] read here with XREADGROUP (scripts/lua-floor's claim).
--
-- KEYS[1] the stream, KEYS[2] the events stream, KEYS[3] the running index
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] record key prefix,
-- then per delivered entry: its entry id, its task id
-- Returns {entry id, task id} per entry started.
--
-- EVENTS is the line the loader puts first (`local EVENTS = true` or
-- `false`, as `events` is set): without events, no XADD to the events stream.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local entries = {}
for i = 5, #ARGV, 2 do
  entries[#entries + 1] = {ARGV[i], ARGV[i + 1]}
end
if #entries == 0 then
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
  for _, entry in ipairs(reply and reply[1][2] or {}) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'id' then
        entries[#entries + 1] = {entry[1], fields[i + 1]}
        break
      end
    end
  end
end
for _, entry in ipairs(entries) do
  local entry_id, id = entry[1], entry[2]
  local record = ARGV[4] .. id
  redis.call('HMGET', record, 'status', 'cancel_requested_at_ms')
  redis.call('HSET', record, 'status', 'running', 'started_at_ms', now, 'worker', ARGV[2], 'device', 'cpu',
    'owner', ARGV[2] .. ' ' .. entry_id)
  if EVENTS then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'started', 'id', id, 'class', 'floor',
      'at_ms', now, 'kind', 'noop', 'worker', ARGV[2], 'device', 'cpu', 'attempt', '1')
  end
  redis.call('ZADD', KEYS[3], now, id)
end
return entries
