-- Rebuild a sale that Redis lost from the orders ledger, in steps that each
-- change nothing once the sale exists again (so a second operator, or a
-- retry after a failure half-way, cannot undo a sale that buyers already
-- use). While the sale hash is missing, buyers get 404 and nothing is
-- reserved; the hash is created last, with its counters.
-- KEYS[1] sale hash, KEYS[2] users hash, KEYS[3] orders hash, KEYS[4] holds zset
-- ARGV[1] step:
--   'clear'  drop what is left of the users and holds
--   'users'  ARGV[2..] pairs of user, units held or bought
--   'holds'  ARGV[2..] triples of order id, hold deadline (ms), record
--   'create' ARGV[2] stock, ARGV[3] sold, ARGV[4] expired, ARGV[5] reserved,
--            ARGV[6] events channel, ARGV[7..] pairs of setting, value
-- Returns {'exists'} when the sale is there already, else {'ok'} or, for
-- 'create', {'restored', stock, remaining, committed}.
local sale, users, orders, holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', sale) == 1 then
  return {'exists'}
end
local step = ARGV[1]
if step == 'clear' then
  redis.call('DEL', users, holds)
elseif step == 'users' then
  if #ARGV > 1 then
    redis.call('HSET', users, unpack(ARGV, 2))
  end
elseif step == 'holds' then
  for i = 2, #ARGV, 3 do
    redis.call('HSET', orders, ARGV[i], ARGV[i + 2])
    redis.call('ZADD', holds, ARGV[i + 1], ARGV[i])
  end
elseif step == 'create' then
  local sold, expired, reserved = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local committed = sold + reserved
  -- Every unit sold or held stays counted, even when the spec now asks
  -- for less: stock = remaining + reserved + sold.
  local stock = math.max(tonumber(ARGV[2]), committed)
  local remaining = stock - committed
  local t = redis.call('TIME')
  -- Above any sequence number the lost sale had, so that every gateway
  -- takes the restored sale as a change.
  local seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', sale, 'stock', stock, 'remaining', remaining, 'reserved', reserved,
    'sold', sold, 'expired', expired, 'seq', seq, 'closed', 0, unpack(ARGV, 7))
  publish_stock(ARGV[6], seq, remaining)
  return {'restored', stock, remaining, committed}
else
  return redis.error_reply('unknown restore step ' .. tostring(step))
end
return {'ok'}
