//! Writing a batch of orders to the ledger: one multi-row upsert in one
//! transaction keyed by the order id, so a redelivered or re-published order
//! never creates a second row. A later revision of an order (a hold
//! confirmed or expired) replaces an earlier one; an earlier one never
//! replaces a later one, whatever order the messages arrive in.

use chrono::{DateTime, Utc};
use flashsale_common::order::OrderRecord;
use sqlx::PgPool;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// SQLSTATE `not_null_violation`. The worker writes a value into every
/// column it knows, so this means the ledger has gained a column without a
/// default: every order fails alike until the schema is fixed.
const NOT_NULL_VIOLATION: &str = "23502";

/// Whether PostgreSQL refused the data of particular rows (SQLSTATE class
/// 22, a data exception, or 23, a violated constraint), which would be
/// refused again at every retry. Not a refusal: a lost connection or a
/// timeout, which pass, and a column the worker does not fill, which is the
/// schema's fault, not the orders'.
pub fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            (code.starts_with("22") || code.starts_with("23")) && code != NOT_NULL_VIOLATION
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Upserts the orders; returns how many rows were new or changed.
pub async fn insert_orders(pool: &PgPool, orders: &[OrderRecord]) -> sqlx::Result<u64> {
    if orders.is_empty() {
        return Ok(0);
    }
    // One statement may touch a row once: keep the latest revision of each.
    let mut latest: std::collections::HashMap<uuid::Uuid, &OrderRecord> =
        std::collections::HashMap::new();
    for o in orders {
        latest
            .entry(o.order_id)
            .and_modify(|cur| {
                if o.rev > cur.rev {
                    *cur = o;
                }
            })
            .or_insert(o);
    }
    let orders: Vec<&OrderRecord> = latest.into_values().collect();
    let n = orders.len();
    let mut ids = Vec::with_capacity(n);
    let mut namespaces = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut reserved = Vec::with_capacity(n);
    let mut expires: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut revs = Vec::with_capacity(n);
    for o in &orders {
        revs.push(i32::try_from(o.rev).unwrap_or(i32::MAX));
        ids.push(o.order_id);
        namespaces.push(o.namespace.as_str());
        names.push(o.name.as_str());
        users.push(o.user.as_str());
        quantities.push(i32::try_from(o.quantity).unwrap_or(i32::MAX));
        statuses.push(o.status.as_str());
        reserved.push(at(o.reserved_at_ms));
        expires.push(o.hold_expires_at_ms.map(at));
    }
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "INSERT INTO orders (order_id, sale_namespace, sale_name, user_id, quantity, status,
                             reserved_at, hold_expires_at, rev)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
                              $6::text[], $7::timestamptz[], $8::timestamptz[], $9::int4[])
         ON CONFLICT (order_id) DO UPDATE
            SET status = EXCLUDED.status, rev = EXCLUDED.rev, updated_at = now()
          WHERE orders.rev < EXCLUDED.rev",
    )
    .bind(&ids)
    .bind(&namespaces)
    .bind(&names)
    .bind(&users)
    .bind(&quantities)
    .bind(&statuses)
    .bind(&reserved)
    .bind(&expires)
    .bind(&revs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}
