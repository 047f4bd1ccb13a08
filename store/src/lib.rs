//! FlashSale's Redis side: the key layout of a sale, the Lua scripts that
//! are the only authority on stock, stock snapshots and the connections
//! (single node, Cluster, Sentinel) they run on.

pub mod keys;
pub mod queue;
pub mod redisconn;
pub mod scripts;
pub mod sentinel;
pub mod stock;
