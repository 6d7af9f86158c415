-- Finds a task's record without knowing its class: returns the index of the
-- first of KEYS (the record key under each class) that exists, and its
-- fields, or {0} when none does.
--
-- KEYS the task's record key under every class, in the order of Class::ALL

for idx = 1, #KEYS do
  local record = redis.call('HGETALL', KEYS[idx])
  if #record > 0 then
    return {idx, record}
  end
end
return {0}
