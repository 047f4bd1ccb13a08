//! What one gateway process knows of each sale it serves, kept fresh by one
//! Redis pub/sub subscription per process plus a once-a-second poll.
//!
//! The sold-out fast path lives here: once the reservation script reports a
//! sale sold out, the gateway takes a snapshot of the idempotency keys that
//! were accepted and answers every other attempt with `409` from memory,
//! without a Redis round trip. Any later change of the sale (restock,
//! expired hold, new window) bumps its sequence number, which clears the flag.

use crate::admission::LineView;
use crate::reserve::{Attempt, Batcher, ReplicaAcks, Reservation, reserve};
use flashsale_api::sale::AdmissionMode;
use flashsale_api::sale::Phase;
use flashsale_common::SaleRef;
use flashsale_common::amqp;
use flashsale_store::keys::SaleKeys;
use flashsale_store::queue;
use flashsale_store::redisconn::RedisConn;
use flashsale_store::stock::{AdmissionConfig, StockSnapshot};
use flashsale_store::{scripts, stock};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Most idempotency keys kept in memory for a sold-out sale. Above this,
/// requests carrying a key still go to Redis; keyless ones never do.
pub const MAX_SOLD_OUT_KEYS: usize = 200_000;

/// The stock and phase a buyer sees; pushed to live-stock subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStock {
    pub stock: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub sold: i64,
    pub phase: Phase,
    pub seq: i64,
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
    /// Redis server time of the snapshot, for client-side countdowns.
    pub now_ms: i64,
}

/// A change as pushed to live-stock clients: rendered once, shared by all.
#[derive(Debug)]
pub struct LivePush {
    pub stock: LiveStock,
    /// The SSE `data:` payload.
    pub json: String,
}

impl LivePush {
    fn new(stock: LiveStock) -> Self {
        let ts = flashsale_common::order::millis_to_rfc3339;
        let json = serde_json::json!({
            "phase": stock.phase.as_str(),
            "stock": stock.stock,
            "remaining": stock.remaining,
            "reserved": stock.reserved,
            "sold": stock.sold,
            "opensAt": ts(stock.opens_at_ms),
            "closesAt": ts(stock.closes_at_ms),
            "serverTime": ts(stock.now_ms),
        })
        .to_string();
        Self { stock, json }
    }
}

impl From<&StockSnapshot> for LiveStock {
    fn from(s: &StockSnapshot) -> Self {
        Self {
            stock: s.stock,
            remaining: s.remaining,
            reserved: s.reserved,
            sold: s.sold,
            phase: s.phase(),
            seq: s.seq,
            opens_at_ms: s.start_ms,
            closes_at_ms: s.end_ms,
            now_ms: s.now_ms,
        }
    }
}

pub struct SaleView {
    pub sale: SaleRef,
    pub label: String,
    pub keys: SaleKeys,
    pub queue: String,
    sold_out: AtomicBool,
    /// Sequence number of the sale when the sold-out snapshot was taken.
    sold_out_seq: AtomicI64,
    /// Accepted idempotency keys of a sold-out sale; None: not known.
    sold_out_keys: RwLock<Option<Arc<HashSet<String>>>>,
    refreshing: AtomicBool,
    live: watch::Sender<Option<Arc<LivePush>>>,
    /// Group commit of the sale's reservations, once started.
    batcher: std::sync::OnceLock<Batcher>,
    /// Redis replicas that must hold a reservation before its order goes out.
    pub replica_acks: Option<ReplicaAcks>,
    /// The waiting room's settings, from the last snapshot; None before one.
    admission: RwLock<Option<AdmissionConfig>>,
    /// Where the line stands, from the last admission step.
    line: watch::Sender<Option<Arc<LineView>>>,
}

impl SaleView {
    pub fn new(sale: SaleRef) -> Self {
        Self {
            label: sale.to_string(),
            keys: SaleKeys::new(&sale),
            queue: amqp::orders_queue(&sale),
            sale,
            sold_out: AtomicBool::new(false),
            sold_out_seq: AtomicI64::new(-1),
            sold_out_keys: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            live: watch::channel(None).0,
            batcher: std::sync::OnceLock::new(),
            replica_acks: None,
            admission: RwLock::new(None),
            line: watch::channel(None).0,
        }
    }

