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
