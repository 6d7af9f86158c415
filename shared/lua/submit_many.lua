-- Submits a batch of tasks in one call: for each, what submit.lua does for
-- one (common.lua's submit_task), with the same checks and the same reply.
-- A task's failure does not stop the others: its reply is an error naming
-- its index.
--
-- ARGV[1] the number of tasks, n
-- ARGV[2] the index of the first task in the caller's list (0-based), so
--         that an error names the task as the caller numbers it
-- then, per task, in order:
--   the number of keys it takes (2, or 3 with an idempotency key), its
--   task id, deadline relative to now (ms, 0 = none), idempotency key TTL
--   (s), the idempotency key as given, params (MessagePack), the number of
--   metadata pairs m, then the m pairs (name, value)
-- KEYS per task, in order: its stream, its record, its idempotency key
-- (only when it has one), as submit.lua's KEYS.
--
-- Returns an array of n replies, one per task in order: {task id, 1} for a
-- new task, {existing task id, 0}, or an error `<CODE> task <index>:
-- <message>` (WRONGTYPE, or ERR for a bad `run_at_ms` / `delay_ms`) for a
-- task that wrote nothing. A malformed call (counts that do not add up) is
-- one ERR for the whole call, before anything is written.

local n = tonumber(ARGV[1])
local offset = tonumber(ARGV[2])
if not n or not offset then
  return redis.error_reply('ERR submit_many: ARGV[1] (task count) and ARGV[2] (first index) must be numbers')
end

-- Walk the batch once to check its shape before writing anything.
local spans = {}
local a, k = 3, 1
for t = 1, n do
  local nkeys = tonumber(ARGV[a])
  local npairs = tonumber(ARGV[a + 6])
  if not nkeys or (nkeys ~= 2 and nkeys ~= 3) or not npairs or npairs < 0 then
    return redis.error_reply('ERR submit_many: task ' .. (offset + t - 1)
      .. ': bad key count or pair count')
  end
  spans[t] = {a = a, k = k, nkeys = nkeys, last = a + 6 + 2 * npairs}
  a = a + 7 + 2 * npairs
  k = k + nkeys
end
if a - 1 ~= #ARGV or k - 1 ~= #KEYS then
  return redis.error_reply('ERR submit_many: ' .. #ARGV .. ' arguments and ' .. #KEYS
    .. ' keys do not match the ' .. n .. ' tasks they describe')
end

local replies = {}
for t = 1, n do
  local s = spans[t]
  local idem_key = nil
  if s.nkeys == 3 then
    idem_key = KEYS[s.k + 2]
  end
  local reply = submit_task(KEYS[s.k], KEYS[s.k + 1], idem_key, ARGV[s.a + 1], ARGV[s.a + 2],
    ARGV[s.a + 3], ARGV[s.a + 4], ARGV[s.a + 5], ARGV, s.a + 7, s.last)
  if reply.err then
    local code, rest = string.match(reply.err, '^(%S+) (.*)$')
    reply = {err = (code or 'ERR') .. ' task ' .. (offset + t - 1) .. ': ' .. (rest or reply.err)}
  end
  replies[t] = reply
end
return replies
