-- Remove confirmed orders from the outbox, but only when the confirmed
-- revision is still the current one: a newer revision (confirmed or expired
-- since) must still be published.
-- KEYS[1] outbox zset, KEYS[2] orders hash; ARGV: id1, rev1, id2, rev2, ...
local removed = 0
for i = 1, #ARGV, 2 do
  local rec = redis.call('HGET', KEYS[2], ARGV[i])
  local current = rec and tostring(tonumber(cjson.decode(rec).rev) or 1)
  if not rec or current == ARGV[i + 1] then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
