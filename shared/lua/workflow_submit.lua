-- Submits a workflow: its hash and every node's record in one step. A node
-- without parents enters its stream at once; every other node's record
-- says `waiting` and its entry's fields wait in `<base>wait:<id>` until
-- the commit of its last parent releases it (workflow_settle in
-- common.lua). Submitting the same workflow id again (a producer retrying
-- after a lost reply) creates nothing new.
--
-- Every key is named in the arguments (on Redis Cluster all of them must
-- share one slot: the producer refuses a workflow whose nodes' classes
-- differ there).
--
-- KEYS[1]  the workflow's hash, `<base>workflow:<id>`
-- ARGV[1]  workflow id
-- ARGV[2]  on_failure: fail_fast or continue
-- ARGV[3]  graph, JSON (for views: each node's name, id, class, kind,
--          parents), kept in the hash as `graph`
-- ARGV[4]  sink node names, space-separated
-- ARGV[5]  number of nodes N
-- then N blocks, parents before children:
--   name, task id, record key, stream key, number of parents,
--   children's record keys (space-separated), params, number of metadata
--   pairs M, then M name/value pairs (as submit.lua's, copied into the
--   entry and the record); three names are not copied but read:
--   `deadline_in_ms` (the node's deadline, ms), `delay_ms` and `run_at_ms`
--   (when it may start)
--
-- A node's schedule, as a plain task's in submit.lua, with its parents
-- first. A node without parents is a plain task: `delay_ms` from now or
-- `run_at_ms` parks it in the class's delayed set (status `delayed`,
-- `delay_reason` `scheduled`) until due, and its deadline counts from that
-- time. A node with parents starts no earlier than `delay_ms` after its
-- last parent's commit released it, and no earlier than `run_at_ms`: its
-- record keeps `wf_delay_ms` and `run_at_ms` until the release
-- (workflow_settle in common.lua) parks it until then. Its deadline is
-- fixed here, counted from now (from `run_at_ms` when that is later): a
-- deadline that passes while its parents run expires it when released, as
-- a plain task past its deadline, and the workflow's `on_failure` applies
-- as for a failure. `deadline_ms` goes in the entry and the record; none of
-- the three names does.
--
-- Returns {workflow id, 1} when created, {workflow id, 0} when it existed;
-- an error, with nothing written, when a key holds another type or a
-- node's task id already has a record.

