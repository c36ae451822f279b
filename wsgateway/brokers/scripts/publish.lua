-- Number, store and announce one batch of messages, atomically (wsgateway/brokers/redis.py).
--
-- KEYS, per distinct topic of the batch, in order: its meta hash (e = epoch, s = seq; on
--   last and book channels t = ts of the update at s, on last channels v = its data), its
--   history stream (entry id <seq>-0, fields d = data, t = ts), and on book channels its
--   bids and asks (sorted sets of price texts, scored by their text) and its levels hash
--   (qty by "b<price>" / "a<price>").
-- ARGV: ts, epoch candidate, channel count C;
--   per channel (7): pub/sub channel, history size, history ttl ms, topic ttl ms, mode
--   (stream, last or book), max book levels per side, checksum (1 or 0);
--   per topic (2): channel index, topic name;
--   then the messages in two arguments: their layout, "<topic index> <data length>" per
--   message separated by spaces, and all their data back to back. (Two arguments instead
--   of two per message: the client packs each argument in Python, and that cost dominated
--   the publish.) A message's data is encoded JSON, or on a book channel the book message
--   as "<snapshot 0|1>|<price qty ...>|<price qty ...>" (bids, then asks; canonical
--   decimal texts, redis_codec.py), which is applied here and replaced by what changed:
--   the update's data, the same bytes wsgateway/book.py's delta_data gives.
-- Returns the number of messages published.
local ts = ARGV[1]
local candidate = ARGV[2]
local a = 4
local channels = {}
for j = 1, tonumber(ARGV[3]) do
    channels[j] = {
        pubsub = ARGV[a], size = tonumber(ARGV[a + 1]),
        history_ttl = ARGV[a + 2], topic_ttl = ARGV[a + 3], mode = ARGV[a + 4],
        max_levels = tonumber(ARGV[a + 5]), checksum = ARGV[a + 6] == '1',
        names = {}, topics = {}, layout = {}, body = {},
    }
    a = a + 7
end

