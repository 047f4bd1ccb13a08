//! The waiting room's HTTP API. Joining costs one Redis call (the join
//! script); asking where one stands, and the live stream of it, cost none:
//! each gateway learns the line's frontier once per admission step and
//! answers every waiter from memory, as the sold-out fast path does.

use crate::admission::{
    CHALLENGE_TTL_MS, Challenge, Kind, LineView, Signer, Ticket, WaiterView, now_ms, random_id,
    solves, subject, waiter,
};
use crate::api::AppState;
use crate::error::ApiError;
use crate::request::signed_in_user;
use crate::sales::SaleView;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use flashsale_api::sale::{AdmissionMode, Phase};
use flashsale_store::queue::{self, JoinRefusal};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The sale, its settings and the key, for a request about its line.
struct Room<'a> {
    view: &'a Arc<SaleView>,
    signer: &'a Signer,
    bits: u8,
}

fn room<'a>(s: &'a AppState, ns: &str, name: &str) -> Result<Room<'a>, ApiError> {
    let view = s
        .sales
        .get(ns, name)
        .ok_or_else(|| ApiError::unknown_sale(&format!("{ns}/{name}")))?;
    let admission = view.admission().filter(|a| a.mode != AdmissionMode::Open);
    let Some(admission) = admission else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_queue",
            "this sale has no waiting room: buy directly",
        ));
    };
    let signer = s.signer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_pass_key",
            "this gateway has no pass key (--pass-key) to sign the line's tickets with",
        )
        .retry_after(5)
    })?;
    Ok(Room {
        view,
        signer,
        bits: admission.challenge_bits,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChallengeView {
    challenge: String,
    bits: u8,
    expires_at_ms: i64,
}

/// `GET /api/v1/sales/{namespace}/{name}/queue/challenge`: a puzzle to
/// solve before joining (find `solution` such that
/// SHA-256(`<challenge>:<solution>`) starts with `bits` zero bits).
pub async fn challenge(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<impl Serialize>, ApiError> {
    let r = room(&s, &ns, &name)?;
    let exp = now_ms() + CHALLENGE_TTL_MS;
    let token = r.signer.sign(
        Kind::Challenge,
        &Challenge {
            s: r.view.label.clone(),
            n: random_id(),
            b: r.bits,
            exp,
        },
    );
    Ok(Json(ChallengeView {
        challenge: token,
        bits: r.bits,
        expires_at_ms: exp,
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// A ticket this buyer holds already: given back as it is.
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    solution: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Joined {
    ticket: String,
    #[serde(flatten)]
    view: WaiterView,
}

fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// Where `ticket` stands in `view`'s line now, from memory.
fn stand(s: &AppState, view: &SaleView, signer: &Signer, ticket: &Ticket) -> WaiterView {
    let line = view.line().unwrap_or_else(|| Arc::new(LineView::default()));
    let live = view.live_stock();
    let stock_left = live.as_ref().is_none_or(|l| l.remaining + l.reserved > 0);
    let ended = live.as_ref().is_some_and(|l| l.phase == Phase::Ended);
    s.metrics.queue_polls.inc();
    waiter(signer, &line, ticket, &subject(ticket), stock_left, ended)
}

/// `POST /api/v1/sales/{namespace}/{name}/queue`: joins the line. The
/// body carries the solved challenge, or a ticket held already. A
/// signed-in buyer (the user header) has one place: joining again gives
/// back the same ticket.
pub async fn join(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let r = room(&s, &ns, &name)?;
    let req: JoinRequest = if body.iter().all(u8::is_ascii_whitespace) {
        JoinRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            refused(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not a join: {e}"),
            )
        })?
    };
    let user = match &s.user_header {
        Some(h) => Some(signed_in_user(&headers, h)?),
        None => None,
    };
    if let Some(token) = &req.ticket
        && let Ok(t) = r.signer.verify::<Ticket>(Kind::Ticket, token)
        && t.s == r.view.label
        && (user.is_none() || t.u == user)
    {
        let view = stand(&s, r.view, r.signer, &t);
        return Ok((
            StatusCode::OK,
            Json(Joined {
                ticket: token.clone(),
                view,
            }),
        )
            .into_response());
    }
    let mut spent = None;
    if r.bits > 0 {
        let (Some(token), Some(solution)) = (&req.challenge, &req.solution) else {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "challenge_required",
                format!(
                    "joining takes a solved challenge of {} bits: GET …/queue/challenge, then send \
                     {{\"challenge\", \"solution\"}}",
                    r.bits
                ),
            ));
        };
        let c: Challenge = r.signer.verify(Kind::Challenge, token).map_err(|_| {
            refused(
                StatusCode::FORBIDDEN,
                "challenge_invalid",
                "the challenge is not this sale's",
            )
        })?;
        if c.s != r.view.label {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "challenge_invalid",
                "the challenge is another sale's",
            ));
        }
        if c.exp <= now_ms() {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "challenge_expired",
                "the challenge ran out; ask for a new one",
            ));
        }
        if c.b < r.bits || !solves(token, solution, r.bits) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "challenge_unsolved",
                "the solution does not solve the challenge",
            ));
        }
        spent = Some((c.n, c.exp));
    }
    let mut conn = s.redis.clone();
    let joined = queue::join(
        &mut conn,
        &r.view.sale,
        &random_id(),
        user.as_deref(),
        spent.as_ref().map(|(n, exp)| (n.as_str(), *exp)),
    )
    .await
    .map_err(|e| {
        tracing::warn!(sale = %r.view.label, error = %e, "join failed");
        ApiError::unavailable("the stock store")
    })?;
    let joined = joined.map_err(|refusal| match refusal {
        JoinRefusal::NotFound => ApiError::unknown_sale(&r.view.label),
        JoinRefusal::NoQueue => refused(
            StatusCode::CONFLICT,
            "no_queue",
            "this sale has no waiting room",
        ),
        JoinRefusal::NotOpen(at) => refused(
            StatusCode::FORBIDDEN,
            "queue_not_open",
            format!(
                "the line opens at {}",
                flashsale_common::order::millis_to_rfc3339(at)
            ),
        ),
        JoinRefusal::Ended => refused(StatusCode::FORBIDDEN, "sale_ended", "the sale is over"),
        JoinRefusal::SoldOut => refused(StatusCode::CONFLICT, "sold_out", "the sale is sold out"),
        JoinRefusal::ChallengeSpent => refused(
            StatusCode::FORBIDDEN,
            "challenge_spent",
            "this challenge was used for a join already; ask for a new one",
        ),
    })?;
    if joined.new {
        s.metrics.queue_joins.inc();
    }
    let t = Ticket {
        s: r.view.label.clone(),
        a: joined.arrival,
        i: joined.ticket_id,
        j: joined.joined_ms,
        u: user,
    };
    let token = r.signer.sign(Kind::Ticket, &t);
    let view = stand(&s, r.view, r.signer, &t);
    let status = if joined.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Joined {
            ticket: token,
            view,
        }),
    )
        .into_response())
}

