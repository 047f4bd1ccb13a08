-- Join a sale's waiting room: one place per identity, numbered in the order
-- the joins reach Redis.
-- KEYS[1] sale hash, KEYS[2] queue hash, KEYS[3] line list,
-- KEYS[4] queue users hash, KEYS[5] spent challenges zset
-- ARGV[1] a fresh ticket id, ARGV[2] the signed-in buyer ('' when the
-- ticket is the identity), ARGV[3] the solved challenge's nonce ('' when the
-- sale asks none), ARGV[4] that challenge's expiry (ms)
-- Returns {'ok', arrival, ticket id, joined ms, 1 new | 0 already in line}
-- or {'refused', reason, detail}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg = redis.call('HMGET', KEYS[1], 'adm_mode', 'q_open_ms', 'start_ms', 'end_ms',
  'closed', 'remaining', 'reserved')
if not cfg[3] then
  return {'refused', 'not_found', 0}
end
if not cfg[1] or cfg[1] == 'open' then
  return {'refused', 'no_queue', 0}
end
local open_ms = tonumber(cfg[2])
if now < open_ms then
  return {'refused', 'queue_not_open', open_ms}
end
if cfg[5] == '1' or now >= tonumber(cfg[4]) then
  return {'refused', 'ended', 0}
end
if tonumber(cfg[6]) + tonumber(cfg[7]) <= 0 then
  return {'refused', 'sold_out', 0}
end
local user = ARGV[2]
if user ~= '' then
  local place = redis.call('HGET', KEYS[4], user)
  if place then
    local sep = string.find(place, ':', 1, true)
    local arrival = tonumber(string.sub(place, 1, sep - 1))
    return {'ok', arrival, redis.call('LINDEX', KEYS[3], arrival - 1),
      tonumber(string.sub(place, sep + 1)), 0}
  end
end
if ARGV[3] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[3]) == 0 then
    return {'refused', 'challenge_spent', 0}
  end
end
local arrival = redis.call('HINCRBY', KEYS[2], 'joined', 1)
redis.call('RPUSH', KEYS[3], ARGV[1])
if user ~= '' then
  redis.call('HSET', KEYS[4], user, arrival .. ':' .. now)
end
if now < tonumber(cfg[3]) then
  redis.call('HINCRBY', KEYS[2], 'pre', 1)
end
return {'ok', arrival, ARGV[1], now, 1}
