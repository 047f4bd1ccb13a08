//! The Redis key layout of one sale. Every key carries the hash tag
//! `{namespace/name}`, so one sale lives in one Redis Cluster hash slot and
//! every Lua script touches a single shard, while many sales spread over a
//! cluster.
//!
//! | key | type | contents |
//! | --- | --- | --- |
//! | `fs:{ns/name}:sale` | hash | configuration and the counters `stock`, `remaining`, `reserved`, `sold`, `expired`, `seq` |
//! | `fs:{ns/name}:users` | hash | user id → units the user holds (reserved + sold) |
//! | `fs:{ns/name}:idem` | hash | idempotency key → `orderId|fingerprint` |
//! | `fs:{ns/name}:orders` | hash | order id → order record (JSON, the message the worker consumes) |
//! | `fs:{ns/name}:outbox` | sorted set | `<order id>:<rev>` of each order revision not yet confirmed by RabbitMQ, scored by lease time (ms) |
//! | `fs:{ns/name}:holds` | sorted set | unpaid order ids, scored by hold deadline (ms) |
//! | `fs:{ns/name}:rl:<client>` | hash | token bucket of one client |
//! | `fs:{ns/name}:events` | pub/sub channel | stock changes, as `seq remaining` |

use flashsale_common::SaleRef;

#[derive(Debug, Clone)]
pub struct SaleKeys {
    prefix: String,
}

/// The field of an idempotency key in the sale's idempotency hash: the
/// buyer's key, scoped to the buyer. Another buyer sending the same key
/// gets an order of their own and never learns of the first one.
pub fn scoped_idempotency_key(user: &str, key: &str) -> String {
    // A buyer's name holds no control character, a key only visible ASCII:
    // the newline cannot be part of either.
    format!("{key}\n{user}")
}

impl SaleKeys {
    pub fn new(sale: &SaleRef) -> Self {
        Self {
            prefix: format!("fs:{{{}/{}}}", sale.namespace, sale.name),
        }
    }
    pub fn sale(&self) -> String {
        format!("{}:sale", self.prefix)
    }
    pub fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }
    pub fn idem(&self) -> String {
        format!("{}:idem", self.prefix)
    }
    pub fn orders(&self) -> String {
        format!("{}:orders", self.prefix)
    }
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.prefix)
    }
    pub fn holds(&self) -> String {
        format!("{}:holds", self.prefix)
    }
    pub fn rate_limit(&self, client: &str) -> String {
        format!("{}:rl:{client}", self.prefix)
    }
    /// Pattern matching every rate-limit bucket of the sale (for clean-up).
    pub fn rate_limit_pattern(&self) -> String {
        format!("{}:rl:*", self.prefix)
    }
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// Every fixed key of the sale (rate-limit buckets expire by themselves).
    pub fn all(&self) -> Vec<String> {
        vec![
            self.sale(),
            self.users(),
            self.idem(),
            self.orders(),
            self.outbox(),
            self.holds(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = SaleKeys::new(&SaleRef::new("shop", "drop-1").expect("valid"));
        for k in keys.all().into_iter().chain([keys.rate_limit("u1")]) {
            let tag = &k[k.find('{').expect("open") + 1..k.find('}').expect("close")];
            assert_eq!(tag, "shop/drop-1", "{k}");
        }
    }
}