local wf_key = KEYS[1]
local n = tonumber(ARGV[5]) or 0
local nodes = {}
local at = 6
for i = 1, n do
  local node = {name = ARGV[at], id = ARGV[at + 1], record = ARGV[at + 2], stream = ARGV[at + 3],
    parents = tonumber(ARGV[at + 4]) or 0, children = ARGV[at + 5], params = ARGV[at + 6]}
  local m = tonumber(ARGV[at + 7]) or 0
  node.pairs = {}
  for j = 1, 2 * m, 2 do
    local name, value = ARGV[at + 7 + j], ARGV[at + 8 + j]
    if name == 'deadline_in_ms' or name == 'delay_ms' or name == 'run_at_ms' then
      local ms = tonumber(value)
      if not ms or ms ~= math.floor(ms) or ms < 0 then
        return redis.error_reply('ERR node ' .. tostring(node.name) .. ': ' .. name
          .. ' must be a whole number of ms, 0 or more; got ' .. string.format('%q', tostring(value))
          .. '; the workflow was not submitted')
      end
      node[name] = ms
    else
      node.pairs[#node.pairs + 1] = name
      node.pairs[#node.pairs + 1] = value
    end
  end
  at = at + 8 + 2 * m
  nodes[i] = node
end

-- The graph's shape, as the arguments give it, checked before anything is
-- written (a caller other than the Rust producer, `tandem flow submit` and
-- the Python client, which check it first, could get it wrong, and a node
-- that waits for a parent that never commits would wait forever): names
-- and task ids unique, every child's record key a node of this workflow
-- that comes after its parent (parents first, so no cycle), and each
-- node's number of parents the number of nodes that name it as a child.
-- Kinds and paths into results are the caller's to check: Redis knows no
-- kind's result.
local function refuse(name, problem)
  return redis.error_reply('ERR node ' .. string.format('%q', tostring(name)) .. ': ' .. problem
    .. '; the workflow was not submitted')
end
if n < 1 then
  return redis.error_reply('ERR workflow: it has no nodes (ARGV[5] is ' .. string.format('%q', tostring(ARGV[5]))
    .. '); the workflow was not submitted')
end
local by_name, by_record, named = {}, {}, {}
for i, node in ipairs(nodes) do
  if not node.name or node.name == '' or not node.id or node.id == '' then
    return refuse(node.name, 'block ' .. i .. ' lacks a name or a task id')
  end
  if by_name[node.name] then
    return refuse(node.name, 'the name is used by another node too')
  end
  if not node.record or by_record[node.record] then
    return refuse(node.name, 'its record key ' .. string.format('%q', tostring(node.record))
      .. ' is missing or another node\'s too')
  end
  if node.parents < 0 or node.parents ~= math.floor(node.parents) then
    return refuse(node.name, 'its number of parents must be a whole number, 0 or more')
  end
  by_name[node.name], by_record[node.record], named[i] = i, i, 0
end
for i, node in ipairs(nodes) do
  for child in string.gmatch(node.children or '', '%S+') do
    local j = by_record[child]
    if not j then
      return refuse(node.name, 'its child ' .. string.format('%q', child) .. ' is not the record of a node of the workflow')
    end
    if j <= i then
      return refuse(nodes[j].name, 'it comes before its parent ' .. string.format('%q', node.name)
        .. ' (parents come first; a node that waits for itself, through others or not, is on a cycle)')
    end
    named[j] = named[j] + 1
  end
end
for j, node in ipairs(nodes) do
  if named[j] ~= node.parents then
    return refuse(node.name, 'it says ' .. node.parents .. ' parents, but ' .. named[j]
      .. ' nodes name it as a child')
  end
end

-- The recent workflows, for views (`tandem dashboard`): ids scored by submit
-- time in `<base>workflows` (same slot), the newest 1,000 kept. An id can
-- outlive its hash's TTL; readers skip it.
local wf_base = string.match(wf_key, '^(.*:)workflow:[^:]+$') or ''
local recent = wf_base .. 'workflows'
local checks = {wf_key, 'hash', recent, 'zset'}
for _, node in ipairs(nodes) do
  local base = string.match(node.record, '^(.*:)task:[^:]+$') or ''
  local writes = {{node.record, 'hash'}, {node.stream, 'stream'}, {base .. 'wait:' .. node.id, 'hash'}}
  if node.parents == 0 and (node.delay_ms or node.run_at_ms) then
    -- It may be parked now (a node with parents is parked at its release).
    writes[#writes + 1] = {base .. 'retry:' .. node.id, 'hash'}
    writes[#writes + 1] = {base .. 'delayed', 'zset'}
  end
  for _, pair in ipairs(writes) do
    checks[#checks + 1] = pair[1]
    checks[#checks + 1] = pair[2]
  end
end
local problem = wrong_type(checks)
if problem then
  return redis.error_reply(problem)
end
if redis.call('EXISTS', wf_key) == 1 then
  return {ARGV[1], 0}
end
for _, node in ipairs(nodes) do
  if redis.call('EXISTS', node.record) == 1 then
    return redis.error_reply('ERR node ' .. node.name .. ': task id ' .. node.id
      .. ' already has a record; the workflow was not submitted')
  end
end

local now = now_ms()
local records = {}
for i, node in ipairs(nodes) do
  records[i] = node.record
end
redis.call('HSET', wf_key, 'id', ARGV[1], 'status', 'running', 'on_failure', ARGV[2],
  'submitted_at_ms', int(now), 'nodes', int(n), 'remaining', int(n), 'failed', '0',
  'graph', ARGV[3], 'sinks', ARGV[4], 'records', table.concat(records, ' '))
redis.call('ZADD', recent, int(now), ARGV[1])
redis.call('ZREMRANGEBYRANK', recent, 0, -1001)

for _, node in ipairs(nodes) do
  local base = string.match(node.record, '^(.*:)task:[^:]+$')
  local fields = {}
  local record = {node.record, 'submitted_at_ms', int(now), 'workflow', wf_key, 'wf_node', node.name,
    'wf_children', node.children}
  for j = 1, #node.pairs, 2 do
    fields[#fields + 1] = node.pairs[j]
    fields[#fields + 1] = node.pairs[j + 1]
    record[#record + 1] = node.pairs[j]
    record[#record + 1] = node.pairs[j + 1]
  end
  fields[#fields + 1] = 'submitted_at_ms'
  fields[#fields + 1] = int(now)
  -- A node with children says how many (wire 2.17), so that its worker
  -- sends a large result by reference (`workflow_blob_threshold_bytes`)
  -- instead of having the releasing commit copy it into each child.
  local feeds = 0
  for _ in string.gmatch(node.children or '', '%S+') do
    feeds = feeds + 1
  end
  if feeds > 0 then
    fields[#fields + 1] = 'feeds'
    fields[#fields + 1] = int(feeds)
  end
  -- When it may start, as far as known now: a node with parents learns the
  -- rest (its delay after them) at its release.
  local run_at = node.run_at_ms
  if node.parents == 0 and node.delay_ms then
    run_at = math.max(run_at or 0, now + node.delay_ms)
  end
  if (node.deadline_in_ms or 0) > 0 then
    local deadline = math.max(now, run_at or now) + node.deadline_in_ms
    fields[#fields + 1] = 'deadline_ms'
    fields[#fields + 1] = int(deadline)
    record[#record + 1] = 'deadline_ms'
    record[#record + 1] = int(deadline)
  end
  if run_at then
    record[#record + 1] = 'run_at_ms'
    record[#record + 1] = int(run_at)
  end
  fields[#fields + 1] = 'params'
  fields[#fields + 1] = node.params
  if node.parents == 0 and run_at and run_at > now then
    -- Not due yet: it waits in the delayed set, as submit.lua's delayed
    -- task (park writes the record's status and times).
    park(base, node.id, node.stream, fields, base .. 'delayed', run_at, 'scheduled')
  elseif node.parents == 0 then
    local entry_id = redis.call('XADD', node.stream, '*', unpack(fields))
    record[#record + 1] = 'status'
    record[#record + 1] = 'queued'
    record[#record + 1] = 'entry'
    record[#record + 1] = entry_id
  else
    redis.call('DEL', base .. 'wait:' .. node.id)
    redis.call('HSET', base .. 'wait:' .. node.id, unpack(fields))
    record[#record + 1] = 'status'
    record[#record + 1] = 'waiting'
    record[#record + 1] = 'wf_waiting'
    record[#record + 1] = int(node.parents)
    if node.delay_ms then
      record[#record + 1] = 'wf_delay_ms'
      record[#record + 1] = int(node.delay_ms)
    end
  end
  redis.call('HSET', unpack(record))
  emit_event(base, 'submitted', node.id, node.record)
end
return {ARGV[1], 1}
