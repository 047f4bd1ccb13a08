-- The formats the scripts write, each defined once. Every script is loaded
-- behind this file (scripts.rs); Rust reads them back with OrderRecord and
-- outbox_member (common/src/order.rs) and StockEvent (stock.rs), and
-- store/tests/formats.rs runs the scripts and parses what they wrote.

-- An order record, the JSON of OrderRecord: v, rev, orderId, namespace,
-- name, user, quantity, status, reservedAtMs and holdExpiresAtMs (left out
-- when nil). Times are integers below 2^53, which cjson writes exactly.
local function order_record(o)
  return cjson.encode(o)
end

-- An outbox member: '<order id>:<rev>'.
local function outbox_member(order_id, rev)
  return order_id .. ':' .. rev
end

local function outbox_member_order(member)
  return string.match(member, '^(.*):%d+$') or member
end

-- A stock event on the sale's channel: '<seq> <remaining>'.
local function publish_stock(channel, seq, remaining)
  redis.call('PUBLISH', channel, seq .. ' ' .. remaining)
end

