//! The HTTP API: place an order, read an order, read a sale's stock.

use crate::admission::{Kind, Pass, TokenError};
use crate::error::{ApiError, Refusal};
use crate::metrics::GatewayMetrics;
use crate::outbox::Acker;
use crate::publish::Publisher;
use crate::request::{idempotency_key, json_content, parse_order, signed_in_user};
use crate::reserve::{Attempt, Reservation};
use crate::sales::{SaleView, Sales};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_api::sale::AdmissionMode;
use flashsale_common::order::{OrderRecord, millis_to_rfc3339, outbox_member};
use flashsale_store::redisconn::RedisConn;
use flashsale_store::stock;
use futures::StreamExt;
use redis::AsyncCommands;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use flashsale_api::sale::RateLimitKey;

pub struct AppState {
    pub sales: Arc<Sales>,
    pub redis: RedisConn,
    pub publisher: Arc<Publisher>,
    pub acker: Acker,
    pub metrics: Arc<GatewayMetrics>,
    pub rate_limit_key: RateLimitKey,
    /// Proxies in front whose X-Forwarded-For entries are trusted.
    pub trusted_proxies: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The bearer token a confirm must carry; `None`: confirms are open.
    pub confirm_token: Option<String>,
    /// The header in which a trusted proxy names the signed-in buyer;
    /// `None`: the body's `user` is the buyer.
    pub user_header: Option<axum::http::HeaderName>,
    /// The storefront page, rendered once for this gateway, and its
    /// Content-Security-Policy.
    pub storefront: Bytes,
    pub storefront_csp: String,
    /// Live-stock streams this gateway may still open.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Signs and checks the waiting room's tokens; None without a pass key.
    pub signer: Option<crate::admission::Signer>,
    /// Cancelled when the gateway starts its graceful stop; open event
    /// streams end then, so that draining does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub status: &'static str,
    pub sale: String,
    pub user: String,
    pub quantity: u32,
    pub reserved_at: String,
    pub hold_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
}

impl OrderView {
    fn from_record(rec: &OrderRecord, published: Option<bool>) -> Self {
        Self {
            order_id: rec.order_id.to_string(),
            status: rec.status.as_str(),
            sale: format!("{}/{}", rec.namespace, rec.name),
            user: rec.user.clone(),
            quantity: rec.quantity,
            reserved_at: millis_to_rfc3339(rec.reserved_at_ms),
            hold_expires_at: rec.hold_expires_at_ms.map(millis_to_rfc3339),
            published,
        }
    }
}

fn served<'a>(s: &'a AppState, ns: &str, name: &str) -> Result<&'a Arc<SaleView>, ApiError> {
    s.sales
        .get(ns, name)
        .ok_or_else(|| ApiError::unknown_sale(&format!("{ns}/{name}")))
}

/// The client's address: the connection's, or behind `trusted` proxies the
/// one the farthest of them saw, the `trusted`-th entry of X-Forwarded-For
/// from the right (each proxy appends the address it saw). What a client
/// wrote to the left of it, and anything that is not an address, is never
/// taken: the key made from it is at most an IPv6 address long.
pub fn client_ip(headers: &HeaderMap, peer: std::net::IpAddr, trusted: usize) -> std::net::IpAddr {
    if trusted == 0 {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    hops.len()
        .checked_sub(trusted)
        .and_then(|i| hops.get(i))
        .and_then(|hop| hop.parse().ok())
        .unwrap_or(peer)
}

fn client_identity(s: &AppState, headers: &HeaderMap, peer: SocketAddr, user: &str) -> String {
    let ip = || client_ip(headers, peer.ip(), s.trusted_proxies);
    match s.rate_limit_key {
        RateLimitKey::User => format!("u:{user}"),
        RateLimitKey::Ip => format!("ip:{}", ip()),
        RateLimitKey::UserAndIp => format!("u:{user}|ip:{}", ip()),
    }
}

/// `POST /api/v1/sales/{namespace}/{name}/orders`
pub async fn create_order(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (outcome, resp) = match place(&s, &ns, &name, peer, &headers, body).await {
        Ok((outcome, resp)) => (outcome, resp),
        Err(refusal) => (refusal.label(), refusal.into_error().into_response()),
    };
    s.metrics.outcome(outcome);
    s.metrics
        .order_latency
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request body of at most `limit` bytes within [`BODY_TIMEOUT`]. A
/// declared length over the limit is refused before a byte is read: a
/// client that sent `Expect: 100-continue` never uploads the body, and the
/// answer does not race the upload.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_TIMEOUT, read_body_now(headers, body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .field("body"))
        })
}

