-- Extends the leases of a worker's running tasks: resets the idle time of
-- each entry this worker still owns (XCLAIM ... JUSTID, which leaves the
-- delivery count alone). An entry another worker took over, or that is gone,
-- is not touched: a plain XCLAIM would move it back whoever holds it.
--
-- KEYS     the worker's task streams
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (this worker)
-- ARGV[3..] pairs: stream index (into KEYS), entry id
--
-- Returns the entry ids this worker no longer owns; a WRONGTYPE error, with
-- no lease changed, when one of the streams holds another type.

local checks = {}
local seen = {}
for i = 3, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  if key and not seen[key] then
    seen[key] = true
    checks[#checks + 1] = key
    checks[#checks + 1] = 'stream'
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
local group, consumer = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local key, entry_id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  if owns(key, group, entry_id, consumer) then
    redis.call('XCLAIM', key, group, consumer, 0, entry_id, 'JUSTID')
  else
    lost[#lost + 1] = entry_id
  end
end
return lost
