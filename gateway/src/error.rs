//! Every error the API returns: a status code and the JSON body
//! `{"error": {"code", "message", "field"?}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// The order concerned, when the error is about one that exists.
    pub order_id: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            order_id: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn order(mut self, order_id: impl Into<String>) -> Self {
        self.order_id = Some(order_id.into());
        self
    }

    pub fn unknown_sale(sale: &str) -> Self {
        Refusal::UnknownSale {
            sale: sale.to_owned(),
            seeded: false,
        }
        .into_error()
    }

    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} did not answer; try again"),
        )
        .retry_after(1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                order_id: self.order_id.as_deref(),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flashsale\""),
            );
        }
        resp
    }
}

/// Why a purchase attempt got no `202`. [`Refusal::parts`] is the one table
/// of each refusal's HTTP status, error code and label in the `orders`
/// metric; [`Refusal::into_error`] writes the body.
#[derive(Debug)]
pub enum Refusal {
    /// The gateway does not serve the sale, or Redis has no such sale.
    UnknownSale {
        sale: String,
        seeded: bool,
    },
    /// The request itself is wrong (body, headers, user); the request
    /// parser's error says how.
    Invalid(ApiError),
    /// Redis refused the writes (`noeviction` at its memory limit).
    StoreFull,
    /// Redis did not answer.
    StoreUnavailable,
    RateLimited {
        retry_after_ms: i64,
    },
    NotStarted {
        start_ms: i64,
    },
    Ended {
        end_ms: i64,
    },
    Paused,
    Closed,
    IdempotencyKeyReused {
        order_id: String,
    },
    QuantityAboveLimit {
        limit: i64,
    },
    UserLimitReached {
        limit: i64,
        held: i64,
    },
    SoldOut,
    InsufficientStock {
        remaining: i64,
        quantity: u32,
    },
    /// Reserved, but too few Redis replicas acknowledged it in time.
    ReplicaPending {
        order_id: String,
    },
    /// Reserved, but RabbitMQ has not confirmed the order yet.
    PublishPending {
        order_id: String,
    },
    /// An order record in Redis that does not parse.
    Internal,
    /// The sale has a waiting room and the request carried no pass.
    PassRequired,
    /// The pass is not one this sale's gateways signed, is for another
    /// sale, or ran out.
    PassRefused(crate::admission::TokenError),
    /// The pass is another signed-in buyer's.
    PassNotYours,
    /// The sale has a waiting room but this gateway has no key to check
    /// passes with.
    NoPassKey,
}

