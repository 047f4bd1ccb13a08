//! What every FlashSale component shares without Kubernetes or Redis: the
//! order message, the SQL schema, queue topology, TLS, configuration,
//! telemetry and the operations endpoints. The resource types live in
//! `flashsale-api`, the Redis side in `flashsale-store`.

pub mod amqp;
pub mod backend_keys;
pub mod config;
pub mod db;
pub mod metrics;
pub mod ops;
pub mod order;
pub mod saleref;
pub mod sentinel_url;
pub mod telemetry;
pub mod tls;

pub use saleref::SaleRef;

/// This machine's clock, Unix milliseconds (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}
