-- Read the counters and configuration of a sale with the server's clock.
-- KEYS[1] sale hash. Returns {} when the sale does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'stock', 'remaining', 'reserved', 'sold',
  'expired', 'start_ms', 'end_ms', 'paused', 'closed', 'seq', 'per_user', 'per_order', 'hold_ms')
local out = {}
for i = 1, #v do
  out[i] = tonumber(v[i]) or 0
end
table.insert(out, now)
return out
