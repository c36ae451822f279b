-- A last or book topic's state with its position, read together (wsgateway/brokers/redis.py).
--
-- KEYS[1] the meta hash; on a book channel also KEYS[2] bids, KEYS[3] asks (sorted sets of
-- price texts) and KEYS[4] the levels hash (qty by "b<price>" / "a<price>").
-- Returns {epoch or false, seq, ts of the update at seq, data}: data is the latest value
-- (last), or {bids, asks} each {price, qty, ...} best first (book); epoch false: no state.
local state = redis.call('HMGET', KEYS[1], 'e', 's', 't', 'v')
local epoch, seq, ts = state[1], state[2], state[3]
if not epoch or not ts then
    return {false, 0, 0, false}
end
if #KEYS == 1 then
    return {epoch, seq, ts, state[4]}
end

local function side(zset, prefix, command)
    local prices = redis.call(command, zset, 0, -1)
    local found = {}
    if #prices == 0 then
        return found
    end
    for first = 1, #prices, 1000 do -- (unpack is bounded by Lua's C stack)
        local fields = {}
        for i = first, math.min(first + 999, #prices) do
            fields[#fields + 1] = prefix .. prices[i]
        end
        local qty = redis.call('HMGET', KEYS[4], unpack(fields))
        for i = 1, #qty do
            local at = first + i - 1
            found[2 * at - 1] = prices[at]
            found[2 * at] = qty[i]
        end
    end
    return found
end

return {epoch, seq, ts, {side(KEYS[2], 'b', 'ZREVRANGE'), side(KEYS[3], 'a', 'ZRANGE')}}
