-- The two ends of a lottery's draw, which the operator computes between
-- them from the seed and the tickets.
-- KEYS[1] sale hash, KEYS[2] queue hash, KEYS[3] draw list
-- ARGV[1] 'begin': returns the number of arrivals in the draw (those who
-- joined before the start, by Redis's clock), -1 before the start, or
-- {'drawn', n} when the draw is made already.
-- ARGV[1] 'finish', ARGV[2] n: the draw list holds n arrivals; admission
-- may start. Returns 1, or 0 when the list does not hold n.
local q = redis.call('HMGET', KEYS[2], 'drawn', 'pre')
if ARGV[1] == 'begin' then
  if q[1] then
    return {'drawn', tonumber(q[1])}
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local start = tonumber(redis.call('HGET', KEYS[1], 'start_ms'))
  if not start or now < start then
    return {'early', -1}
  end
  -- From the start on no join counts as early: this number is final.
  return {'draw', tonumber(q[2]) or 0}
elseif ARGV[1] == 'finish' then
  if q[1] then
    return 1
  end
  if redis.call('LLEN', KEYS[3]) ~= tonumber(ARGV[2]) then
    return 0
  end
  redis.call('HSET', KEYS[2], 'drawn', ARGV[2])
  return 1
end
return redis.error_reply('unknown draw step ' .. tostring(ARGV[1]))
