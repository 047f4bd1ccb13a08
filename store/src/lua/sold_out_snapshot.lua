-- Snapshot taken when a gateway sees a sale sold out: the idempotency keys
-- that were accepted, so replays of them still get their first answer while
-- every other attempt is refused from memory.
-- KEYS[1] sale hash, KEYS[2] idempotency hash; ARGV[1] most keys to return.
-- Returns {remaining, seq, complete (0/1), keys}; remaining -1: no sale.
local v = redis.call('HMGET', KEYS[1], 'remaining', 'seq')
if not v[1] then
  return {-1, 0, 0, {}}
end
local remaining, seq = tonumber(v[1]), tonumber(v[2])
if remaining > 0 then
  return {remaining, seq, 0, {}}
end
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[1]) then
  return {0, seq, 0, {}}
end
return {0, seq, 1, redis.call('HKEYS', KEYS[2])}
