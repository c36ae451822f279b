-- Store one node's record for ARGV[3] ms (wsgateway/brokers/redis.py): KEYS[1] is the
-- index set of node ids, ARGV[1] the node id, ARGV[2] the record. The index lives as long
-- as the longest-lived record written to it, so it disappears with the last node.
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1] .. ':' .. ARGV[1], ARGV[2], 'PX', ttl)
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