impl Refusal {
    /// Status, error code and metric label.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Refusal::UnknownSale { .. } => (S::NOT_FOUND, "unknown_sale", "unknown_sale"),
            Refusal::Invalid(e) => (e.status, e.code, "invalid"),
            Refusal::StoreFull => (S::SERVICE_UNAVAILABLE, "store_full", "store_full"),
            Refusal::StoreUnavailable => (S::SERVICE_UNAVAILABLE, "unavailable", "unavailable"),
            Refusal::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited", "rate_limited"),
            Refusal::NotStarted { .. } => (S::FORBIDDEN, "sale_not_started", "not_open"),
            Refusal::Ended { .. } => (S::FORBIDDEN, "sale_ended", "not_open"),
            Refusal::Paused => (S::FORBIDDEN, "sale_paused", "not_open"),
            Refusal::Closed => (S::FORBIDDEN, "sale_closed", "not_open"),
            Refusal::IdempotencyKeyReused { .. } => {
                (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "invalid")
            }
            Refusal::QuantityAboveLimit { .. } => {
                (S::UNPROCESSABLE_ENTITY, "quantity_above_limit", "invalid")
            }
            Refusal::UserLimitReached { .. } => (S::CONFLICT, "user_limit_reached", "user_limit"),
            Refusal::SoldOut => (S::CONFLICT, "sold_out", "sold_out"),
            Refusal::InsufficientStock { .. } => (S::CONFLICT, "insufficient_stock", "sold_out"),
            Refusal::ReplicaPending { .. } => {
                (S::SERVICE_UNAVAILABLE, "order_pending", "replica_pending")
            }
            Refusal::PublishPending { .. } => {
                (S::SERVICE_UNAVAILABLE, "order_pending", "publish_pending")
            }
            Refusal::Internal => (S::INTERNAL_SERVER_ERROR, "internal", "unavailable"),
            Refusal::PassRequired => (S::UNAUTHORIZED, "pass_required", "no_pass"),
            Refusal::PassRefused(crate::admission::TokenError::Expired) => {
                (S::FORBIDDEN, "pass_expired", "no_pass")
            }
            Refusal::PassRefused(crate::admission::TokenError::OtherSale) => {
                (S::FORBIDDEN, "pass_for_another_sale", "no_pass")
            }
            Refusal::PassRefused(_) => (S::FORBIDDEN, "pass_invalid", "no_pass"),
            Refusal::PassNotYours => (S::FORBIDDEN, "pass_not_yours", "no_pass"),
            Refusal::NoPassKey => (S::SERVICE_UNAVAILABLE, "no_pass_key", "unavailable"),
        }
    }

    /// The label this refusal counts under in the `orders` metric.
    pub fn label(&self) -> &'static str {
        self.parts().2
    }

    /// The JSON error the buyer gets.
    pub fn into_error(self) -> ApiError {
        let (status, code, _) = self.parts();
        let new = |message: String| ApiError::new(status, code, message);
        match self {
            Refusal::Invalid(e) => e,
            Refusal::UnknownSale {
                sale,
                seeded: false,
            } => new(format!("no sale {sale} is served here")),
            Refusal::UnknownSale { sale, seeded: true } => new(format!(
                "sale {sale} does not exist (not seeded, or deleted)"
            )),
            Refusal::StoreFull => new(
                "the stock store is full and takes no reservations now; nothing was reserved, \
                 retry with the same Idempotency-Key"
                    .to_owned(),
            )
            .retry_after(1),
            Refusal::StoreUnavailable => new(
                "the stock store did not answer; retry with the same Idempotency-Key".to_owned(),
            )
            .retry_after(1),
            Refusal::RateLimited { retry_after_ms } => {
                new(format!("too many attempts; retry in {retry_after_ms} ms"))
                    .retry_after(u64::try_from(retry_after_ms).unwrap_or(1).div_ceil(1000))
            }
            Refusal::NotStarted { start_ms } => new(format!(
                "the sale opens at {}",
                flashsale_common::order::millis_to_rfc3339(start_ms)
            )),
            Refusal::Ended { end_ms } => new(format!(
                "the sale ended at {}",
                flashsale_common::order::millis_to_rfc3339(end_ms)
            )),
            Refusal::Paused => new("the sale is paused".to_owned()),
            Refusal::Closed => new("the sale is closed".to_owned()),
            Refusal::IdempotencyKeyReused { order_id } => new(
                "this Idempotency-Key was used for a different request (user or quantity)"
                    .to_owned(),
            )
            .field("Idempotency-Key")
            .order(order_id),
            Refusal::QuantityAboveLimit { limit } => {
                new(format!("quantity must be at most {limit} per order")).field("quantity")
            }
            Refusal::UserLimitReached { limit, held } => new(format!(
                "a user may hold at most {limit} units of this sale and already holds {held}"
            ))
            .field("quantity"),
            Refusal::SoldOut => new("the sale is sold out".to_owned()),
            Refusal::InsufficientStock {
                remaining,
                quantity,
            } => new(format!("only {remaining} left, {quantity} requested")).field("quantity"),
            Refusal::ReplicaPending { order_id } => new(
                "the order is reserved, but too few Redis replicas have confirmed it yet; it will \
                 be delivered if Redis keeps it: retry with the same Idempotency-Key or read the \
                 order to learn its state"
                    .to_owned(),
            )
            .order(order_id)
            .retry_after(1),
            Refusal::PublishPending { order_id } => new(
                "the order is reserved and will be delivered, but RabbitMQ has not confirmed it \
                 yet; retry with the same Idempotency-Key or read the order to learn its state"
                    .to_owned(),
            )
            .order(order_id)
            .retry_after(1),
            Refusal::Internal => new("unreadable order record".to_owned()),
            Refusal::PassRequired => new(
                "this sale has a waiting room: join it (POST …/queue) and buy with the pass it \
                 gives when your turn comes, as Authorization: Bearer <pass>"
                    .to_owned(),
            )
            .field("Authorization"),
            Refusal::PassRefused(e) => new(format!(
                "the pass is refused ({}): join the line for a pass of this sale",
                e.label().replace('_', " ")
            ))
            .field("Authorization"),
            Refusal::PassNotYours => {
                new("the pass was given to another buyer".to_owned()).field("Authorization")
            }
            Refusal::NoPassKey => {
                new("this gateway has no pass key to check passes with (--pass-key)".to_owned())
                    .retry_after(1)
            }
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Invalid(e)
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    fn every_refusal() -> Vec<Refusal> {
        vec![
            Refusal::UnknownSale {
                sale: "ns/a".into(),
                seeded: false,
            },
            Refusal::Invalid(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "x")),
            Refusal::StoreFull,
            Refusal::StoreUnavailable,
            Refusal::RateLimited {
                retry_after_ms: 1500,
            },
            Refusal::NotStarted { start_ms: 0 },
            Refusal::Ended { end_ms: 0 },
            Refusal::Paused,
            Refusal::Closed,
            Refusal::IdempotencyKeyReused {
                order_id: "o".into(),
            },
            Refusal::QuantityAboveLimit { limit: 1 },
            Refusal::UserLimitReached { limit: 1, held: 1 },
            Refusal::SoldOut,
            Refusal::InsufficientStock {
                remaining: 1,
                quantity: 2,
            },
            Refusal::ReplicaPending {
                order_id: "o".into(),
            },
            Refusal::PublishPending {
                order_id: "o".into(),
            },
            Refusal::Internal,
            Refusal::PassRequired,
            Refusal::PassRefused(crate::admission::TokenError::Forged),
            Refusal::PassRefused(crate::admission::TokenError::Expired),
            Refusal::PassRefused(crate::admission::TokenError::OtherSale),
            Refusal::PassNotYours,
            Refusal::NoPassKey,
        ]
    }

    /// The labels are the metric's, every refusal label is used, and the
    /// body says what the table says.
    #[test]
    fn the_refusal_table_matches_the_metric_and_the_body() {
        let mut used = std::collections::BTreeSet::new();
        for r in every_refusal() {
            let (status, code, label) = r.parts();
            assert!(
                crate::metrics::OUTCOMES.contains(&label),
                "{r:?}: {label} is not an outcome of the orders metric"
            );
            used.insert(label);
            let e = r.into_error();
            assert_eq!((e.status, e.code), (status, code));
            assert!(!status.is_success());
        }
        for outcome in crate::metrics::OUTCOMES {
            assert!(
                used.contains(outcome) || ["accepted", "replayed"].contains(&outcome),
                "no refusal counts as {outcome}"
            );
        }
    }

    #[test]
    fn a_rate_limit_asks_to_retry_after_whole_seconds() {
        let e = Refusal::RateLimited {
            retry_after_ms: 1500,
        }
        .into_error();
        assert_eq!(e.retry_after, Some(2));
    }
}
