//! The one Redis round trip of a purchase attempt: the reservation script.

use crate::sales::SaleView;
use flashsale_common::SaleRef;
use flashsale_store::keys::SaleKeys;
use flashsale_store::redisconn::RedisConn;
use flashsale_store::scripts;
use redis::Value;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

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
    /// The sale has a waiting room and the attempt carried no pass.
    NoPass,
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
    /// Reserved (or an earlier reservation still unconfirmed), but fewer
    /// Redis replicas than required acknowledged it in time: not published
    /// now; the outbox sweeper delivers it later if the primary keeps it.
    Unreplicated {
        record: String,
    },
}

/// How many Redis replicas must acknowledge a reservation before its order
/// is published, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    pub replicas: u32,
    pub timeout_ms: u64,
}

impl Reservation {
    /// Whether the order is to be published now.
    fn to_publish(&self) -> bool {
        matches!(
            self,
            Reservation::Accepted { .. } | Reservation::Replay { pending: true, .. }
        )
    }
}

/// With `acks`, waits once for the replicas to hold every reservation of
/// `replies` (a `WAIT` on the connection the script ran on); when fewer
/// acknowledge in time, the orders to publish become
/// [`Reservation::Unreplicated`]. A failover then cannot lose a
/// reservation whose order went out.
async fn replicated(
    conn: &mut RedisConn,
    keys: &SaleKeys,
    acks: Option<ReplicaAcks>,
    replies: Vec<Reservation>,
) -> Vec<Reservation> {
    if !replies.iter().any(Reservation::to_publish)
        || replicas_hold_writes(conn, keys, acks, "reservations").await
    {
        return replies;
    }
    replies
        .into_iter()
        .map(|r| match r {
            Reservation::Accepted { record }
            | Reservation::Replay {
                record,
                pending: true,
            } => Reservation::Unreplicated { record },
            other => other,
        })
        .collect()
}

/// Whether enough replicas (as `acks` asks; none asked: true at once)
/// acknowledged every write made so far on `conn`, the connection that
/// wrote `keys`' sale. `what` names those writes in the log.
pub(crate) async fn replicas_hold_writes(
    conn: &mut RedisConn,
    keys: &SaleKeys,
    acks: Option<ReplicaAcks>,
    what: &str,
) -> bool {
    let Some(acks) = acks.filter(|a| a.replicas > 0) else {
        return true;
    };
    match conn
        .wait_replicas(&keys.sale(), acks.replicas, acks.timeout_ms)
        .await
    {
        Ok(n) if n >= i64::from(acks.replicas) => true,
        Ok(n) => {
            tracing::warn!(
                acknowledged = n,
                required = acks.replicas,
                timeout_ms = acks.timeout_ms,
                "too few Redis replicas acknowledged the {what}; their orders wait in the outbox"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "waiting for Redis replicas failed; the orders of the {what} wait in the outbox");
            false
        }
    }
}

pub struct Attempt<'a> {
    pub order_id: &'a str,
    pub user: &'a str,
    pub quantity: u32,
    pub idempotency_key: Option<&'a str>,
    /// Identity of the client for the rate limit.
    pub client: &'a str,
    /// The place of the buyer's admission pass, for a sale with a waiting
    /// room (checked by the gateway; the script refuses an attempt without
    /// one and marks the pass used).
    pub place: Option<u64>,
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

/// Decides one attempt in one script call.
pub async fn reserve(
    conn: &mut RedisConn,
    view: &SaleView,
    a: &Attempt<'_>,
) -> redis::RedisResult<Reservation> {
    let replies = reserve_batch(conn, &view.keys, &view.sale, std::slice::from_ref(a)).await?;
    let mut replies = replicated(conn, &view.keys, view.replica_acks, replies).await;
    replies.pop().ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the reservation script gave no reply",
        ))
    })
}

