//! Payment holds: confirming and expiring an unpaid reservation, both in one
//! Lua script so that a confirm racing an expiry has exactly one winner.

use crate::sales::SaleView;
use flashsale_store::scripts;
use redis::aio::ConnectionLike;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Confirm,
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Confirmed,
    AlreadyConfirmed,
    Expired,
    AlreadyExpired,
    NotDue,
    UnknownOrder,
    SaleGone,
}

/// Settles one order; returns the outcome and the order's current record.
pub async fn settle<C: ConnectionLike + Send>(
    conn: &mut C,
    view: &SaleView,
    order_id: &str,
    how: Settle,
) -> redis::RedisResult<(Settled, Option<String>)> {
    let reply: Vec<String> = scripts::SETTLE
        .key(view.keys.sale())
        .key(view.keys.users())
        .key(view.keys.orders())
        .key(view.keys.outbox())
        .key(view.keys.holds())
        .arg(order_id)
        .arg(match how {
            Settle::Confirm => "confirm",
            Settle::Expire => "expire",
        })
        .arg(view.keys.events())
        .invoke_async(conn)
        .await?;
    let outcome = match reply.first().map(String::as_str) {
        Some("confirmed") => Settled::Confirmed,
        Some("already_confirmed") => Settled::AlreadyConfirmed,
        Some("expired") => Settled::Expired,
        Some("already_expired") => Settled::AlreadyExpired,
        Some("not_due") => Settled::NotDue,
        Some("sale_gone") => Settled::SaleGone,
        _ => Settled::UnknownOrder,
    };
    Ok((outcome, reply.get(1).cloned()))
}