async fn read_body_now(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than {limit} bytes; send {{\"user\": \"...\", \"quantity\": 1}}"
            ),
        )
        .field("body")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut whole = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read the request body: {e}"),
            )
            .field("body")
        })?;
        if whole.len() + chunk.len() > limit {
            return Err(too_large());
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

/// The answer to a purchase attempt: its `orders` label and the response,
/// or the refusal.
type Placed = Result<(&'static str, Response), Refusal>;

async fn place(
    s: &AppState,
    ns: &str,
    name: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Placed {
    let Some(view) = s.sales.get(ns, name) else {
        return Err(Refusal::UnknownSale {
            sale: format!("{ns}/{name}"),
            seeded: false,
        });
    };
    let signed_in = match &s.user_header {
        Some(header) => Some(signed_in_user(headers, header)?),
        None => None,
    };
    // With a waiting room the pass is the buyer: its subject is who buys.
    let pass = match view.admission() {
        Some(a) if a.mode != AdmissionMode::Open => {
            let pass = pass_of(s, view, headers).inspect_err(|r| {
                if let Refusal::PassRefused(e) = r {
                    s.metrics.pass_refused(e.label());
                } else if matches!(r, Refusal::PassRequired) {
                    s.metrics.pass_refused(TokenError::Missing.label());
                }
            })?;
            if signed_in.as_ref().is_some_and(|u| *u != pass.sub) {
                s.metrics.pass_refused("not_yours");
                return Err(Refusal::PassNotYours);
            }
            Some(pass)
        }
        _ => None,
    };
    let buyer = pass.as_ref().map(|p| p.sub.clone()).or(signed_in);
    json_content(headers)?;
    let body = read_body(headers, body, s.max_body_bytes).await?;
    let req = parse_order(&body, buyer.as_deref())?;
    // Each buyer's keys are their own.
    let key = idempotency_key(headers)?
        .map(|k| flashsale_store::keys::scoped_idempotency_key(&req.user, &k));

    if view.refuse_from_memory(key.as_deref()) {
        s.metrics.sold_out_from_memory.inc();
        return Ok((Refusal::SoldOut.label(), sold_out_response()));
    }

    let order_id = uuid::Uuid::new_v4().to_string();
    let client = client_identity(s, headers, peer, &req.user);
    let attempt = Attempt {
        order_id: &order_id,
        user: &req.user,
        quantity: req.quantity,
        idempotency_key: key.as_deref(),
        client: &client,
        place: pass.as_ref().map(|p| p.p),
    };
    let outcome = view.reserve(&s.redis, &attempt).await.map_err(|e| {
        tracing::warn!(sale = %view.label, error = %e, "reservation call failed");
        if e.code() == Some("OOM") {
            // Redis under `noeviction` at its memory limit: it refused
            // the script's writes, so nothing was reserved.
            Refusal::StoreFull
        } else {
            Refusal::StoreUnavailable
        }
    })?;
    match outcome {
        Reservation::Accepted { record } => deliver(s, view, &record, "accepted").await,
        Reservation::Replay {
            record,
            pending: true,
        } => deliver(s, view, &record, "replayed").await,
        Reservation::Replay {
            record,
            pending: false,
        } => {
            let rec = OrderRecord::from_message(record.as_bytes()).map_err(|e| corrupt(&e))?;
            Ok(("replayed", accepted(&rec)))
        }
        Reservation::NoPass => Err(Refusal::PassRequired),
        Reservation::NotFound => Err(Refusal::UnknownSale {
            sale: view.label.clone(),
            seeded: true,
        }),
        Reservation::RateLimited { retry_after_ms } => Err(Refusal::RateLimited { retry_after_ms }),
        Reservation::NotOpen {
            reason,
            start_ms,
            end_ms,
        } => Err(match reason.as_str() {
            "not_started" => Refusal::NotStarted { start_ms },
            "ended" => Refusal::Ended { end_ms },
            "paused" => Refusal::Paused,
            _ => Refusal::Closed,
        }),
        Reservation::IdempotencyMismatch { order_id } => {
            Err(Refusal::IdempotencyKeyReused { order_id })
        }
        Reservation::PerOrderLimit { limit } => Err(Refusal::QuantityAboveLimit { limit }),
        Reservation::UserLimit { limit, held } => Err(Refusal::UserLimitReached { limit, held }),
        Reservation::SoldOut { remaining } => {
            if remaining <= 0 {
                view.observed_sold_out(&s.redis);
                Err(Refusal::SoldOut)
            } else {
                Err(Refusal::InsufficientStock {
                    remaining,
                    quantity: req.quantity,
                })
            }
        }
        Reservation::Unreplicated { record } => {
            let rec = OrderRecord::from_message(record.as_bytes()).map_err(|e| corrupt(&e))?;
            Err(Refusal::ReplicaPending {
                order_id: rec.order_id.to_string(),
            })
        }
    }
}

/// Whom the pass or ticket a request carries names as the buyer, when this
/// sale's key signed it (whether or not it ran out).
fn line_subject(s: &AppState, view: &SaleView, headers: &HeaderMap) -> Option<String> {
    let signer = s.signer.as_ref()?;
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    if let Ok(pass) = signer.verify::<Pass>(Kind::Pass, token) {
        return (pass.s == view.label).then_some(pass.sub);
    }
    let ticket: crate::admission::Ticket = signer.verify(Kind::Ticket, token).ok()?;
    (ticket.s == view.label).then(|| crate::admission::subject(&ticket))
}

/// The admission pass a request carries, checked without Redis: signed by
/// this sale's key, for this sale, not run out.
fn pass_of(s: &AppState, view: &SaleView, headers: &HeaderMap) -> Result<Pass, Refusal> {
    let Some(signer) = &s.signer else {
        return Err(Refusal::NoPassKey);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Refusal::PassRequired)?;
    let pass: Pass = signer
        .verify(Kind::Pass, token)
        .map_err(Refusal::PassRefused)?;
    if pass.s != view.label {
        return Err(Refusal::PassRefused(TokenError::OtherSale));
    }
    if pass.exp <= crate::admission::now_ms() {
        return Err(Refusal::PassRefused(TokenError::Expired));
    }
    Ok(pass)
}

/// The sold-out answer given from memory, rendered once.
fn sold_out_response() -> Response {
    static BODY: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        Bytes::from_static(br#"{"error":{"code":"sold_out","message":"the sale is sold out"}}"#)
    });
    (
        StatusCode::CONFLICT,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        BODY.clone(),
    )
        .into_response()
}

fn corrupt(e: &impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "unreadable order record in Redis");
    Refusal::Internal
}

fn accepted(rec: &OrderRecord) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(OrderView::from_record(rec, None)),
    )
        .into_response()
}