local topics = {}
local k = 1 -- the topic's first key
while k <= #KEYS do
    local channel = channels[tonumber(ARGV[a])]
    local meta, stream = KEYS[k], KEYS[k + 1]
    local topic = {
        meta = meta, stream = stream, channel = channel,
        name = ARGV[a + 1], slot = nil, value = nil,
    }
    k = k + 2
    if channel.mode == 'book' then
        topic.bids, topic.asks, topic.levels = KEYS[k], KEYS[k + 1], KEYS[k + 2]
        k = k + 3
    end
    local state = redis.call('HMGET', meta, 'e', 's')
    local epoch, seq = state[1], tonumber(state[2] or 0)
    if not epoch then
        -- No numbering (never published, expired after topic_ttl, or lost with the data):
        -- a new epoch from seq 1. A stream left from the old epoch would refuse the new
        -- ids ("ID equal or smaller than the target stream top item"): it goes first, and
        -- a book left from it too (the new epoch starts from an empty book).
        epoch, seq = candidate, 0
        redis.call('DEL', stream)
        if topic.bids then
            redis.call('DEL', topic.bids, topic.asks, topic.levels)
        end
    end
    topic.epoch, topic.seq = epoch, seq
    topics[#topics + 1] = topic
    a = a + 2
end

-- Order books (wsgateway/book.py does the same in Python for the memory broker).

-- CRC32 (IEEE, as zlib.crc32), table-driven; the table is built on first use.
local crc_table
local function crc32(text)
    local band, bxor, rshift = bit.band, bit.bxor, bit.rshift
    if not crc_table then
        crc_table = {}
        for n = 0, 255 do
            local c = n
            for _ = 1, 8 do
                if band(c, 1) == 1 then
                    c = bxor(rshift(c, 1), 0xEDB88320)
                else
                    c = rshift(c, 1)
                end
            end
            crc_table[n] = c
        end
    end
    -- (~0.2 µs a byte in Redis's Lua: the bulk of a book message's cost with checksum on;
    -- one string.byte for all the bytes saves a sixth. At most 20 levels of at most
    -- 15 + 40 characters: well within the C stack string.byte needs.)
    local crc = -1 -- 0xFFFFFFFF as LuaBitOp's signed 32 bits
    local table_ = crc_table
    local bytes = {string.byte(text, 1, -1)}
    for i = 1, #bytes do
        crc = bxor(rshift(crc, 8), table_[band(bxor(crc, bytes[i]), 255)])
    end
    crc = bit.bnot(crc)
    if crc < 0 then
        crc = crc + 4294967296
    end
    return crc
end

-- The levels of a side best first, at most `depth` (0: all), as {price, qty, ...}.
local function best(zset, levels, prefix, descending, depth)
    local prices = redis.call(descending and 'ZREVRANGE' or 'ZRANGE', zset, 0, depth - 1)
    local found = {}
    if #prices == 0 then
        return found
    end
    local fields = {}
    for i = 1, #prices do
        fields[i] = prefix .. prices[i]
    end
    local qty = {}
    for first = 1, #fields, 1000 do -- (unpack is bounded by Lua's C stack)
        local part = redis.call('HMGET', levels, unpack(fields, first, math.min(first + 999, #fields)))
        for i = 1, #part do
            qty[first + i - 1] = part[i]
        end
    end
    for i = 1, #prices do
        found[2 * i - 1] = prices[i]
        found[2 * i] = qty[i]
    end
    return found
end

-- Kraken's checksum of the book (book.checksum): best 10 asks then best 10 bids, each
-- price then qty with "." removed and then leading zeros.
local function checksum(topic)
    local asks = table.concat(best(topic.asks, topic.levels, 'a', false, 10), ' ')
    local bids = table.concat(best(topic.bids, topic.levels, 'b', true, 10), ' ')
    -- Each text preceded by a space, so that three patterns over the whole do it.
    local text = string.gsub(' ' .. asks .. ' ' .. bids, '%.', '')
    text = string.gsub(text, ' 0+', ' ')
    text = string.gsub(text, ' ', '')
    return string.format('%d', crc32(text))
end

-- Set a side's levels from "price qty price qty ..." (qty 0 removes one).
local function set_levels(zset, levels, prefix, text)
    for price, qty in string.gmatch(text, '(%S+) (%S+)') do
        if qty == '0' then
            if redis.call('ZREM', zset, price) == 1 then
                redis.call('HDEL', levels, prefix .. price)
            end
        else
            redis.call('ZADD', zset, price, price)
            redis.call('HSET', levels, prefix .. price, qty)
        end
    end
end

-- Drop a side's worst levels beyond `keep` (book.Side.trim); their prices, best first.
local function trim(zset, levels, prefix, descending, keep)
    local extra = redis.call('ZCARD', zset) - keep
    if extra <= 0 then
        return {}
    end
    local dropped
    if descending then -- the worst bids are the lowest: the front, reported best first
        local lowest = redis.call('ZRANGE', zset, 0, extra - 1)
        redis.call('ZREMRANGEBYRANK', zset, 0, extra - 1)
        dropped = {}
        for i = #lowest, 1, -1 do
            dropped[#dropped + 1] = lowest[i]
        end
    else
        dropped = redis.call('ZRANGE', zset, keep, -1)
        redis.call('ZREMRANGEBYRANK', zset, keep, -1)
    end
    for first = 1, #dropped, 1000 do
        local fields = {}
        for i = first, math.min(first + 999, #dropped) do
            fields[#fields + 1] = prefix .. dropped[i]
        end
        redis.call('HDEL', levels, unpack(fields))
    end
    return dropped
end

-- '["p","q"],["p","q"]' of "p q p q" (canonical texts need no JSON escaping).
local function json_levels(text)
    local listed = string.gsub(text, '(%S+) (%S+) ?', '["%1","%2"],')
    return string.sub(listed, 1, -2)
end

local function json_pairs(flat)
    local listed = {}
    for i = 1, #flat, 2 do
        listed[#listed + 1] = '["' .. flat[i] .. '","' .. flat[i + 1] .. '"]'
    end
    return table.concat(listed, ',')
end

-- Then one [price, "0"] per level dropped by trim.
local function json_removals(listed, prices)
    if #prices == 0 then
        return listed
    end
    local parts = {}
    if listed ~= '' then
        parts[1] = listed
    end
    for i = 1, #prices do
        parts[#parts + 1] = '["' .. prices[i] .. '","0"]'
    end
    return table.concat(parts, ',')
end

-- Apply one book message to the topic's book; returns the update's data (book.delta_data).
local function apply_book(topic, message)
    local channel = topic.channel
    local bar = string.find(message, '|', 3, true)
    local snapshot = string.sub(message, 1, 1) == '1'
    local bids, asks = string.sub(message, 3, bar - 1), string.sub(message, bar + 1)
    if snapshot then
        redis.call('DEL', topic.bids, topic.asks, topic.levels)
    end
    set_levels(topic.bids, topic.levels, 'b', bids)
    set_levels(topic.asks, topic.levels, 'a', asks)
    local dropped_bids = trim(topic.bids, topic.levels, 'b', true, channel.max_levels)
    local dropped_asks = trim(topic.asks, topic.levels, 'a', false, channel.max_levels)
    local data
    if snapshot then
        data = '{"snapshot":true,"bids":[' ..
            json_pairs(best(topic.bids, topic.levels, 'b', true, 0)) .. '],"asks":[' ..
            json_pairs(best(topic.asks, topic.levels, 'a', false, 0)) .. ']'
    else
        data = '{"bids":[' .. json_removals(json_levels(bids), dropped_bids) .. '],"asks":[' ..
            json_removals(json_levels(asks), dropped_asks) .. ']'
    end
    if channel.checksum then
        return data .. ',"checksum":' .. checksum(topic) .. '}'
    end
    return data .. '}'
end

local count = 0
local blob, at = ARGV[a + 1], 1
for index, length in string.gmatch(ARGV[a], '(%d+) (%d+)') do
    local topic = topics[tonumber(index)]
    length = tonumber(length)
    local data = string.sub(blob, at, at + length - 1)
    at = at + length
    local channel = topic.channel
    if channel.mode == 'book' then
        data = apply_book(topic, data)
        length = #data
    end
    if channel.mode ~= 'stream' then
        topic.value = data
    end
    local seq = topic.seq + 1
    if channel.size > 0 then
        -- (seq .. '-0': Lua writes an integral number below 1e14 without a decimal point)
        local added = redis.pcall('XADD', topic.stream, 'MAXLEN', '~', channel.size,
            seq .. '-0', 'd', data, 't', ts)
        if type(added) == 'table' and added.err then
            if topic.slot then
                return redis.error_reply(added.err)
            end
            -- The stream is ahead of the meta's seq (acknowledged writes lost in a
            -- failover, or the meta rewritten): this numbering can no longer be trusted
            -- by clients, so the topic starts a new epoch (nothing of it was sent yet).
            redis.call('DEL', topic.stream)
            topic.epoch = (candidate == topic.epoch) and (candidate .. 'r') or candidate
            seq = 1
            redis.call('XADD', topic.stream, 'MAXLEN', '~', channel.size, '1-0',
                'd', data, 't', ts)
        end
    end
    topic.seq = seq
    local slot = topic.slot
    if not slot then
        -- The topic's first update in this batch: its entry in the channel's frame lists
        -- the first seq and the epoch once; its next updates follow on, one seq each.
        local listed = channel.topics
        slot = #channel.names + 1
        topic.slot = slot
        channel.names[slot] = topic.name
        listed[#listed + 1] = seq
        listed[#listed + 1] = topic.epoch
        listed[#listed + 1] = #topic.name
    end
    local layout, n = channel.layout, #channel.layout
    layout[n + 1] = slot
    layout[n + 2] = length
    channel.body[#channel.body + 1] = data
    count = count + 1
end

for i = 1, #topics do
    local topic = topics[i]
    local mode = topic.channel.mode
    local seq = string.format('%d', topic.seq)
    if mode == 'stream' then
        redis.call('HSET', topic.meta, 'e', topic.epoch, 's', seq)
    elseif mode == 'last' then
        redis.call('HSET', topic.meta, 'e', topic.epoch, 's', seq, 't', ts, 'v', topic.value)
    else
        redis.call('HSET', topic.meta, 'e', topic.epoch, 's', seq, 't', ts)
        redis.call('PEXPIRE', topic.bids, topic.channel.topic_ttl)
        redis.call('PEXPIRE', topic.asks, topic.channel.topic_ttl)
        redis.call('PEXPIRE', topic.levels, topic.channel.topic_ttl)
    end
    redis.call('PEXPIRE', topic.meta, topic.channel.topic_ttl)
    if topic.channel.size > 0 then
        redis.call('PEXPIRE', topic.stream, topic.channel.history_ttl)
    end
end

-- One pub/sub message per channel (redis_codec.py decodes it): the header line (the
-- topics, then each update's topic index and data length), the topics' names, then each
-- update's data, back to back.
for j = 1, #channels do
    local channel = channels[j]
    if #channel.names > 0 then
        redis.call('PUBLISH', channel.pubsub, 'W2 ' .. ts .. ' ' .. #channel.names .. ' ' ..
            table.concat(channel.topics, ' ') .. ' ' .. table.concat(channel.layout, ' ') ..
            '\n' .. table.concat(channel.names) .. table.concat(channel.body))
    end
end
return count
