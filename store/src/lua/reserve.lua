-- Reserve units of one sale for one or more purchase attempts, in one atomic
-- step. The attempts are decided one after the other, each exactly as if it
-- had come alone: a gateway gathers the attempts that arrive while its
-- previous calls run, so a herd costs Redis one call per batch, not one per
-- buyer.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] idempotency hash,
-- KEYS[4] orders hash, KEYS[5] outbox zset of '<order id>:<rev>' members,
-- KEYS[6] holds zset (order id scored by hold deadline), KEYS[7] the
-- waiting room's used-passes bitmap, KEYS[7 + i] rate-limit bucket of
-- attempt i
-- ARGV[1] namespace, ARGV[2] name; attempt i (from 1) is ARGV[6i - 3 .. 6i + 2]:
-- fresh order id, user, quantity, idempotency key ('' for none), request
-- fingerprint, the place of the buyer's admission pass ('' for none; a
-- sale with a waiting room refuses attempts without one, and marks the
-- pass used with the order).
-- Returns one reply per attempt. Nothing is written for an attempt unless
-- every check passes (the rate-limit bucket only spends a token for a
-- request it lets through).
local sale, users, idem_hash, orders, outbox, holds, used =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local n = (#ARGV - 2) / 6
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- The same instant as a decimal string, made once: every number handed to
-- redis.call or written into JSON would otherwise be formatted per attempt.
local now_s = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local cfg = redis.call('HMGET', sale, 'start_ms', 'end_ms', 'paused', 'closed',
  'per_user', 'per_order', 'hold_ms', 'rl_rate', 'rl_burst', 'remaining', 'adm_mode')
local exists = cfg[1] and true or false
local start_ms, end_ms = tonumber(cfg[1]), tonumber(cfg[2])
local per_user, per_order = tonumber(cfg[5]), tonumber(cfg[6])
local hold_ms = tonumber(cfg[7]) or 0
local rate = tonumber(cfg[8]) or 0
local queued = cfg[11] == 'fifo' or cfg[11] == 'lottery'
local burst = math.max(tonumber(cfg[9]) or 1, 1)
-- The script runs alone on the shard: this copy stays exact.
local remaining = tonumber(cfg[10])
-- The phase, in the order Phase::at (sale.rs) defines it; a table test
-- holds the refusals to it.
local closed
if exists then
  if cfg[4] == '1' then
    closed = 'closed'
  elseif now >= end_ms then
    closed = 'ended'
  elseif cfg[3] == '1' then
    closed = 'paused'
  elseif now < start_ms then
    closed = 'not_started'
  end
end
local status, expires, expires_s = 'confirmed', nil, nil
if hold_ms > 0 then
  status = 'reserved'
  expires = now + hold_ms
  expires_s = string.format('%d', expires)
end

-- Calls fn(from, to) over 1..count in slices that stay far below Lua's
-- limit on unpacked values.
local function in_slices(count, fn)
  for from = 1, count, 512 do
    fn(from, math.min(from + 511, count))
  end
end

-- What this call writes, gathered and written once at the end, and read
-- back by the later attempts of the same call.
local held = {}
if exists and not closed then
  local names = {}
  for i = 1, n do
    names[i] = ARGV[6 * i - 2]
  end
  in_slices(n, function(from, to)
    local counts = redis.call('HMGET', users, unpack(names, from, to))
    for i = from, to do
      held[names[i]] = tonumber(counts[i - from + 1] or '0')
    end
  end)
end
local new_orders, new_outbox, new_holds, new_idem = {}, {}, {}, {}
local changed_users = {}
local recorded = {}
local idem_seen = {}
local taken = 0

local function attempt(i)
  local a = 6 * i - 3
  local oid, user, qs, idem, fingerprint =
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local place = ARGV[a + 5]
  if idem ~= '' then
    local prev = idem_seen[idem] or redis.call('HGET', idem_hash, idem)
    if prev then
      local sep = string.find(prev, '|', 1, true)
      local first = string.sub(prev, 1, sep - 1)
      if string.sub(prev, sep + 1) ~= fingerprint then
        return {'idem_mismatch', first}
      end
      if recorded[first] then
        return {'replay', recorded[first], 1}
      end
      local rec = redis.call('HGET', orders, first)
      local rev = rec and cjson.decode(rec).rev or 1
      local pending = 0
      if redis.call('ZSCORE', outbox, outbox_member(first, rev)) then
        pending = 1
      end
      return {'replay', rec, pending}
    end
  end
  if not exists then
    return {'not_found'}
  end
  if queued and place == '' then
    return {'no_pass'}
  end

  if rate > 0 then
    local bucket = KEYS[7 + i]
    local b = redis.call('HMGET', bucket, 'tokens', 'ts')
    local tokens = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate / 1000)
    if tokens < 1 then
      return {'rate_limited', math.ceil((1 - tokens) * 1000 / rate)}
    end
    redis.call('HSET', bucket, 'tokens', tostring(tokens - 1), 'ts', now_s)
    redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)
  end

  if closed then
    return {'not_open', closed, start_ms, end_ms}
  end
  local qty = tonumber(qs)
  if qty > per_order then
    return {'per_order', per_order}
  end
  local h = held[user]
  if h + qty > per_user then
    return {'user_limit', per_user, h}
  end
  if remaining < qty then
    return {'sold_out', remaining}
  end

  remaining = remaining - qty
  taken = taken + qty
  held[user] = h + qty
  changed_users[user] = true
  local record = order_record({v = 1, rev = 1, orderId = oid, namespace = ARGV[1],
    name = ARGV[2], user = user, quantity = qty, status = status, reservedAtMs = now,
    holdExpiresAtMs = expires})
  recorded[oid] = record
  new_orders[#new_orders + 1] = oid
  new_orders[#new_orders + 1] = record
  new_outbox[#new_outbox + 1] = now_s
  new_outbox[#new_outbox + 1] = outbox_member(oid, 1)
  if hold_ms > 0 then
    new_holds[#new_holds + 1] = expires_s
    new_holds[#new_holds + 1] = oid
  end
  if place ~= '' then
    redis.call('SETBIT', used, place, 1)
  end
  if idem ~= '' then
    local value = oid .. '|' .. fingerprint
    idem_seen[idem] = value
    new_idem[#new_idem + 1] = idem
    new_idem[#new_idem + 1] = value
  end
  return {'ok', record}
end

local replies = {}
for i = 1, n do
  replies[i] = attempt(i)
end

-- One command per key for the whole call.
local function write(cmd, key, list)
  in_slices(#list, function(from, to)
    redis.call(cmd, key, unpack(list, from, to))
  end)
end
if taken > 0 then
  redis.call('HINCRBY', sale, 'remaining', -taken)
  redis.call('HINCRBY', sale, hold_ms > 0 and 'reserved' or 'sold', taken)
  local counts = {}
  for user in pairs(changed_users) do
    counts[#counts + 1] = user
    counts[#counts + 1] = string.format('%d', held[user])
  end
  write('HSET', users, counts)
  write('HSET', orders, new_orders)
  write('ZADD', outbox, new_outbox)
  write('ZADD', holds, new_holds)
  write('HSET', idem_hash, new_idem)
end
return replies
