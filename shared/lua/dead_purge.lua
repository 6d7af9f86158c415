-- Deletes dead letters of one class, giving back the parameter blob
-- reference each one held (revision 2.18): a dead letter keeps its task's
-- reference for `tandem dlq requeue`, so deleting it for good is the last
-- use, and the reference goes onto the class's `blobs:release` list for a
-- worker to release (common.lua's give_back_params), as a cancel's does.
--
-- KEYS[1] the class's dead-letter stream (`<base>dead`)
-- ARGV[1] `ids`: ARGV[2..] are the dead letters' entry ids; or
--         `upto`: the oldest entries up to and including id ARGV[2], at
--         most ARGV[3] of them (the caller pages through a long stream)
--
-- Returns how many were deleted (an id with no entry counts nothing); a
-- WRONGTYPE error, with nothing written, when the key holds another type.

local problem = wrong_type({KEYS[1], 'stream'})
if problem then
  return redis.error_reply(problem)
end
local dead_key = KEYS[1]
local base = string.match(dead_key, '^(.*:)dead$')
local function purge(entry)
  if base then
    give_back_params(base, field(entry[2], 'params'))
  end
  return redis.call('XDEL', dead_key, entry[1])
end

local deleted = 0
if ARGV[1] == 'upto' then
  for _, entry in ipairs(redis.call('XRANGE', dead_key, '-', ARGV[2], 'COUNT', ARGV[3])) do
    deleted = deleted + purge(entry)
  end
elseif ARGV[1] == 'ids' then
  for i = 2, #ARGV do
    local found = redis.call('XRANGE', dead_key, ARGV[i], ARGV[i])
    if #found == 1 then
      deleted = deleted + purge(found[1])
    end
  end
else
  return redis.error_reply('dead_purge: ARGV[1] must be ids or upto, not ' .. tostring(ARGV[1]))
end
return deleted
