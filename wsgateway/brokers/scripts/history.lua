-- A topic's position and, when they can answer a resume, the updates after a seq: read
-- together, so that the position and the entries agree (wsgateway/brokers/redis.py).
--
-- KEYS[1] the meta hash, KEYS[2] the history stream.
-- ARGV: since epoch ('' = before the first update), since seq, limit.
-- Returns {epoch or false, seq, entries}; entries only when the epoch may match and at
-- most `limit` updates are missing.
local state = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch, top = state[1], tonumber(state[2] or 0)
if not epoch then
    return {false, 0, {}}
end
local since_epoch, since_seq, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local missing = top - since_seq
local entries = {}
if (since_epoch == '' or since_epoch == epoch) and missing > 0 and missing <= limit then
    entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', since_seq + 1),
        string.format('%d-0', top))
end
return {epoch, string.format('%d', top), entries}
