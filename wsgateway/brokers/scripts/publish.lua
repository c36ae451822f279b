-- Number, store and announce one batch of messages, atomically (wsgateway/brokers/redis.py).
--
-- KEYS, per distinct topic i of the batch: KEYS[2i-1] its meta hash (e = epoch, s = seq),
--   KEYS[2i] its history stream (entry id <seq>-0, fields d = data, t = ts).
-- ARGV: ts, epoch candidate, channel count C;
--   per channel (4): pub/sub channel, history size, history ttl ms, topic ttl ms;
--   per topic (2): channel index, topic name;
--   then the messages in two arguments: their layout, "<topic index> <data length>" per
--   message separated by spaces, and all their data (encoded JSON) back to back. (Two
--   arguments instead of two per message: the client packs each argument in Python, and
--   that cost dominated the publish.)
-- Returns the number of messages published.
local ts = ARGV[1]
local candidate = ARGV[2]
local a = 4
local channels = {}
for j = 1, tonumber(ARGV[3]) do
    channels[j] = {
        pubsub = ARGV[a], size = tonumber(ARGV[a + 1]),
        history_ttl = ARGV[a + 2], topic_ttl = ARGV[a + 3],
        names = {}, topics = {}, layout = {}, body = {},
    }
    a = a + 4
end

local topics = {}
for i = 1, #KEYS / 2 do
    local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
    local state = redis.call('HMGET', meta, 'e', 's')
    local epoch, seq = state[1], tonumber(state[2] or 0)
    if not epoch then
        -- No numbering (never published, expired after topic_ttl, or lost with the data):
        -- a new epoch from seq 1. A stream left from the old epoch would refuse the new
        -- ids ("ID equal or smaller than the target stream top item"): it goes first.
        epoch, seq = candidate, 0
        redis.call('DEL', stream)
    end
    topics[i] = {
        meta = meta, stream = stream, channel = channels[tonumber(ARGV[a])],
        name = ARGV[a + 1], epoch = epoch, seq = seq, slot = nil,
    }
    a = a + 2
end

local count = 0
local blob, at = ARGV[a + 1], 1
for index, length in string.gmatch(ARGV[a], '(%d+) (%d+)') do
    local topic = topics[tonumber(index)]
    length = tonumber(length)
    local data = string.sub(blob, at, at + length - 1)
    at = at + length
    local channel = topic.channel
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
    redis.call('HSET', topic.meta, 'e', topic.epoch, 's', string.format('%d', topic.seq))
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
