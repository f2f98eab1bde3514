"""Lua run inside Redis for the gate: each call of :class:`~.redis.RedisGate` is one script, so
the checks of every worker on every host are serialised by Redis itself.

Time is the Redis server's (``TIME``), one clock for every host. Times are written with
``string.format('%.6f')``: Lua turns a number into text with 14 significant digits, which
would round an epoch time to a tenth of a millisecond and make the rate window inexact. Replies
carry fractions as text for the same reason (Redis truncates a Lua number to an integer).

Gate hash fields: ``state`` (0 closed, 1 half-open, 2 open), ``failures`` (consecutive
retryable failures while closed), ``opened_at``, ``probe`` (the half-open probe's slot) and
``probe_expires``.
"""

from typing import Final

# KEYS[1] the gate hash, KEYS[2] its slots, KEYS[3] its sends, KEYS[4] the index of circuits not
# closed, KEYS[5] the order hash and KEYS[6] its ahead set (both only read when ARGV[8] > 0).
# ARGV: 1 the new slot id, 2 lease (s), 3 rate requests (0: no rate limit), 4 rate per (s),
# 5 max in flight (0: none), 6 '1' with a circuit breaker, 7 its cooldown (s), 8 the position
# (0: unordered), 9 the ordering idle TTL (ms), 10 the index field, 11 '1' when gated.
# Returns {go, slot ('' for none), wait (text), reason ('' for none), probe}.
ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(x) return string.format('%.6f', x) end
local function wait(seconds, reason)
  return {0, '', num(math.max(seconds, 0.001)), reason, 0}
end
local function extend(key, ms)
  local ttl = redis.call('PTTL', key)
  -- Never shorten it (another slot may hold a longer lease); -1 is no expiry yet.
  if ttl < ms then redis.call('PEXPIRE', key, ms) end
end

local seq = tonumber(ARGV[8])
if seq > 0 then
  local order = redis.call('HMGET', KEYS[5], 'assigned', 'settled')
  if order[1] or order[2] then
    redis.call('PEXPIRE', KEYS[5], ARGV[9])
    redis.call('PEXPIRE', KEYS[6], ARGV[9])
    if seq > tonumber(order[2] or '0') + 1 then
      -- The worker watches waiting_for and asks again when the key moves; this is a fallback.
      return wait(0.25, 'ordering')
    end
  end
end
if ARGV[11] ~= '1' then return {1, '', '0', '', 0} end

local breaker = ARGV[6] == '1'
local probe = 0
if breaker then
  local g = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'probe', 'probe_expires')
  local state = tonumber(g[1] or '0')
  if state == 2 then
    local left = tonumber(g[2] or '0') + tonumber(ARGV[7]) - now
    if left > 0 then return wait(left, 'circuit_open') end
    probe = 1
  elseif state == 1 then
    local left = 0
    if g[3] then left = tonumber(g[4] or '0') - now end
    if left > 0 then return wait(math.min(left, 1.0), 'probe') end
    probe = 1
  end
end

local lease = tonumber(ARGV[2])
local max = tonumber(ARGV[5])
local requests = tonumber(ARGV[3])
local in_flight = max > 0 or breaker
if in_flight then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', num(now))
  if max > 0 and redis.call('ZCARD', KEYS[2]) >= max then
    -- A slot frees when a delivery ends, which cannot be predicted, or at the earliest lease
    -- expiry: ask again soon (0.1 s, or sooner when a lease runs out first).
    local hint = 0.1
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if #first > 0 then hint = math.min(hint, tonumber(first[2]) - now) end
    return wait(hint, 'max_in_flight')
  end
end

if requests > 0 then
  -- A request counts in the window from when it is let go until `per` after it ended (its
  -- score is its lease expiry while in flight, its end once released): it reaches the target
  -- somewhere in between, so no window at the target can hold more than `requests`.
  local per = tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', num(now - per))
  if redis.call('ZCARD', KEYS[3]) >= requests then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
    -- All still in flight: none leaves before `per` after it ends, which is not known yet.
    if oldest > now then return wait(per, 'rate_limit') end
    return wait(oldest + per - now, 'rate_limit')
  end
  redis.call('ZADD', KEYS[3], num(now + lease), ARGV[1])
  extend(KEYS[3], math.ceil((lease + per) * 1000) + 1000)
