-- One page of removing a sale's rate-limit buckets (fs:{ns/name}:rl:<client>).
-- KEYS[1]: the sale's hash, which sends the call to the server (or cluster
-- node) that holds every key of the sale. ARGV[1]: the SCAN cursor;
-- ARGV[2]: the buckets' pattern. Deletes what one SCAN step finds and
-- returns the next cursor ("0" when done).
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)
if #page[2] > 0 then
  redis.call('DEL', unpack(page[2]))
end
return page[1]
