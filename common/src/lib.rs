//! Contracts shared by every FlashSale component: the `FlashSale` resource
//! types, the Redis key layout and Lua scripts, the order message, the SQL
//! schema, queue topology, configuration and telemetry.

pub mod amqp;
pub mod backend_keys;
pub mod config;
pub mod db;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod order;
pub mod redisconn;
pub mod sale;
pub mod saleref;
pub mod scripts;
pub mod sentinel;
pub mod stock;
pub mod telemetry;
pub mod tls;

pub use saleref::SaleRef;
