//! The orders ledger in PostgreSQL: schema migrations and the queries every
//! component shares.

use crate::SaleRef;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database `opts` names when it does not exist yet, by way of
/// the server's `postgres` database. Needs the CREATEDB privilege only then.
async fn ensure_database(opts: PgConnectOptions) -> anyhow::Result<()> {
    let Some(db) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if opts.clone().connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = opts.database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = db.replace('"', "\"\"");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&mut admin)
            .await
        {
            // Another process may have created it in the meantime.
            let again: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&db)
                    .fetch_one(&mut admin)
                    .await?;
            if !again {
                return Err(e.into());
            }
        }
    }
    admin.close().await?;
    Ok(())
}

pub async fn connect(
    url: &str,
    max_connections: u32,
    tls: &crate::tls::Tls,
) -> anyhow::Result<PgPool> {
    connect_at(options(url, tls)?, max_connections).await
}

async fn connect_at(opts: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// Connection options from `url`. TLS follows the URL's `sslmode`
/// (`prefer` when absent, as with libpq); with `verify-ca` or `verify-full`
/// the server's certificate is checked against the URL's `sslrootcert`, else
/// the CA certificates of `tls` (`--tls-ca-file`), else the system's roots.
/// Its client certificate is presented unless the URL names its own
/// `sslcert`.
pub fn options(url: &str, tls: &crate::tls::Tls) -> anyhow::Result<PgConnectOptions> {
    crate::tls::install_crypto_provider();
    let mut opts = PgConnectOptions::from_str(url)?;
    if let Some(ca) = &tls.ca
        && !url.contains("sslrootcert=")
    {
        opts = opts.ssl_root_cert_from_pem(ca.pem.clone());
    }
    if let Some(id) = tls.identity_for(crate::tls::Store::Database)
        && !url.contains("sslcert=")
    {
        opts = opts
            .ssl_client_cert_from_pem(&id.cert_pem)
            .ssl_client_key_from_pem(&id.key_pem);
    }
    Ok(opts)
}

/// Ensures the database exists, connects and applies pending migrations.
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    tls: &crate::tls::Tls,
) -> anyhow::Result<PgPool> {
    let opts = options(url, tls)?;
    ensure_database(opts.clone()).await?;
    let pool = connect_at(opts, max_connections).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Per-status counts of one sale's orders, in units.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LedgerCounts {
    pub orders: i64,
    pub units: i64,
    pub reserved_units: i64,
    pub confirmed_units: i64,
    pub expired_units: i64,
    /// How long ago, by PostgreSQL's clock, the sale's orders last changed
    /// (a row stored or its status moved on), in milliseconds; None when
    /// the sale has no orders.
    pub idle_ms: Option<i64>,
    /// When the latest of the sale's orders was reserved (Redis's clock,
    /// Unix milliseconds); None when the sale has no orders.
    pub last_reserved_ms: Option<i64>,
}

pub async fn ledger_counts(pool: &PgPool, sale: &SaleRef) -> sqlx::Result<LedgerCounts> {
    type Row = (i64, i64, i64, i64, i64, Option<i64>, Option<i64>);
    let row: Row = sqlx::query_as(
        "SELECT count(*), coalesce(sum(quantity), 0)::bigint,
                coalesce(sum(quantity) FILTER (WHERE status = 'reserved'), 0)::bigint,
                coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)::bigint,
                coalesce(sum(quantity) FILTER (WHERE status = 'expired'), 0)::bigint,
                (extract(epoch FROM now() - max(greatest(persisted_at, updated_at))) * 1000)::bigint,
                (extract(epoch FROM max(reserved_at)) * 1000)::bigint
           FROM orders WHERE sale_namespace = $1 AND sale_name = $2",
    )
    .bind(&sale.namespace)
    .bind(&sale.name)
    .fetch_one(pool)
    .await?;
    Ok(LedgerCounts {
        orders: row.0,
        units: row.1,
        reserved_units: row.2,
        confirmed_units: row.3,
        expired_units: row.4,
        idle_ms: row.5,
        last_reserved_ms: row.6,
    })
}

/// What a sale's state in Redis is rebuilt from when Redis lost it: the
/// orders PostgreSQL holds for the sale, counted from `since_ms` on (the
/// FlashSale's creation, so that orders of an earlier sale of the same name
/// are left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LedgerState {
    pub confirmed_units: i64,
    pub expired_units: i64,
    /// Units each buyer holds or bought (expired orders left out): what the
    /// per-user limit counts.
    pub users: Vec<(String, i64)>,
    /// Orders still on hold, as the gateways keep them: they can be paid
    /// until their deadline and expire after it.
    pub holds: Vec<crate::order::OrderRecord>,
}

impl LedgerState {
    pub fn reserved_units(&self) -> i64 {
        self.holds.iter().map(|h| i64::from(h.quantity)).sum()
    }
}

pub async fn ledger_state(
    pool: &PgPool,
    sale: &SaleRef,
    since_ms: i64,
) -> sqlx::Result<LedgerState> {
    let since = since_ms as f64 / 1000.0;
    // Both reads see the same snapshot of the ledger.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let per_user: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT user_id,
                coalesce(sum(quantity) FILTER (WHERE status <> 'expired'), 0)::bigint,
                coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)::bigint,
                coalesce(sum(quantity) FILTER (WHERE status = 'expired'), 0)::bigint
           FROM orders
          WHERE sale_namespace = $1 AND sale_name = $2 AND reserved_at >= to_timestamp($3)
          GROUP BY user_id",
    )
    .bind(&sale.namespace)
    .bind(&sale.name)
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    type HoldRow = (uuid::Uuid, String, i32, i32, i64, Option<i64>);
    let rows: Vec<HoldRow> = sqlx::query_as(
        "SELECT order_id, user_id, quantity, rev,
                (extract(epoch FROM reserved_at) * 1000)::bigint,
                (extract(epoch FROM hold_expires_at) * 1000)::bigint
           FROM orders
          WHERE sale_namespace = $1 AND sale_name = $2 AND reserved_at >= to_timestamp($3)
            AND status = 'reserved'
          ORDER BY order_id",
    )
    .bind(&sale.namespace)
    .bind(&sale.name)
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let confirmed_units = per_user.iter().map(|u| u.2).sum();
    let expired_units = per_user.iter().map(|u| u.3).sum();
    let users = per_user
        .into_iter()
        .filter(|u| u.1 > 0)
        .map(|(user, units, _, _)| (user, units))
        .collect();
    let holds = rows
        .into_iter()
        .map(
            |(order_id, user, quantity, rev, reserved_at_ms, hold_expires_at_ms)| {
                crate::order::OrderRecord {
                    v: crate::order::ORDER_MESSAGE_VERSION,
                    rev: u32::try_from(rev).unwrap_or(1),
                    order_id,
                    namespace: sale.namespace.clone(),
                    name: sale.name.clone(),
                    user,
                    quantity: u32::try_from(quantity).unwrap_or(0),
                    status: crate::order::OrderStatus::Reserved,
                    reserved_at_ms,
                    hold_expires_at_ms,
                }
            },
        )
        .collect();
    Ok(LedgerState {
        confirmed_units,
        expired_units,
        users,
        holds,
    })
}
