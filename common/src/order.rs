//! The order record: written by the reservation script into the sale's
//! outbox, published as is to RabbitMQ, and stored by the worker.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The message version this build writes and reads.
pub const ORDER_MESSAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Units held, waiting for payment until `holdExpiresAt`.
    Reserved,
    /// Paid, or no payment step: the units are sold.
    Confirmed,
    /// The hold ran out; the units went back to stock.
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Reserved => "reserved",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderRecord {
    pub v: u32,
    /// Revision: 1 when reserved, bumped by confirm or expiry. The ledger
    /// keeps the highest revision it has seen.
    #[serde(default = "first_rev")]
    pub rev: u32,
    pub order_id: Uuid,
    pub namespace: String,
    pub name: String,
    pub user: String,
    pub quantity: u32,
    pub status: OrderStatus,
    /// Redis server time of the reservation, Unix milliseconds.
    pub reserved_at_ms: i64,
    /// When an unpaid hold expires, Unix milliseconds; none without a hold.
    #[serde(default)]
    pub hold_expires_at_ms: Option<i64>,
}

fn first_rev() -> u32 {
    1
}

/// Times an order may carry, Unix milliseconds: the years 1 to 9999, which
/// both the worker and PostgreSQL's `timestamptz` represent exactly.
pub const LEDGER_TIME_MS: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// Why a message can never be stored; it goes to the dead-letter queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoisonReason {
    #[error("not an order record: {0}")]
    Malformed(String),
    #[error("unsupported message version {0} (this worker reads version {ORDER_MESSAGE_VERSION})")]
    Version(u32),
    #[error("invalid order: {0}")]
    Invalid(&'static str),
}

impl OrderRecord {
    /// Parses and checks a message body from the orders queue.
    pub fn from_message(body: &[u8]) -> Result<Self, PoisonReason> {
        // One parse on the path every order takes; the reason is worked out
        // only for a body that does not parse.
        let rec: OrderRecord = serde_json::from_slice(body).map_err(|e| {
            #[derive(Deserialize)]
            struct Version {
                v: Option<u32>,
            }
            match serde_json::from_slice::<Version>(body) {
                Ok(Version { v: Some(v) }) if v != ORDER_MESSAGE_VERSION => {
                    PoisonReason::Version(v)
                }
                Ok(Version { v: None }) => PoisonReason::Malformed("missing field `v`".into()),
                _ => PoisonReason::Malformed(e.to_string()),
            }
        })?;
        if rec.v != ORDER_MESSAGE_VERSION {
            return Err(PoisonReason::Version(rec.v));
        }
        if rec.quantity == 0 {
            return Err(PoisonReason::Invalid("quantity is 0"));
        }
        if rec.user.is_empty() {
            return Err(PoisonReason::Invalid("user is empty"));
        }
        // What the ledger's columns cannot hold would fail the whole
        // batch's insert, again at every redelivery.
        if rec.user.contains('\0') {
            return Err(PoisonReason::Invalid(
                "user contains a NUL character, which PostgreSQL text cannot hold",
            ));
        }
        if i32::try_from(rec.quantity).is_err() {
            return Err(PoisonReason::Invalid("quantity is above 2147483647"));
        }
        if i32::try_from(rec.rev).is_err() {
            return Err(PoisonReason::Invalid("rev is above 2147483647"));
        }
        if !LEDGER_TIME_MS.contains(&rec.reserved_at_ms) {
            return Err(PoisonReason::Invalid(
                "reservedAtMs is outside the years 1 to 9999",
            ));
        }
        if rec
            .hold_expires_at_ms
            .is_some_and(|ms| !LEDGER_TIME_MS.contains(&ms))
        {
            return Err(PoisonReason::Invalid(
                "holdExpiresAtMs is outside the years 1 to 9999",
            ));
        }
        Ok(rec)
    }
}

/// The outbox member of one revision of an order, `<order id>:<rev>`. An
/// ack removes exactly the revision RabbitMQ confirmed, with a plain `ZREM`;
/// a newer revision is another member and stays until it is confirmed too.
pub fn outbox_member(order_id: &str, rev: u32) -> String {
    format!("{order_id}:{rev}")
}

pub fn millis_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_lua_script_writes() {
        // cjson escapes '/' and orders keys arbitrarily.
        let body = br#"{"status":"confirmed","holdExpiresAtMs":null,"user":"a\/b","v":1,
            "orderId":"5f0c4b9e-3c1a-4a55-9d2a-0d6c1f2b7e11","namespace":"shop","name":"drop",
            "quantity":2,"reservedAtMs":1763700000000}"#;
        let rec = OrderRecord::from_message(body).expect("valid");
        assert_eq!(rec.user, "a/b");
        assert_eq!(rec.status, OrderStatus::Confirmed);
        assert_eq!(rec.hold_expires_at_ms, None);
    }

    #[test]
    fn poison_is_classified() {
        assert!(matches!(
            OrderRecord::from_message(b"{not json"),
            Err(PoisonReason::Malformed(_))
        ));
        assert_eq!(
            OrderRecord::from_message(br#"{"v":9}"#),
            Err(PoisonReason::Version(9))
        );
        assert!(matches!(
            OrderRecord::from_message(br#"{"v":1}"#),
            Err(PoisonReason::Malformed(_))
        ));
    }

    /// A record that parses but that the ledger cannot hold is poison too,
    /// not a batch that fails at every redelivery.
    #[test]
    fn what_the_ledger_cannot_hold_is_poison() {
        let valid = OrderRecord {
            v: ORDER_MESSAGE_VERSION,
            rev: 1,
            order_id: Uuid::new_v4(),
            namespace: "shop".into(),
            name: "drop".into(),
            user: "ann".into(),
            quantity: 1,
            status: OrderStatus::Reserved,
            reserved_at_ms: 1_763_700_000_000,
            hold_expires_at_ms: Some(1_763_700_600_000),
        };
        let check = |rec: &OrderRecord| {
            let body = serde_json::to_vec(rec).expect("serialisable");
            OrderRecord::from_message(&body)
        };
        assert_eq!(check(&valid).as_ref(), Ok(&valid));
        let edge = OrderRecord {
            quantity: i32::MAX as u32,
            rev: i32::MAX as u32,
            reserved_at_ms: *LEDGER_TIME_MS.start(),
            hold_expires_at_ms: Some(*LEDGER_TIME_MS.end()),
            ..valid.clone()
        };
        assert!(check(&edge).is_ok());
        for (bad, field) in [
            (
                OrderRecord {
                    user: "a\0b".into(),
                    ..valid.clone()
                },
                "NUL",
            ),
            (
                OrderRecord {
                    quantity: i32::MAX as u32 + 1,
                    ..valid.clone()
                },
                "quantity",
            ),
            (
                OrderRecord {
                    rev: u32::MAX,
                    ..valid.clone()
                },
                "rev",
            ),
            (
                OrderRecord {
                    reserved_at_ms: *LEDGER_TIME_MS.end() + 1,
                    ..valid.clone()
                },
                "reservedAtMs",
            ),
            (
                OrderRecord {
                    hold_expires_at_ms: Some(*LEDGER_TIME_MS.start() - 1),
                    ..valid.clone()
                },
                "holdExpiresAtMs",
            ),
        ] {
            match check(&bad) {
                Err(PoisonReason::Invalid(why)) => assert!(why.contains(field), "{why}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
