"""Lua run inside Redis, where a group of commands must happen atomically.

Both scripts build some key names from arguments (dedupe keys per message, a hash per retried
event), so they need a single Redis instance or a primary (not Redis Cluster).
"""

from typing import Final

# KEYS[1] the stream, then per message its dedupe keys (its delivery id's, and its replay key's
# when it has one), then the ordering-key hashes of its positions.
# ARGV[1] the dedupe TTL in seconds, ARGV[2] the ordering TTL in milliseconds, ARGV[3] the name
# of the ordering field; then per message: event id, number of dedupe keys, number of
# positions P, number of field/value items, the items, and (when P > 0) the P + 1 pieces of the
# ordering text the seqs go between (see queue/positions.py: template).
# A message all of whose dedupe keys are new is added, its keys naming it, and each of its
# ordering keys gives it the next seq (HINCRBY of the hash's ``assigned``, whose idle expiry is
# pushed back): a position is given if and only if the message is enqueued. One with a known
# key is a duplicate of the event that key names, and its other keys are recorded for that
# event too (a replay's new delivery id then answers "duplicate" as well); it gets no position.
# Returns per message two items: 0 and the new event id, or 1 and the event id stored first.
ENQUEUE: Final = """
local out = {}
local a = 4
local k = 2
while a <= #ARGV do
  local event_id = ARGV[a]
  local last = k + tonumber(ARGV[a + 1]) - 1
  local p = tonumber(ARGV[a + 2])
  local n = tonumber(ARGV[a + 3])
  local pieces = 0
  if p > 0 then pieces = p + 1 end
  local first = false
  local set = k - 1
  for i = k, last do
    first = redis.call('SET', KEYS[i], event_id, 'NX', 'GET', 'EX', ARGV[1])
    if first then break end
    set = i
  end
  if first then
    for i = k, set do
      redis.call('SET', KEYS[i], first, 'XX', 'EX', ARGV[1])
    end
    for i = set + 2, last do
      redis.call('SET', KEYS[i], first, 'NX', 'EX', ARGV[1])
    end
    out[#out + 1] = 1
    out[#out + 1] = first
  else
    local fields = {unpack(ARGV, a + 4, a + 3 + n)}
    if p > 0 then
      local b = a + 4 + n
      local text = {ARGV[b]}
      for j = 1, p do
        text[#text + 1] = redis.call('HINCRBY', KEYS[last + j], 'assigned', 1)
        redis.call('PEXPIRE', KEYS[last + j], ARGV[2])
        text[#text + 1] = ARGV[b + j]
      end
      fields[#fields + 1] = ARGV[3]
      fields[#fields + 1] = table.concat(text)
    end
    local added = redis.pcall('XADD', KEYS[1], '*', unpack(fields))
    if type(added) == 'table' and added.err then
      -- Forget the keys, or the sender's retry would be called a duplicate of nothing; give
      -- the seqs back, or the next event of the key would wait for one never sent.
      redis.call('DEL', unpack(KEYS, k, last))
      for j = 1, p do
        redis.call('HINCRBY', KEYS[last + j], 'assigned', -1)
      end
      return added
    end
    out[#out + 1] = 0
    out[#out + 1] = event_id
  end
  k = last + p + 1
  a = a + 4 + n + pieces
end
return out
"""

# KEYS[1] the retry sorted set, KEYS[2] the stream.
# ARGV[1] now (epoch seconds), ARGV[2] the most to move, ARGV[3] the prefix of the retry hashes.
# Each due event's hash becomes a new stream entry; the hash and the set member go, atomically.
PROMOTE_DUE: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, event_id in ipairs(due) do
  local holder = ARGV[3] .. event_id
  local fields = redis.call('HGETALL', holder)
  if #fields > 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
  redis.call('DEL', holder)
  redis.call('ZREM', KEYS[1], event_id)
end
return #due
"""

# KEYS[1] the stream. ARGV[1] the group, ARGV[2] this consumer, ARGV[3..] entry ids.
# Resets the idle time of each entry still pending for this consumer (XCLAIM with JUSTID does
# not count a delivery). An entry another consumer took over meanwhile is left alone: claiming
# it back would have two workers process it. Returns how many are pending for another
# consumer (taken over).
RENEW: Final = """
local taken_over = 0
for i = 3, #ARGV do
  local owner = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #owner > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1) > 0 then
    taken_over = taken_over + 1
  end
end
return taken_over
"""
