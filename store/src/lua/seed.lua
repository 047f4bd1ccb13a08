-- Create a sale, or update its configuration and restock it.
-- KEYS[1] sale hash
-- ARGV[1] stock, ARGV[2] events channel, ARGV[3] mode: 'create' when the
-- sale may be created (its owner never seeded it and no order of it is
-- known), 'update' when it must already exist; ARGV[4..] pairs of setting
-- and value (SeedConfig::settings names them)
-- Returns {outcome, stock, remaining, committed}. Idempotent: the same
-- arguments twice change nothing. Raising the stock adds the difference to
-- what remains; lowering it below what is reserved + sold is refused. A sale
-- missing in 'update' mode was lost: nothing is written ('missing'), since
-- creating it again would sell its sold units a second time.
local names, args, cfg = {}, {}, {}
for i = 4, #ARGV, 2 do
  names[#names + 1] = ARGV[i]
  args[#args + 1] = ARGV[i + 1]
  cfg[#cfg + 1] = ARGV[i]
  cfg[#cfg + 1] = ARGV[i + 1]
end
local stock = tonumber(ARGV[1])
local sale = KEYS[1]
if redis.call('EXISTS', sale) == 0 then
  if ARGV[3] ~= 'create' then
    return {'missing', 0, 0, 0}
  end
  redis.call('HSET', sale, 'stock', stock, 'remaining', stock, 'reserved', 0,
    'sold', 0, 'expired', 0, 'seq', 1, 'closed', 0, unpack(cfg))
  publish_stock(ARGV[2], 1, stock)
  return {'created', stock, stock, 0}
end
local cur = redis.call('HMGET', sale, 'stock', 'remaining', 'reserved', 'sold')
local cur_stock, remaining = tonumber(cur[1]), tonumber(cur[2])
local committed = tonumber(cur[3]) + tonumber(cur[4])
if stock < committed then
  return {'below_committed', cur_stock, remaining, committed}
end
local changed = false
local old = redis.call('HMGET', sale, unpack(names))
for i = 1, #names do
  if old[i] ~= args[i] then
    changed = true
  end
end
local delta = stock - cur_stock
if delta ~= 0 then
  remaining = redis.call('HINCRBY', sale, 'remaining', delta)
  redis.call('HSET', sale, 'stock', stock)
  changed = true
end
if not changed then
  return {'unchanged', stock, remaining, committed}
end
redis.call('HSET', sale, unpack(cfg))
local seq = redis.call('HINCRBY', sale, 'seq', 1)
publish_stock(ARGV[2], seq, remaining)
if delta > 0 then
  return {'restocked', stock, remaining, committed}
end
return {'updated', stock, remaining, committed}
