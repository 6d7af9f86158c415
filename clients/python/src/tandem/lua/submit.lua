-- Submits one task: appends its entry to the stream and creates its record,
-- unless an idempotency key already names a task, which is then returned,
-- or the task id already has a record: submitting the same task again (a
-- producer retrying after a lost reply) creates nothing new.
--
-- KEYS[1] the class and priority's stream
-- KEYS[2] the task record
-- KEYS[3] the idempotency key (only when the task has one)
-- ARGV[1] task id
-- ARGV[2] deadline relative to now, ms (0 = none)
-- ARGV[3] idempotency key TTL, s
-- ARGV[4] the idempotency key as given (copied into the record)
-- ARGV[5] params (MessagePack)
-- ARGV[6..] metadata pairs, copied into the entry and the record; two
--          names are not copied but read: `run_at_ms` (when to run it, ms
--          since the epoch by the Redis clock) and `delay_ms` (ms from
--          now), which make it a delayed task (see below)
--
-- A delayed task whose time has not come does not enter its stream: its
-- entry's fields wait in `<base>retry:<id>` and its id in the class's
-- delayed set, scored by its time; its record says `delayed` with
-- `delay_reason` `scheduled`, `run_at_ms` and `retry_at_ms`, and the
-- workers' promoters append it to the stream when it is due. Its deadline
-- counts from that time, not from now.
--
-- Returns {task id, 1} for a new task or {existing task id, 0}; a WRONGTYPE
-- error, with nothing written, when a key holds another type; the server's
-- own refusal of the first write (READONLY on a replica, OOM) as Redis gave
-- it, code and all (revision 2.18; before, it came back as WRONGTYPE). The work is
-- common.lua's submit_task, which submit_many.lua runs once per task.

local idem_key = nil
if #KEYS >= 3 then
  idem_key = KEYS[3]
end
return submit_task(KEYS[1], KEYS[2], idem_key, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV, 6, #ARGV)
