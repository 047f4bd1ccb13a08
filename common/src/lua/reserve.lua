-- Reserve units of one sale for one or more purchase attempts, in one atomic
-- step. The attempts are decided one after the other, each exactly as if it
-- had come alone: a gateway gathers the attempts that arrive while its
-- previous calls run, so a herd costs Redis one call per batch, not one per
-- buyer.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] idempotency hash,
-- KEYS[4] orders hash, KEYS[5] outbox zset of '<order id>:<rev>' members,
-- KEYS[6] holds zset (order id scored by hold deadline),
-- KEYS[6 + i] rate-limit bucket of attempt i
-- ARGV[1] namespace, ARGV[2] name; attempt i (from 1) is ARGV[5i - 2 .. 5i + 2]:
-- fresh order id, user, quantity, idempotency key ('' for none), request
-- fingerprint.
-- Returns one reply per attempt. Nothing is written for an attempt unless
-- every check passes (the rate-limit bucket only spends a token for a
-- request it lets through).
local sale, users, idem_hash, orders, outbox, holds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg = redis.call('HMGET', sale, 'start_ms', 'end_ms', 'paused', 'closed',
  'per_user', 'per_order', 'hold_ms', 'rl_rate', 'rl_burst', 'remaining')
local exists = cfg[1] and true or false
local start_ms, end_ms = tonumber(cfg[1]), tonumber(cfg[2])
local per_user, per_order = tonumber(cfg[5]), tonumber(cfg[6])
local hold_ms = tonumber(cfg[7]) or 0
local rate = tonumber(cfg[8]) or 0
local burst = math.max(tonumber(cfg[9]) or 1, 1)
-- The script runs alone on the shard: this copy stays exact.
local remaining = tonumber(cfg[10])
local closed
if exists then
  if cfg[4] == '1' then
    closed = 'closed'
  elseif cfg[3] == '1' then
    closed = 'paused'
  elseif now < start_ms then
    closed = 'not_started'
  elseif now >= end_ms then
    closed = 'ended'
  end
end

local function attempt(i)
  local a = 5 * i - 2
  local oid, user, idem, fingerprint = ARGV[a], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4]
  if idem ~= '' then
    local prev = redis.call('HGET', idem_hash, idem)
    if prev then
      local sep = string.find(prev, '|', 1, true)
      local first = string.sub(prev, 1, sep - 1)
      if string.sub(prev, sep + 1) ~= fingerprint then
        return {'idem_mismatch', first}
      end
      local rec = redis.call('HGET', orders, first)
      local rev = rec and string.match(rec, '"rev":(%d+)') or '1'
      local pending = 0
      if redis.call('ZSCORE', outbox, first .. ':' .. rev) then
        pending = 1
      end
      return {'replay', rec, pending}
    end
  end
  if not exists then
    return {'not_found'}
  end

  if rate > 0 then
    local bucket = KEYS[6 + i]
    local b = redis.call('HMGET', bucket, 'tokens', 'ts')
    local tokens = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate / 1000)
    if tokens < 1 then
      return {'rate_limited', math.ceil((1 - tokens) * 1000 / rate)}
    end
    redis.call('HSET', bucket, 'tokens', tostring(tokens - 1), 'ts', now)
    redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)
  end

  if closed then
    return {'not_open', closed, start_ms, end_ms}
  end
  local qty = tonumber(ARGV[a + 2])
  if qty > per_order then
    return {'per_order', per_order}
  end
  local held = tonumber(redis.call('HGET', users, user) or '0')
  if held + qty > per_user then
    return {'user_limit', per_user, held}
  end
  if remaining < qty then
    return {'sold_out', remaining}
  end

  local status, expires = 'confirmed', cjson.null
  remaining = remaining - qty
  redis.call('HINCRBY', sale, 'remaining', -qty)
  if hold_ms > 0 then
    status = 'reserved'
    expires = now + hold_ms
    redis.call('HINCRBY', sale, 'reserved', qty)
  else
    redis.call('HINCRBY', sale, 'sold', qty)
  end
  redis.call('HINCRBY', users, user, qty)
  local record = cjson.encode({
    v = 1, rev = 1, orderId = oid, namespace = ARGV[1], name = ARGV[2], user = user,
    quantity = qty, status = status, reservedAtMs = now, holdExpiresAtMs = expires,
  })
  redis.call('HSET', orders, oid, record)
  redis.call('ZADD', outbox, now, oid .. ':1')
  if hold_ms > 0 then
    redis.call('ZADD', holds, expires, oid)
  end
  if idem ~= '' then
    redis.call('HSET', idem_hash, idem, oid .. '|' .. fingerprint)
  end
  return {'ok', record}
end

local replies = {}
for i = 1, (#ARGV - 2) / 5 do
  replies[i] = attempt(i)
end
return replies
