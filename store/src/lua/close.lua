-- Close (ARGV[1] = 1) or reopen (0) a sale regardless of its window.
-- KEYS[1] sale hash, ARGV[2] events channel. Returns 0 when no such sale.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'closed') == ARGV[1] then
  return 1
end
redis.call('HSET', KEYS[1], 'closed', ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
publish_stock(ARGV[2], seq, redis.call('HGET', KEYS[1], 'remaining'))
return 1