fn ticket_of(r: &Room<'_>, token: &str) -> Result<Ticket, ApiError> {
    let t: Ticket = r.signer.verify(Kind::Ticket, token).map_err(|_| {
        refused(
            StatusCode::FORBIDDEN,
            "ticket_invalid",
            "not a ticket of this sale's line",
        )
    })?;
    if t.s != r.view.label {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "ticket_invalid",
            "the ticket is another sale's",
        ));
    }
    Ok(t)
}

/// `GET /api/v1/sales/{namespace}/{name}/queue/{ticket}`: where the ticket
/// stands: its place, the waiters ahead, an estimated wait, and the state
/// (`waiting`, `admitted` with the pass, `sold_out`, `expired`, `ended`).
pub async fn standing(
    State(s): State<Arc<AppState>>,
    Path((ns, name, token)): Path<(String, String, String)>,
) -> Result<Json<WaiterView>, ApiError> {
    let r = room(&s, &ns, &name)?;
    let t = ticket_of(&r, &token)?;
    Ok(Json(stand(&s, r.view, r.signer, &t)))
}

/// `GET /api/v1/sales/{namespace}/{name}/queue/{ticket}/events`: the same
/// as a stream, pushed when it changes (at most every 250 ms).
pub async fn standing_events(
    State(s): State<Arc<AppState>>,
    Path((ns, name, token)): Path<(String, String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let r = room(&s, &ns, &name)?;
    let t = ticket_of(&r, &token)?;
    let slot = Arc::clone(&s.streams).try_acquire_owned().map_err(|_| {
        s.metrics.refused_streams.inc();
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this gateway serves as many streams as it may; poll …/queue/{ticket} instead",
        )
        .retry_after(5)
    })?;
    let follow = Follow {
        s: Arc::clone(&s),
        view: Arc::clone(r.view),
        signer: r.signer.clone(),
        ticket: t,
        line: r.view.subscribe_line(),
        stock: r.view.subscribe(),
        last: None,
        _slot: slot,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let shutdown = f.s.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => None,
            ev = f.next() => ev.map(|e| (Ok(e), f)),
        }
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

struct Follow {
    s: Arc<AppState>,
    view: Arc<SaleView>,
    signer: Signer,
    ticket: Ticket,
    line: tokio::sync::watch::Receiver<Option<Arc<LineView>>>,
    stock: tokio::sync::watch::Receiver<Option<Arc<crate::sales::LivePush>>>,
    last: Option<WaiterView>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Follow {
    /// The next change of where the ticket stands.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let now = stand(&self.s, &self.view, &self.signer, &self.ticket);
            if self.last.as_ref() != Some(&now) {
                if now.state == "admitted"
                    && self.last.as_ref().is_none_or(|l| l.state != "admitted")
                {
                    let waited = (now_ms() - self.ticket.j).max(0);
                    self.s.metrics.queue_wait.observe(waited as f64 / 1000.0);
                }
                let data = serde_json::to_string(&now).unwrap_or_default();
                self.last = Some(now);
                return Some(Event::default().event("queue").data(data));
            }
            tokio::time::sleep(crate::live::MIN_GAP).await;
            tokio::select! {
                r = self.line.changed() => r.ok()?,
                r = self.stock.changed() => r.ok()?,
            }
        }
    }
}
