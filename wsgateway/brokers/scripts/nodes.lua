-- Every live node's record (wsgateway/brokers/redis.py): KEYS[1] is the index set of node
-- ids; each record is the string KEYS[1] .. ':' .. id, expiring on its own. Ids whose
-- record expired are pruned from the index here.
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local record = redis.call('GET', KEYS[1] .. ':' .. id)
    if record then
        found[#found + 1] = id
        found[#found + 1] = record
    else
        redis.call('SREM', KEYS[1], id)
    end
end
return found
