"""The Lua scripts of the Redis backend: each one is a single atomic step on the server.

The limiter's three mirror bucket.DictBucket step for step (GCRA on ``tat``, method entries
``"operating reset_at"`` in a hash, pruned ``FORGET`` seconds after their reset) and read the
time from Redis itself, so hosts whose clocks differ still share one bucket. Numbers cross the
boundary as strings: Redis would truncate a Lua float reply to an integer.
"""

from __future__ import annotations

__all__ = ["BOOK", "CLAIM", "FILL", "LEASE_ACQUIRE", "LEASE_RELEASE", "RESERVE", "TOKENS_REPLACE"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

#: KEYS: tat, methods. ARGV: interval, tolerance, max_backlog, soft_budget, forget_after, key.
#: Returns {"held", "operating reset_at", watched} or {"slot", seconds_to_wait, watched}.
RESERVE = (
    _NOW
    + """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local backlog, soft, forget, key = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local entries = redis.call('HGETALL', KEYS[2])
local watched, held = {}, nil
for i = 1, #entries, 2 do
  local name, value = entries[i], entries[i + 1]
  local cut = string.find(value, ' ', 1, true)
  local operating = tonumber(string.sub(value, 1, cut - 1))
  local reset_at = tonumber(string.sub(value, cut + 1))
  if reset_at + forget < now then
    redis.call('HDEL', KEYS[2], name)
  else
    watched[#watched + 1] = name
    if name == key and operating >= soft and reset_at > now then held = value end
  end
end
if held then return {'held', held, watched} end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat > now + tolerance + backlog then tat = now + tolerance + backlog end
local send_at = math.max(now, tat - tolerance)
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX',
  math.floor((new_tat - now + 60) * 1000))
return {'slot', string.format('%.6f', send_at - now), watched}
"""
)

#: KEYS: tat. ARGV: interval, tolerance, max_backlog. A full bucket: the next request waits.
FILL = (
    _NOW
    + """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local full = now + tolerance + interval
if full > tat then tat = full end
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.floor((tat - now + 60) * 1000))
return 1
"""
)

#: KEYS: methods. ARGV: key, operating, reset_at ('' when unknown), unknown_reset.
BOOK = (
    _NOW
    + """
local known = 0
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  known = tonumber(string.sub(value, string.find(value, ' ', 1, true) + 1))
end
local reset_at = tonumber(ARGV[3])
if not reset_at then
  if known > now then reset_at = known else reset_at = now + tonumber(ARGV[4]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%.6f', reset_at))
return 1
"""
)

#: KEYS: lease, fence counter. ARGV: lease ms. The new fencing token, or 0 while someone holds it.
LEASE_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[1])
return fence
"""

#: KEYS: lease. ARGV: our fencing token. Only the holder's own lease is released.
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: KEYS: token document, fence it was written under. ARGV: our fence, the access token we
#: replace, the new record. Refused (0) when a newer fence wrote, or the pair is not the one
#: we refreshed: a holder whose lease lapsed never overwrites a newer pair.
TOKENS_REPLACE = """
local written = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[1])
if written >= mine then return 0 end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if not ok or doc['access_token'] ~= ARGV[2] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: owner of a reservation. ARGV: this worker, the lease key prefix, how long to remember.
#: Ours if nobody owns it, we do, or its owner's lease expired.
CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