end

if not (in_flight or requests > 0) then return {1, '', '0', '', 0} end
if in_flight then
  redis.call('ZADD', KEYS[2], num(now + lease), ARGV[1])
  extend(KEYS[2], math.ceil(lease * 1000) + 1000)
end
if probe == 1 then
  redis.call('HSET', KEYS[1], 'state', 1, 'probe', ARGV[1], 'probe_expires', num(now + lease))
  redis.call('HSET', KEYS[4], ARGV[10], 1)
end
return {1, ARGV[1], '0', '', probe}
"""

# KEYS[1] the gate hash, KEYS[2] its slots, KEYS[3] the index of circuits not closed, KEYS[4]
# its sends. ARGV: 1 the slot ('' for none), 2 the outcome (success, failure, unsent), 3 '1' with
# a circuit breaker, 4 its failure threshold, 5 the index field, 6 '1' with a rate limit.
# Returns {before, after} when the circuit changed state, else nil.
RELEASE: Final = """
local slot = ARGV[1]
if slot ~= '' then
  redis.call('ZREM', KEYS[2], slot)
  if ARGV[6] == '1' then
    -- From now on the request counts in the rate window until `per` after this moment.
    local t = redis.call('TIME')
    local ended = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
    redis.call('ZADD', KEYS[4], 'XX', ended, slot)
  end
end
if ARGV[3] ~= '1' then return false end
local g = redis.call('HMGET', KEYS[1], 'state', 'failures', 'probe')
local state = tonumber(g[1] or '0')
local is_probe = slot ~= '' and g[3] == slot
local outcome = ARGV[2]

local function open()
  local t = redis.call('TIME')
  local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'state', 2, 'opened_at', now, 'failures', 0)
  redis.call('HDEL', KEYS[1], 'probe', 'probe_expires')
  redis.call('HSET', KEYS[3], ARGV[5], 2)
end

if outcome == 'unsent' then
  -- Says nothing about the target; a probe that never went leaves room for the next one.
  if is_probe then redis.call('HDEL', KEYS[1], 'probe', 'probe_expires') end
  return false
end
if outcome == 'success' then
  if state == 1 and is_probe then
    redis.call('HSET', KEYS[1], 'state', 0, 'failures', 0)
    redis.call('HDEL', KEYS[1], 'probe', 'probe_expires', 'opened_at')
    redis.call('HDEL', KEYS[3], ARGV[5])
    return {1, 0}
  end
  if g[2] and g[2] ~= '0' then redis.call('HSET', KEYS[1], 'failures', 0) end
  return false
end
if state == 1 then
  if is_probe then
    open()
    return {1, 2}
  end
  return false
end
-- Open: a late answer to a request let go before the circuit opened.
if state == 2 then return false end
if redis.call('HINCRBY', KEYS[1], 'failures', 1) >= tonumber(ARGV[4]) then
  open()
  return {0, 2}
end
return false
"""

# KEYS: per position, its order hash then its ahead set. ARGV[1] the ordering idle TTL (ms),
# then the positions, in the order of KEYS.
SETTLE: Final = """
for i = 1, #KEYS, 2 do
  local order, ahead = KEYS[i], KEYS[i + 1]
  local seq = tonumber(ARGV[(i + 1) / 2 + 1])
  -- No state: the key was forgotten (idle) and starts free, so there is nothing to advance.
  if redis.call('EXISTS', order) == 1 then
    local settled = tonumber(redis.call('HGET', order, 'settled') or '0')
    if seq == settled + 1 then
      settled = seq
      while redis.call('ZREM', ahead, tostring(settled + 1)) == 1 do
        settled = settled + 1
      end
      redis.call('HSET', order, 'settled', tostring(settled))
    elseif seq > settled + 1 then
      redis.call('ZADD', ahead, seq, tostring(seq))
    end
    redis.call('PEXPIRE', order, ARGV[1])
    redis.call('PEXPIRE', ahead, ARGV[1])
  end
end
return 0
"""