/// Decides several attempts of one sale in one script call, in order, each
/// exactly as if it had come alone. One reply per attempt.
pub async fn reserve_batch(
    conn: &mut RedisConn,
    keys: &SaleKeys,
    sale: &SaleRef,
    attempts: &[Attempt<'_>],
) -> redis::RedisResult<Vec<Reservation>> {
    let mut call = scripts::RESERVE.prepare_invoke();
    call.key(keys.sale())
        .key(keys.users())
        .key(keys.idem())
        .key(keys.orders())
        .key(keys.outbox())
        .key(keys.holds())
        .key(keys.used())
        .arg(&sale.namespace)
        .arg(&sale.name);
    for a in attempts {
        call.key(keys.rate_limit(a.client))
            .arg(a.order_id)
            .arg(a.user)
            .arg(a.quantity)
            .arg(a.idempotency_key.unwrap_or(""))
            .arg(format!("{}\n{}", a.user, a.quantity))
            .arg(a.place.map_or_else(String::new, |p| p.to_string()));
    }
    let replies: Vec<Vec<Value>> = call.invoke_async(conn).await?;
    if replies.len() != attempts.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the reservation script gave the wrong number of replies",
            format!("{} for {} attempts", replies.len(), attempts.len()),
        )));
    }
    replies.into_iter().map(parse).collect()
}

fn parse(reply: Vec<Value>) -> redis::RedisResult<Reservation> {
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
        "no_pass" => Reservation::NoPass,
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

/// One attempt waiting for its batch.
struct Job {
    order_id: String,
    user: String,
    quantity: u32,
    idempotency_key: Option<String>,
    client: String,
    place: Option<u64>,
    reply: oneshot::Sender<redis::RedisResult<Reservation>>,
}

/// Group commit of the reservations of one sale. The attempts that arrive
/// while the sale's earlier script calls run are decided together in the
/// next call, in arrival order; an attempt that arrives when a call slot is
/// free goes at once. Under a herd Redis runs one call per batch instead of
/// one per buyer, which raises what a single Redis shard (one sale) can take.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the gateway is stopping; the reservation was not attempted",
    ))
}

impl Batcher {
    /// Starts the batching task: at most `max_batch` attempts per call and
    /// `calls` calls in flight. The task ends when the batcher is dropped.
    pub fn start(
        redis: RedisConn,
        keys: SaleKeys,
        sale: SaleRef,
        acks: Option<ReplicaAcks>,
        max_batch: usize,
        calls: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_batches(
            redis,
            Arc::new((keys, sale, acks)),
            rx,
            max_batch.max(1),
            calls.max(1),
        ));
        Self { tx }
    }

    /// Decides one attempt in the sale's next batch.
    pub async fn reserve(&self, a: &Attempt<'_>) -> redis::RedisResult<Reservation> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                order_id: a.order_id.to_owned(),
                user: a.user.to_owned(),
                quantity: a.quantity,
                idempotency_key: a.idempotency_key.map(str::to_owned),
                client: a.client.to_owned(),
                place: a.place,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run_batches(
    redis: RedisConn,
    sale: Arc<(SaleKeys, SaleRef, Option<ReplicaAcks>)>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    calls: usize,
) {
    let slots = Arc::new(Semaphore::new(calls));
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        // A free call slot first: while every slot is busy, attempts queue
        // up and then go together.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut jobs, max_batch).await == 0 {
            return;
        }
        let batch = std::mem::replace(&mut jobs, Vec::with_capacity(max_batch));
        let mut conn = redis.clone();
        let sale = Arc::clone(&sale);
        tokio::spawn(async move {
            let result = {
                let attempts: Vec<Attempt<'_>> = batch
                    .iter()
                    .map(|j| Attempt {
                        order_id: &j.order_id,
                        user: &j.user,
                        quantity: j.quantity,
                        idempotency_key: j.idempotency_key.as_deref(),
                        client: &j.client,
                        place: j.place,
                    })
                    .collect();
                match reserve_batch(&mut conn, &sale.0, &sale.1, &attempts).await {
                    Ok(replies) => Ok(replicated(&mut conn, &sale.0, sale.2, replies).await),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(replies) => {
                    for (job, reply) in batch.into_iter().zip(replies) {
                        let _ = job.reply.send(Ok(reply));
                    }
                }
                Err(e) => {
                    // Each attempt gets the error itself, so that its
                    // answer can tell a full Redis from one that is gone.
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
