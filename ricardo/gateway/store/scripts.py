"""The Lua scripts of the Redis store: each runs atomically, so replicas never race on a read-modify-write.

Records (the config document, blobs) are hashes {version, data, digest, provisional}; "provisional" marks a
record written back from a replica's copy or created by init_config and not updated since.
"""

# Write the record ARGV[2] as version ARGV[1] if none exists, or over a provisional one of a lower version;
# return the record in force. ARGV[3]: channel to announce a write on ("" for none).
SEED = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version'))
local version = tonumber(ARGV[1])
if current == nil or (current < version and redis.call('HEXISTS', KEYS[1], 'provisional') == 1) then
  redis.call('HSET', KEYS[1], 'version', version, 'data', ARGV[2], 'digest', redis.sha1hex(ARGV[2]), 'provisional', 1)
  if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], version) end
end
return redis.call('HMGET', KEYS[1], 'version', 'data')
"""

# Compare-and-set ARGV[2] if the version in force is ARGV[1]; return the new version, or 0 on conflict.
# If Redis lost the record, the caller's copy (ARGV[4] at version ARGV[5]) is written back first.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 and ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'version', ARGV[5], 'data', ARGV[4], 'digest', redis.sha1hex(ARGV[4]), 'provisional', 1)
end
local current = tonumber(redis.call('HGET', KEYS[1], 'version'))
if current ~= tonumber(ARGV[1]) then return 0 end
local version = current + 1
redis.call('HSET', KEYS[1], 'version', version, 'data', ARGV[2], 'digest', redis.sha1hex(ARGV[2]))
redis.call('HDEL', KEYS[1], 'provisional')
redis.call('PUBLISH', ARGV[3], version)
return version
"""

# A new blob version, above both the stored one and the caller's (ARGV[2]) so numbers survive data loss; it expires
# after ARGV[3] ms unless written again (0: kept for good).
PUT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0
local version = math.max(current, tonumber(ARGV[2])) + 1
redis.call('HSET', KEYS[1], 'version', version, 'data', ARGV[1], 'digest', redis.sha1hex(ARGV[1]))
redis.call('HDEL', KEYS[1], 'provisional')
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) else redis.call('PERSIST', KEYS[1]) end
return version
"""

PUSH_STATS = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
"""

# Flat list of (replica id, stats, ms left to live); drops from the index the replicas whose stats expired.
PULL_STATS = """
local out = {}
for _, replica in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. replica
  local stats = redis.call('GET', key)
  if stats then
    table.insert(out, replica); table.insert(out, stats); table.insert(out, redis.call('PTTL', key))
  else
    redis.call('SREM', KEYS[1], replica)
  end
end
return out
"""

ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Add each key's dollars (ARGV[4], ARGV[5] ... as key id, amount pairs) to the day's spend hash KEYS[1], once per
# writer's batch: KEYS[2] holds each writer's (ARGV[1]) last batch number; a batch (ARGV[2]) not above it was
# applied already (its reply was lost, and the writer sent it again). Both keys expire after ARGV[3] seconds.
ADD_SPEND = """
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
for i = 4, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
