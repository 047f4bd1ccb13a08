-- Lease outbox entries that stayed unconfirmed for ARGV[1] ms so that one
-- publisher re-publishes them; a lease lasts ARGV[1] ms.
-- KEYS[1] outbox zset of '<order id>:<rev>' members, KEYS[2] orders hash;
-- ARGV[2] most entries.
-- Returns the order records to publish again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(members) do
  local id = outbox_member_order(member)
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], now, member)
    table.insert(out, rec)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return out
