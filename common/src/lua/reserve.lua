-- Reserve units of one sale in one atomic step.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] idempotency hash,
-- KEYS[4] orders hash, KEYS[5] outbox zset of '<order id>:<rev>' members,
-- KEYS[6] rate-limit bucket,
-- KEYS[7] holds zset (order id scored by hold deadline)
-- ARGV[1] fresh order id, ARGV[2] user, ARGV[3] quantity,
-- ARGV[4] idempotency key ('' for none), ARGV[5] request fingerprint,
-- ARGV[6] namespace, ARGV[7] name
-- Nothing is written unless every check passes (the rate-limit bucket
-- only spends a token for a request it lets through).
local sale = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local idem = ARGV[4]
if idem ~= '' then
  local prev = redis.call('HGET', KEYS[3], idem)
  if prev then
    local sep = string.find(prev, '|', 1, true)
    local oid = string.sub(prev, 1, sep - 1)
    if string.sub(prev, sep + 1) ~= ARGV[5] then
      return {'idem_mismatch', oid}
    end
    local rec = redis.call('HGET', KEYS[4], oid)
    local rev = rec and string.match(rec, '"rev":(%d+)') or '1'
    local pending = 0
    if redis.call('ZSCORE', KEYS[5], oid .. ':' .. rev) then
      pending = 1
    end
    return {'replay', rec, pending}
  end
end

local cfg = redis.call('HMGET', sale, 'start_ms', 'end_ms', 'paused', 'closed',
  'per_user', 'per_order', 'hold_ms', 'rl_rate', 'rl_burst', 'remaining')
if not cfg[1] then
  return {'not_found'}
end
local start_ms, end_ms = tonumber(cfg[1]), tonumber(cfg[2])

local rate = tonumber(cfg[8]) or 0
local bucket_tokens
if rate > 0 then
  local burst = math.max(tonumber(cfg[9]) or 1, 1)
  local b = redis.call('HMGET', KEYS[6], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate / 1000)
  if tokens < 1 then
    return {'rate_limited', math.ceil((1 - tokens) * 1000 / rate)}
  end
  bucket_tokens = tokens - 1
  redis.call('HSET', KEYS[6], 'tokens', tostring(bucket_tokens), 'ts', now)
  redis.call('PEXPIRE', KEYS[6], math.ceil(burst * 1000 / rate) + 1000)
end

if cfg[4] == '1' then
  return {'not_open', 'closed', start_ms, end_ms}
end
if cfg[3] == '1' then
  return {'not_open', 'paused', start_ms, end_ms}
end
if now < start_ms then
  return {'not_open', 'not_started', start_ms, end_ms}
end
if now >= end_ms then
  return {'not_open', 'ended', start_ms, end_ms}
end

local qty = tonumber(ARGV[3])
local per_order = tonumber(cfg[6])
if qty > per_order then
  return {'per_order', per_order}
end
local per_user = tonumber(cfg[5])
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
if held + qty > per_user then
  return {'user_limit', per_user, held}
end
local remaining = tonumber(cfg[10])
if remaining < qty then
  return {'sold_out', remaining}
end

local hold_ms = tonumber(cfg[7]) or 0
local status, expires = 'confirmed', cjson.null
redis.call('HINCRBY', sale, 'remaining', -qty)
if hold_ms > 0 then
  status = 'reserved'
  expires = now + hold_ms
  redis.call('HINCRBY', sale, 'reserved', qty)
else
  redis.call('HINCRBY', sale, 'sold', qty)
end
redis.call('HINCRBY', KEYS[2], ARGV[2], qty)
local oid = ARGV[1]
local record = cjson.encode({
  v = 1, rev = 1, orderId = oid, namespace = ARGV[6], name = ARGV[7], user = ARGV[2],
  quantity = qty, status = status, reservedAtMs = now, holdExpiresAtMs = expires,
})
redis.call('HSET', KEYS[4], oid, record)
redis.call('ZADD', KEYS[5], now, oid .. ':1')
if hold_ms > 0 then
  redis.call('ZADD', KEYS[7], expires, oid)
end
if idem ~= '' then
  redis.call('HSET', KEYS[3], idem, oid .. '|' .. ARGV[5])
end
return {'ok', record}
