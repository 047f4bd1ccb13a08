-- Settle one hold: confirm it (payment done) or expire it (deadline passed).
-- Both run here, atomically, so a confirm racing an expiry has exactly one
-- winner, and the units go back to stock at most once.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] orders hash,
-- KEYS[4] outbox zset of '<order id>:<rev>' members, KEYS[5] holds zset
-- ARGV[1] order id, ARGV[2] 'confirm' | 'expire', ARGV[3] events channel
-- Returns {outcome, record}: outcome is confirmed, already_confirmed,
-- expired, already_expired, not_due, unknown_order or sale_gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'sale_gone'}
end
local rec = redis.call('HGET', KEYS[3], ARGV[1])
if not rec then
  return {'unknown_order'}
end
local o = cjson.decode(rec)
if o.status == 'confirmed' then
  return {'already_confirmed', rec}
end
if o.status == 'expired' then
  return {'already_expired', rec}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = o.holdExpiresAtMs ~= cjson.null and o.holdExpiresAtMs ~= nil and now >= o.holdExpiresAtMs
local qty = tonumber(o.quantity)
local outcome
if ARGV[2] == 'confirm' and not due then
  o.status = 'confirmed'
  redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
  redis.call('HINCRBY', KEYS[1], 'sold', qty)
  outcome = 'confirmed'
elseif due then
  -- The deadline decides: a confirm that comes too late expires the hold.
  o.status = 'expired'
  redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
  redis.call('HINCRBY', KEYS[1], 'expired', qty)
  redis.call('HINCRBY', KEYS[1], 'remaining', qty)
  local left = redis.call('HINCRBY', KEYS[2], o.user, -qty)
  if left <= 0 then
    redis.call('HDEL', KEYS[2], o.user)
  end
  outcome = 'expired'
else
  return {'not_due', rec}
end
local old_rev = tonumber(o.rev) or 1
o.rev = old_rev + 1
rec = order_record(o)
redis.call('HSET', KEYS[3], ARGV[1], rec)
redis.call('ZREM', KEYS[5], ARGV[1])
-- The changed record goes out through the outbox like a new order; it
-- carries the whole order, so an older revision need not be sent any more.
redis.call('ZREM', KEYS[4], outbox_member(ARGV[1], old_rev))
redis.call('ZADD', KEYS[4], now, outbox_member(ARGV[1], o.rev))
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
publish_stock(ARGV[3], seq, redis.call('HGET', KEYS[1], 'remaining'))
return {outcome, rec}
