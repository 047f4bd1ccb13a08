-- The orders ledger: one row per accepted order, keyed by the order id the
-- gateway minted, so a redelivered message can never create a second row.
CREATE TABLE IF NOT EXISTS orders (
    order_id        uuid        PRIMARY KEY,
    sale_namespace  text        NOT NULL,
    sale_name       text        NOT NULL,
    user_id         text        NOT NULL,
    quantity        integer     NOT NULL CHECK (quantity > 0),
    status          text        NOT NULL CHECK (status IN ('reserved', 'confirmed', 'expired')),
    reserved_at     timestamptz NOT NULL,
    hold_expires_at timestamptz,
    persisted_at    timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS orders_sale_status ON orders (sale_namespace, sale_name, status);
CREATE INDEX IF NOT EXISTS orders_sale_user ON orders (sale_namespace, sale_name, user_id);
