-- Cancels a workflow: every node not yet final is cancelled (one waiting,
-- queued, retrying or delayed at once; one running by request, which its
-- worker's commit turns into `cancelled`). The workflow ends `cancelled`
-- once its last node is final.
--
-- KEYS[1] the workflow's hash
-- ARGV[1] record TTL, s
-- ARGV[2] reply stream approximate max length
-- ARGV[3] reply stream TTL, s
--
-- Returns {'not_found'}, {'finished', status} or
-- {'cancelled', nodes cancelled now, nodes asked to stop}.

local wf_key = KEYS[1]
if redis.call('TYPE', wf_key)['ok'] ~= 'hash' then
  return {'not_found'}
end
local state = redis.call('HMGET', wf_key, 'status', 'records')
if state[1] ~= 'running' then
  return {'finished', state[1] or 'unknown'}
end
local now = now_ms()
if not redis.call('HGET', wf_key, 'cancel_requested_at_ms') then
  redis.call('HSET', wf_key, 'cancel_requested_at_ms', int(now))
end
local opts = {ttl_s = ARGV[1], reply_maxlen = ARGV[2], reply_ttl_s = ARGV[3],
  message = 'its workflow was cancelled'}
local ended, asked = 0, 0
for target in string.gmatch(state[2] or '', '%S+') do
  local done = wf_cancel_node(target, now, opts)
  if done == 'final' then
    ended = ended + 1
    wf_count_final(wf_key, false, now, opts.ttl_s)
  elseif done == 'requested' then
    asked = asked + 1
  end
end
return {'cancelled', ended, asked}
