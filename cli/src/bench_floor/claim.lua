-- The floor's claim (see bench_floor.rs): up to ARGV[3] entries of the one
-- stream read with XREADGROUP, each started as start.lua starts one.
--
-- KEYS[1] the stream, KEYS[2] the events stream, KEYS[3] the running index
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] record key prefix
-- Returns {entry id, fields} per entry.
--
-- EVENTS is the line the loader puts first (`local EVENTS = true` or
-- `false`, as `events` is set): without events, no XADD to the events stream.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local claimed = {}
if reply then
  for _, entry in ipairs(reply[1][2]) do
    local fields, id = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'id' then
        id = fields[i + 1]
        break
      end
    end
    local record = ARGV[4] .. id
    redis.call('HMGET', record, 'status', 'cancel_requested_at_ms')
    redis.call('HSET', record, 'status', 'running', 'started_at_ms', now, 'worker', ARGV[2], 'device', 'cpu',
      'owner', ARGV[2] .. ' ' .. entry[1])
    if EVENTS then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'event', 'started', 'id', id, 'class', 'floor',
        'at_ms', now, 'kind', 'noop', 'worker', ARGV[2], 'device', 'cpu', 'attempt', '1')
    end
    redis.call('ZADD', KEYS[3], now, id)
    claimed[#claimed + 1] = {entry[1], fields}
  end
end
return claimed