/// Publishes the order and answers 202 only once RabbitMQ confirmed it.
async fn deliver(s: &AppState, view: &SaleView, record: &str, outcome: &'static str) -> Placed {
    let rec = OrderRecord::from_message(record.as_bytes()).map_err(|e| corrupt(&e))?;
    let id = rec.order_id.to_string();
    match s
        .publisher
        .publish(&view.queue, &id, record.as_bytes())
        .await
    {
        Ok(()) => {
            s.metrics.publish_confirms.inc();
            s.acker.confirmed(view, &id, rec.rev);
            Ok((outcome, accepted(&rec)))
        }
        Err(e) => {
            s.metrics.publish_failed(&e);
            tracing::warn!(sale = %view.label, order = %id, error = %e, "publish failed; order stays in the outbox");
            Err(Refusal::PublishPending { order_id: id })
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
fn authorize(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "confirming an order takes the payment service's token: Authorization: Bearer <token>",
        )
        .field("Authorization")),
    }
}

/// Compares digests, so that the time taken tells nothing about how much
/// of the token a guess got right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `POST /api/v1/sales/{namespace}/{name}/orders/{order_id}/confirm`: the
/// payment went through. Idempotent: confirming a confirmed order answers
/// 200 again. `409` when the hold already expired, `410` when the sale is gone.
pub async fn confirm_order(
    State(s): State<Arc<AppState>>,
    Path((ns, name, order_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::holds::{Settle, Settled, settle};
    if let Some(token) = &s.confirm_token {
        authorize(&headers, token)?;
    }
    let view = served(&s, &ns, &name)?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_order",
            format!("no order {order_id} in this sale"),
        )
        .field("orderId")
    };
    if uuid::Uuid::parse_str(&order_id).is_err() {
        return Err(unknown());
    }
    let mut conn = s.redis.clone();
    // The script may have run before the reply was lost: confirming again is
    // safe, since it is idempotent.
    let (outcome, record) = settle(&mut conn, view, &order_id, Settle::Confirm)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the stock store did not answer; confirm again (confirming twice is safe)",
            )
            .retry_after(1)
        })?;
    let record = match outcome {
        Settled::UnknownOrder => return Err(unknown()),
        Settled::SaleGone => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "sale_gone",
                "the sale was deleted",
            ));
        }
        Settled::Expired | Settled::AlreadyExpired => {
            if outcome == Settled::Expired {
                s.metrics.holds_expired.inc();
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "hold_expired",
                "the hold expired before the payment; its units went back on sale",
            )
            .order(order_id));
        }
        Settled::NotDue => return Err(unknown()),
        Settled::Confirmed | Settled::AlreadyConfirmed => record.unwrap_or_default(),
    };
    let rec = OrderRecord::from_message(record.as_bytes()).map_err(|e| corrupt(&e).into_error())?;
    if outcome == Settled::Confirmed {
        s.metrics.holds_confirmed.inc();
    }
    // A confirmation a failover could still take away is not reported as
    // done: the hold would then expire and its units be sold again.
    if !crate::reserve::replicas_hold_writes(&mut conn, &view.keys, view.replica_acks, "payment")
        .await
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "confirm_pending",
            "the payment is recorded, but too few Redis replicas have it yet; confirm again (confirming twice is safe)",
        )
        .order(order_id)
        .retry_after(1));
    }
    if outcome == Settled::Confirmed {
        // The confirmation is already durable in Redis and in the outbox;
        // a failed publish is retried by the sweeper.
        match s
            .publisher
            .publish(&view.queue, &order_id, record.as_bytes())
            .await
        {
            Ok(()) => s.acker.confirmed(view, &order_id, rec.rev),
            Err(e) => s.metrics.publish_failed(&e),
        }
    }
    Ok((StatusCode::OK, Json(OrderView::from_record(&rec, None))).into_response())
}