    /// The sale's waiting room settings; None until the sale was read.
    pub fn admission(&self) -> Option<AdmissionConfig> {
        self.admission
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the line stands; None before the first admission step.
    pub fn line(&self) -> Option<Arc<LineView>> {
        self.line.borrow().clone()
    }

    pub fn subscribe_line(&self) -> watch::Receiver<Option<Arc<LineView>>> {
        self.line.subscribe()
    }

    /// The latest stock as buyers see it; None before the sale was read.
    pub fn live_stock(&self) -> Option<LiveStock> {
        self.live.borrow().as_ref().map(|p| p.stock.clone())
    }

    /// One admission step of the sale's line, and the draw of a lottery
    /// once it is made.
    async fn admit(&self, conn: &mut RedisConn) -> redis::RedisResult<()> {
        let Some(cfg) = self.admission().filter(|a| a.mode != AdmissionMode::Open) else {
            return Ok(());
        };
        let Some(frontier) = queue::admit(conn, &self.sale).await? else {
            return Ok(());
        };
        let lottery = cfg.mode == AdmissionMode::Lottery;
        let mut positions = self.line().and_then(|l| l.positions.clone());
        if lottery && positions.is_none() && frontier.drawn.is_some() {
            let order = queue::drawn(conn, &self.sale).await?;
            positions = Some(Arc::new(queue::positions(&order)));
        }
        let line = LineView {
            frontier,
            positions,
            lottery,
            per_second: cfg.per_second,
            pass_ms: cfg.pass_ms,
        };
        self.line.send_replace(Some(Arc::new(line)));
        Ok(())
    }

    /// The same, waiting for `acks` before each order goes out.
    pub fn with_replica_acks(mut self, acks: Option<ReplicaAcks>) -> Self {
        self.replica_acks = acks;
        self
    }

    /// Decides the sale's reservations in batches from now on: at most
    /// `max_batch` attempts per script call, `calls` calls in flight.
    pub fn start_batching(&self, redis: RedisConn, max_batch: usize, calls: usize) {
        self.batcher.get_or_init(|| {
            Batcher::start(
                redis,
                self.keys.clone(),
                self.sale.clone(),
                self.replica_acks,
                max_batch,
                calls,
            )
        });
    }

    /// Decides one purchase attempt: in the sale's next batch when batching
    /// runs, else in a script call of its own.
    pub async fn reserve(
        &self,
        redis: &RedisConn,
        a: &Attempt<'_>,
    ) -> redis::RedisResult<Reservation> {
        match self.batcher.get() {
            Some(b) => b.reserve(a).await,
            None => reserve(&mut redis.clone(), self, a).await,
        }
    }

    /// True when this attempt can be refused as sold out without Redis.
    pub fn refuse_from_memory(&self, idempotency_key: Option<&str>) -> bool {
        if !self.sold_out.load(Ordering::Acquire) {
            return false;
        }
        match idempotency_key {
            None => true,
            Some(k) => match self.sold_out_keys.read() {
                Ok(guard) => guard.as_ref().is_some_and(|keys| !keys.contains(k)),
                Err(_) => false,
            },
        }
    }

    /// A change of the sale was seen (pub/sub or poll).
    pub fn on_change(&self, seq: i64, remaining: i64) {
        if self.sold_out.load(Ordering::Acquire)
            && (remaining > 0 || seq != self.sold_out_seq.load(Ordering::Acquire))
        {
            self.sold_out.store(false, Ordering::Release);
            tracing::info!(sale = %self.label, seq, remaining, "sale has stock again");
        }
    }

    pub fn on_snapshot(&self, snap: &StockSnapshot) {
        self.on_change(snap.seq, snap.remaining);
        *self
            .admission
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snap.admission.clone());
        let live = LiveStock::from(snap);
        self.live.send_if_modified(|cur| {
            let same = cur.as_ref().is_some_and(|c| {
                LiveStock {
                    now_ms: live.now_ms,
                    ..c.stock.clone()
                } == live
            });
            if same {
                false
            } else {
                *cur = Some(Arc::new(LivePush::new(live)));
                true
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<LivePush>>> {
        self.live.subscribe()
    }

    /// The reservation script said the sale has nothing left: take the
    /// snapshot that lets this process answer from memory (once at a time).
    pub fn observed_sold_out(self: &Arc<Self>, redis: &RedisConn) {
        if self.sold_out.load(Ordering::Acquire) || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let view = Arc::clone(self);
        let mut conn = redis.clone();
        tokio::spawn(async move {
            let res: redis::RedisResult<(i64, i64, i64, Vec<String>)> = scripts::SOLD_OUT_SNAPSHOT
                .key(view.keys.sale())
                .key(view.keys.idem())
                .arg(MAX_SOLD_OUT_KEYS)
                .invoke_async(&mut conn)
                .await;
            match res {
                Ok((0, seq, complete, keys)) => {
                    let keys =
                        (complete == 1).then(|| Arc::new(keys.into_iter().collect::<HashSet<_>>()));
                    if let Ok(mut guard) = view.sold_out_keys.write() {
                        *guard = keys;
                    }
                    view.sold_out_seq.store(seq, Ordering::Release);
                    view.sold_out.store(true, Ordering::Release);
                    tracing::info!(sale = %view.label, seq, "sold out: answering from memory");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sale = %view.label, error = %e, "sold-out snapshot failed")
                }
            }
            view.refreshing.store(false, Ordering::Release);
        });
    }
}

/// The sales a gateway serves, by `namespace/name`.
pub struct Sales {
    /// namespace → name → view, so a lookup by `&str` allocates nothing.
    by_ref: HashMap<String, HashMap<String, Arc<SaleView>>>,
    by_channel: HashMap<String, Arc<SaleView>>,
}

impl Sales {
    pub fn new(sales: &[SaleRef], acks: Option<ReplicaAcks>) -> Self {
        let mut by_ref = HashMap::new();
        let mut by_channel = HashMap::new();
        for s in sales {
            let view = Arc::new(SaleView::new(s.clone()).with_replica_acks(acks));
            by_channel.insert(view.keys.events(), Arc::clone(&view));
            by_ref
                .entry(s.namespace.clone())
                .or_insert_with(HashMap::new)
                .insert(s.name.clone(), view);
        }
        Self { by_ref, by_channel }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<SaleView>> {
        self.by_ref.get(namespace)?.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<SaleView>> {
        self.by_ref.values().flat_map(HashMap::values)
    }

    /// Follows the sales' pub/sub channels until cancelled, reconnecting
    /// with a short backoff.
    pub async fn follow_events(self: Arc<Self>, redis: RedisConn, cancel: CancellationToken) {
        let channels: Vec<String> = self.by_channel.keys().cloned().collect();
        loop {
            let run = async {
                let mut pubsub = redis.pubsub().await?;
                for c in &channels {
                    pubsub.subscribe(c).await?;
                }
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let (Some(view), Some(event)) = (
                        self.by_channel.get(msg.get_channel_name()),
                        stock::StockEvent::parse(&payload),
                    ) {
                        view.on_change(event.seq, event.remaining);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                res = run => {
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "stock event subscription lost; reconnecting");
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Runs an admission step of every sale with a waiting room at `every`
    /// (each gateway does: the script makes concurrent steps agree).
    pub async fn admit(
        self: Arc<Self>,
        redis: RedisConn,
        every: Duration,
        metrics: Arc<crate::metrics::GatewayMetrics>,
        cancel: CancellationToken,
    ) {
        let mut tick = Ticker::new(every, true);
        while tick.next(&cancel).await {
            let (mut waiting, mut admitted, mut abandoned) = (0, 0, 0);
            for view in self.all() {
                let mut conn = redis.clone();
                if let Err(e) = view.admit(&mut conn).await {
                    tracing::debug!(sale = %view.label, error = %e, "admission step failed");
                }
                if let Some(line) = view.line() {
                    waiting += line.frontier.waiting();
                    admitted += line.frontier.frontier;
                    abandoned += line.frontier.expired;
                }
            }
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            metrics.queue_waiting.set(gauge(waiting));
            metrics.queue_admitted.set(gauge(admitted));
            metrics.queue_abandoned.set(gauge(abandoned));
        }
    }

    /// Reads every sale's counters at `every`, the backstop for missed
    /// events and the clock for window boundaries.
    pub async fn poll(
        self: Arc<Self>,
        redis: RedisConn,
        every: Duration,
        cancel: CancellationToken,
    ) {
        let mut tick = Ticker::new(every, true);
        while tick.next(&cancel).await {
            for view in self.all() {
                let mut conn = redis.clone();
                match stock::read(&mut conn, &view.sale).await {
                    Ok(Some(snap)) => view.on_snapshot(&snap),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(sale = %view.label, error = %e, "stock poll failed"),
                }
            }
        }
    }
}

/// A periodic tick that stops when cancelled; missed ticks are delayed, not
/// bunched up.
pub struct Ticker(tokio::time::Interval);

impl Ticker {
    /// `now`: fire the first tick at once, else after one period.
    pub fn new(every: Duration, now: bool) -> Self {
        let start = if now {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + every
        };
        let mut i = tokio::time::interval_at(start, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(i)
    }

    /// Waits for the next tick; false once `cancel` fired.
    pub async fn next(&mut self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = cancel.cancelled() => false,
            _ = self.0.tick() => true,
        }
    }
}
