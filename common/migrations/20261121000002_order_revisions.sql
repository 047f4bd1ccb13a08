-- Holds change an order's status after it was stored (confirmed or
-- expired). Each change carries a higher revision; the ledger keeps the
-- highest one, so messages may arrive in any order and any number of times.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS rev integer NOT NULL DEFAULT 1;
