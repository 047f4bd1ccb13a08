-- Let buyers through a sale's waiting room. Every gateway runs it a few
-- times a second; it is atomic and counts time with Redis's clock, so
-- callers that race agree and nobody is let through twice.
-- Places are numbered 1, 2, ... in line order (a lottery's drawn arrivals
-- first); everyone up to the frontier is admitted, each with a pass valid
-- for pass_ms from the step that admitted them.
-- The rule: admitted passes not yet used nor run out never exceed the
-- units left (so every admitted buyer can buy at least one; units on hold
-- are let through again only if their hold runs out and they come back),
-- and at most adm_rate places a second are admitted. Nothing is admitted before the start, while paused or
-- closed, or before a lottery is drawn.
-- KEYS[1] sale hash, KEYS[2] queue hash, KEYS[3] steps zset, KEYS[4] used bitmap
-- Returns {frontier, joined, drawn (-1 none), expired_upto, expired, used,
--          then pairs of step frontier and step time}
-- or {} for a sale without a line.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg = redis.call('HMGET', KEYS[1], 'adm_mode', 'start_ms', 'end_ms', 'paused', 'closed',
  'remaining', 'adm_rate', 'pass_ms')
local mode = cfg[1]
if not mode or mode == 'open' then
  return {}
end
local q = redis.call('HMGET', KEYS[2], 'joined', 'frontier', 'last_ms', 'carry', 'drawn',
  'expired', 'expired_upto')
local joined = tonumber(q[1]) or 0
local frontier = tonumber(q[2]) or 0
local drawn = tonumber(q[5]) or -1
local expired = tonumber(q[6]) or 0
local upto = tonumber(q[7]) or 0
local pass_ms = tonumber(cfg[8])
local rate = tonumber(cfg[7])

local function used_between(from, to)
  if to < from then
    return 0
  end
  return redis.call('BITCOUNT', KEYS[4], from, to, 'BIT')
end

-- Steps older than a pass: their unused places ran out and go back.
local cutoff = now - pass_ms
local old = redis.call('ZREVRANGEBYSCORE', KEYS[3], cutoff, '-inf', 'LIMIT', 0, 1)
if old[1] then
  local f_old = tonumber(old[1])
  if f_old > upto then
    expired = expired + (f_old - upto) - used_between(upto + 1, f_old)
    upto = f_old
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
end
local live = (frontier - upto) - used_between(upto + 1, frontier)

local open = now >= tonumber(cfg[2]) and now < tonumber(cfg[3]) and cfg[4] ~= '1'
  and cfg[5] ~= '1' and not (mode == 'lottery' and drawn < 0)
local carry = 0
if open then
  local last = tonumber(q[3])
  local tokens = rate
  if last then
    tokens = math.min(rate, (tonumber(q[4]) or 0) + rate * math.max(now - last, 0) / 1000)
  end
  local cap = tonumber(cfg[6]) - live
  local n = math.floor(math.min(tokens, cap, joined - frontier))
  if n > 0 then
    frontier = frontier + n
    live = live + n
    tokens = tokens - n
    redis.call('ZADD', KEYS[3], now, frontier)
  end
  carry = tokens
end
redis.call('HSET', KEYS[2], 'frontier', frontier, 'last_ms', now, 'carry', tostring(carry),
  'expired', expired, 'expired_upto', upto)
local out = {frontier, joined, drawn, upto, expired, used_between(1, frontier)}
local steps = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #steps do
  out[#out + 1] = tonumber(steps[i])
end
return out
