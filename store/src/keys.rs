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
//! | `fs:{ns/name}:queue` | hash | the waiting room: `joined`, `pre` (joined before the start), `frontier`, `drawn`, `expired`, `expired_upto`, `last_ms`, `carry` |
//! | `fs:{ns/name}:line` | list | ticket ids in the order the joins reached Redis |
//! | `fs:{ns/name}:queue_users` | hash | signed-in buyer → `<arrival>:<joined ms>` (one place each) |
//! | `fs:{ns/name}:steps` | sorted set | the frontier after each admission step, scored by its time (ms) |
//! | `fs:{ns/name}:used` | bitmap | bit `p` set once the pass of place `p` bought |
//! | `fs:{ns/name}:draw` | list | a lottery's arrivals in drawn order |
//! | `fs:{ns/name}:pow` | sorted set | solved challenges already spent, scored by their expiry (ms) |

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
    pub fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }
    pub fn line(&self) -> String {
        format!("{}:line", self.prefix)
    }
    pub fn queue_users(&self) -> String {
        format!("{}:queue_users", self.prefix)
    }
    pub fn steps(&self) -> String {
        format!("{}:steps", self.prefix)
    }
    pub fn used(&self) -> String {
        format!("{}:used", self.prefix)
    }
    pub fn draw(&self) -> String {
        format!("{}:draw", self.prefix)
    }
    pub fn pow(&self) -> String {
        format!("{}:pow", self.prefix)
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
            self.queue(),
            self.line(),
            self.queue_users(),
            self.steps(),
            self.used(),
            self.draw(),
            self.pow(),
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
