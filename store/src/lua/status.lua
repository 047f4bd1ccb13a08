-- Read the counters and configuration of a sale with the server's clock.
-- KEYS[1] sale hash. Returns {} when the sale does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'stock', 'remaining', 'reserved', 'sold',
  'expired', 'start_ms', 'end_ms', 'paused', 'closed', 'seq', 'per_user', 'per_order', 'hold_ms',
  'q_open_ms', 'adm_rate', 'pass_ms', 'pow_bits')
local out = {}
for i = 1, #v do
  out[i] = tonumber(v[i]) or 0
end
table.insert(out, now)
-- The waiting room's mode, as its index in {'open', 'fifo', 'lottery'}.
local modes = {open = 0, fifo = 1, lottery = 2}
table.insert(out, modes[redis.call('HGET', KEYS[1], 'adm_mode') or 'open'] or 0)
return out
