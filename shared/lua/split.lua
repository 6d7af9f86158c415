-- Splits a claimed task into shards, in one atomic step, only while this
-- worker still holds its entry (the fence of complete.lua). The parent's
-- entry fields are kept in `<base>split:<id>` (for its merge entry, or its
-- dead letter), each shard becomes an entry of the same stream with a
-- `queued` record of its own, and the parent's record, still `running`,
-- gets `shards`, `shards_done` = 0, `shard_ids` and `split_at_ms`. The parent's entry is
-- acknowledged and deleted: from now on its shards carry its work, and the
-- commit of the last one puts the parent back as a merge entry.
--
-- KEYS[1] the parent's record
-- KEYS[2] the parent's stream
-- ARGV[1] consumer group
-- ARGV[2] entry id
-- ARGV[3] consumer (this worker)
-- ARGV[4] parent task id
-- ARGV[5] number of shards n
-- then, n times: the shard's task id, its number of field pairs m, and the
-- m pairs of its entry (submitted_at_ms is added here)
--
-- Returns 1 when split, 0 when the record was already final (the entry is
-- acknowledged), -1 when this worker no longer owns the entry; a WRONGTYPE
-- error, with nothing written, when a shard's record key holds another
-- type. (The split hash is deleted before it is written.)

local record_key, stream_key = KEYS[1], KEYS[2]
local group, entry_id, consumer, parent_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HMGET', record_key, 'status', 'owner')
if current[2] ~= consumer .. ' ' .. entry_id then
  return -1
end
local checks = {}
do
  local i = 6
  for _ = 1, tonumber(ARGV[5]) do
    checks[#checks + 1] = base_of(stream_key) .. 'task:' .. ARGV[i]
    checks[#checks + 1] = 'hash'
    i = i + 2 + 2 * tonumber(ARGV[i + 1])
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local fields = entry_fields(stream_key, entry_id)
if is_terminal(current[1]) or #fields == 0 then
  redis.call('XACK', stream_key, group, entry_id)
  redis.call('XDEL', stream_key, entry_id)
  return 0
end

local now = now_ms()
local base = base_of(stream_key)
drop_split(base, parent_id)
redis.call('HSET', base .. 'split:' .. parent_id, unpack(fields))

local ids = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local shard_id, pairs_count = ARGV[i], tonumber(ARGV[i + 1])
  local entry = {stream_key, '*'}
  local record = {base .. 'task:' .. shard_id}
  for j = i + 2, i + 1 + 2 * pairs_count, 2 do
    entry[#entry + 1] = ARGV[j]
    entry[#entry + 1] = ARGV[j + 1]
    if ARGV[j] ~= 'params' and ARGV[j] ~= 'signature' then
      record[#record + 1] = ARGV[j]
      record[#record + 1] = ARGV[j + 1]
    end
  end
  i = i + 2 + 2 * pairs_count
  entry[#entry + 1] = 'submitted_at_ms'
  entry[#entry + 1] = int(now)
  local shard_entry = redis.call('XADD', unpack(entry))
  for _, pair in ipairs({{'status', 'queued'}, {'submitted_at_ms', int(now)}, {'entry', shard_entry}}) do
    record[#record + 1] = pair[1]
    record[#record + 1] = pair[2]
  end
  redis.call('HSET', unpack(record))
  ids[#ids + 1] = shard_id
end

redis.call('HSET', record_key, 'shards', int(#ids), 'shards_done', 0, 'shard_ids', table.concat(ids, ' '),
  'split_at_ms', int(now))
redis.call('HDEL', record_key, 'owner', 'entry')
redis.call('XACK', stream_key, group, entry_id)
redis.call('XDEL', stream_key, entry_id)
return 1
