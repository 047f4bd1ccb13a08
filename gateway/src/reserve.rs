//! The one Redis round trip of a purchase attempt: the reservation script.

use crate::sales::SaleView;
use flashsale_common::scripts;
use redis::Value;
use redis::aio::ConnectionManager;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved; the record is also in the sale's outbox.
    Accepted {
        record: String,
    },
    /// The idempotency key was seen before: its first order, and whether that
    /// order still waits for a publisher confirm.
    Replay {
        record: String,
        pending: bool,
    },
    NotFound,
    RateLimited {
        retry_after_ms: i64,
    },
    NotOpen {
        reason: String,
        start_ms: i64,
        end_ms: i64,
    },
    IdempotencyMismatch {
        order_id: String,
    },
    PerOrderLimit {
        limit: i64,
    },
    UserLimit {
        limit: i64,
        held: i64,
    },
    SoldOut {
        remaining: i64,
    },
}

pub struct Attempt<'a> {
    pub order_id: &'a str,
    pub user: &'a str,
    pub quantity: u32,
    pub idempotency_key: Option<&'a str>,
    /// Identity of the client for the rate limit.
    pub client: &'a str,
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

pub async fn reserve(
    conn: &mut ConnectionManager,
    view: &SaleView,
    a: &Attempt<'_>,
) -> redis::RedisResult<Reservation> {
    let fingerprint = format!("{}\n{}", a.user, a.quantity);
    let reply: Vec<Value> = scripts::RESERVE
        .key(view.keys.sale())
        .key(view.keys.users())
        .key(view.keys.idem())
        .key(view.keys.orders())
        .key(view.keys.outbox())
        .key(view.keys.rate_limit(a.client))
        .key(view.keys.holds())
        .arg(a.order_id)
        .arg(a.user)
        .arg(a.quantity)
        .arg(a.idempotency_key.unwrap_or(""))
        .arg(fingerprint)
        .arg(&view.sale.namespace)
        .arg(&view.sale.name)
        .invoke_async(conn)
        .await?;
    let tag = text(reply.first());
    Ok(match tag.as_str() {
        "ok" => Reservation::Accepted {
            record: text(reply.get(1)),
        },
        "replay" => Reservation::Replay {
            record: text(reply.get(1)),
            pending: int(reply.get(2)) == 1,
        },
        "not_found" => Reservation::NotFound,
        "rate_limited" => Reservation::RateLimited {
            retry_after_ms: int(reply.get(1)),
        },
        "not_open" => Reservation::NotOpen {
            reason: text(reply.get(1)),
            start_ms: int(reply.get(2)),
            end_ms: int(reply.get(3)),
        },
        "idem_mismatch" => Reservation::IdempotencyMismatch {
            order_id: text(reply.get(1)),
        },
        "per_order" => Reservation::PerOrderLimit {
            limit: int(reply.get(1)),
        },
        "user_limit" => Reservation::UserLimit {
            limit: int(reply.get(1)),
            held: int(reply.get(2)),
        },
        "sold_out" => Reservation::SoldOut {
            remaining: int(reply.get(1)),
        },
        other => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from the reservation script",
                other.to_owned(),
            )));
        }
    })
}