/// `GET /api/v1/sales/{namespace}/{name}/orders/{order_id}`: the order
/// for its buyer. Its id, random and told only to the buyer in the `202`,
/// is what proves that; with `--user-header`, the signed-in buyer must
/// also be the order's, and anyone else is told there is no such order.
pub async fn get_order(
    State(s): State<Arc<AppState>>,
    Path((ns, name, order_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let signed_in = match &s.user_header {
        Some(header) => Some(signed_in_user(&headers, header)?),
        None => None,
    };
    let view = served(&s, &ns, &name)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_order",
            format!("no order {order_id} in this sale"),
        )
    };
    if uuid::Uuid::parse_str(&order_id).is_err() {
        return Err(not_found().field("orderId"));
    }
    let mut conn = s.redis.clone();
    let record: Option<String> = conn
        .hget(view.keys.orders(), &order_id)
        .await
        .map_err(|_| ApiError::unavailable("the stock store"))?;
    let record = record.ok_or_else(not_found)?;
    let rec = OrderRecord::from_message(record.as_bytes()).map_err(|e| corrupt(&e).into_error())?;
    if signed_in.is_some_and(|buyer| buyer != rec.user) {
        return Err(not_found());
    }
    // With a waiting room the buyer is the pass's subject: the order is
    // read with that buyer's pass or ticket (run out or not).
    let queued = view
        .admission()
        .is_some_and(|a| a.mode != AdmissionMode::Open);
    if queued
        && s.user_header.is_none()
        && line_subject(&s, view, &headers).as_deref() != Some(rec.user.as_str())
    {
        return Err(not_found());
    }
    let pending: Option<f64> = conn
        .zscore(view.keys.outbox(), outbox_member(&order_id, rec.rev))
        .await
        .map_err(|_| ApiError::unavailable("the stock store"))?;
    Ok((
        StatusCode::OK,
        Json(OrderView::from_record(&rec, Some(pending.is_none()))),
    )
        .into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleStatusView {
    pub sale: String,
    pub phase: &'static str,
    pub stock: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub sold: i64,
    pub expired: i64,
    pub opens_at: String,
    pub closes_at: String,
    pub per_user: i64,
    pub per_order: i64,
    pub hold_seconds: i64,
    pub sku: String,
    pub product: String,
    pub price: String,
    pub currency: String,
    pub server_time: String,
    /// The waiting room, when the sale has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueInfo>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    /// `fifo` or `lottery`.
    pub mode: &'static str,
    /// When buyers may join.
    pub opens_at: String,
    /// Proof-of-work bits a join costs.
    pub challenge_bits: u8,
    pub admit_per_second: u32,
    pub pass_seconds: i64,
}

/// `GET /api/v1/sales/{namespace}/{name}`
pub async fn sale_status(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<SaleStatusView>, ApiError> {
    let view = served(&s, &ns, &name)?;
    let mut conn = s.redis.clone();
    let snap = stock::read(&mut conn, &view.sale)
        .await
        .map_err(|_| ApiError::unavailable("the stock store"))?
        .ok_or_else(|| ApiError::unknown_sale(&view.label))?;
    view.on_snapshot(&snap);
    let product = stock::product(&mut conn, &view.sale)
        .await
        .map_err(|_| ApiError::unavailable("the stock store"))?
        .unwrap_or_default();
    Ok(Json(SaleStatusView {
        sku: product.sku,
        product: product.name,
        price: product.price,
        currency: product.currency,
        server_time: millis_to_rfc3339(snap.now_ms),
        sale: view.label.clone(),
        phase: snap.phase().as_str(),
        stock: snap.stock,
        remaining: snap.remaining,
        reserved: snap.reserved,
        sold: snap.sold,
        expired: snap.expired,
        opens_at: millis_to_rfc3339(snap.start_ms),
        closes_at: millis_to_rfc3339(snap.end_ms),
        per_user: snap.per_user,
        per_order: snap.per_order,
        hold_seconds: snap.hold_ms / 1000,
        queue: (snap.admission.mode != AdmissionMode::Open).then(|| QueueInfo {
            mode: snap.admission.mode.as_str(),
            opens_at: millis_to_rfc3339(snap.admission.open_ms),
            challenge_bits: snap.admission.challenge_bits,
            admit_per_second: snap.admission.per_second,
            pass_seconds: snap.admission.pass_ms / 1000,
        }),
    }))
}

/// The most header bytes a request may carry (names, values and their
/// separators); a buyer's request needs well under 2 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses a request whose headers exceed [`MAX_HEADER_BYTES`] with a JSON
/// `431` before any handler runs (hyper itself answers, without a body,
/// only past its own buffer of about 400 KiB).
pub async fn header_budget(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request's headers are larger than {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

/// A known route asked with a method it does not take: `405` with a JSON
/// body like every other error.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served here; see docs/api.md"),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/api.md",
    )
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use axum::http::HeaderMap;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_client_is_what_the_farthest_trusted_proxy_saw() {
        let peer = ip("10.0.0.9");
        let mut h = HeaderMap::new();
        // A client forging entries to the left of what the proxies wrote.
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().expect("value"),
        );
        assert_eq!(client_ip(&h, peer, 0), peer, "no proxy trusted");
        assert_eq!(client_ip(&h, peer, 1), ip("10.0.0.2"));
        assert_eq!(client_ip(&h, peer, 2), ip("203.0.113.7"));
        // Fewer entries than proxies: the request did not come through them.
        assert_eq!(client_ip(&h, peer, 4), peer);
        // Entries over several headers count as one list.
        h.append("x-forwarded-for", "10.0.0.3".parse().expect("value"));
        assert_eq!(client_ip(&h, peer, 2), ip("10.0.0.2"));
        // Anything that is not an address is never a key.
        let mut junk = HeaderMap::new();
        junk.insert(
            "x-forwarded-for",
            "x".repeat(400_000).parse().expect("value"),
        );
        assert_eq!(client_ip(&junk, peer, 1), peer);
        junk.insert("x-forwarded-for", "2001:db8::1".parse().expect("value"));
        assert_eq!(client_ip(&junk, peer, 1), ip("2001:db8::1"));
    }
}
