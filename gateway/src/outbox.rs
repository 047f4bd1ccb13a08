//! The Redis outbox of accepted orders.
//!
//! The reservation script writes each order into its sale's outbox in the
//! same atomic step that takes the stock, as the member `<order id>:<rev>`.
//! After RabbitMQ confirms the message, the acker removes exactly that
//! revision with a plain `ZREM` (batched, off the request path); a newer
//! revision written since (a hold confirmed or expired) is another member
//! and stays until it is confirmed in turn. An
//! entry that stays longer than the lease — the gateway crashed, RabbitMQ was
//! down, the confirm timed out — is leased by a sweeper and published again.
//! Workers insert with `ON CONFLICT DO NOTHING`, so a second copy is harmless.

use crate::metrics::GatewayMetrics;
use crate::publish::Publisher;
use crate::sales::{SaleView, Sales, Ticker};
use flashsale_common::order::{OrderRecord, outbox_member};
use flashsale_store::redisconn::RedisConn;
use flashsale_store::scripts;
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the acker waits to gather more confirmed orders into one pipeline.
const ACK_LINGER: Duration = Duration::from_millis(5);
/// Outbox entries leased and published at once by the sweeper.
pub const SWEEP_BATCH: usize = 200;
/// Batches one sweep of a sale publishes at most; a larger backlog goes on
/// at the next tick, so that a stop never waits on a long sweep.
pub const SWEEP_BATCHES_PER_PASS: usize = 50;

/// One confirmed publish: the sale's outbox and the confirmed member.
struct Ack {
    outbox: String,
    member: String,
}

/// Removes confirmed orders from the outbox in batches.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Ack>,
}

impl Acker {
    /// Starts the acking task; after `stop` it writes what is queued and ends.
    pub fn start(
        redis: RedisConn,
        metrics: Arc<GatewayMetrics>,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_acker(redis, metrics, rx, stop));
        (Self { tx }, task)
    }

    /// RabbitMQ confirmed revision `rev` of the order.
    pub fn confirmed(&self, view: &SaleView, order_id: &str, rev: u32) {
        let _ = self.tx.send(Ack {
            outbox: view.keys.outbox(),
            member: outbox_member(order_id, rev),
        });
    }
}

async fn run_acker(
    redis: RedisConn,
    metrics: Arc<GatewayMetrics>,
    mut rx: mpsc::UnboundedReceiver<Ack>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(512);
    loop {
        let stopping = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 512) => n == 0,
            () = stop.cancelled() => true,
        };
        if !stopping && batch.len() < 512 {
            // Linger briefly so that one pipeline carries many acks.
            tokio::select! {
                () = tokio::time::sleep(ACK_LINGER) => {}
                () = stop.cancelled() => {}
            }
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        if stopping {
            while let Ok(item) = rx.try_recv() {
                batch.push(item);
            }
            if batch.is_empty() {
                return;
            }
        }
        // One ZREM per sale.
        let mut by_sale: std::collections::HashMap<&str, Vec<&str>> =
            std::collections::HashMap::new();
        for a in &batch {
            by_sale
                .entry(a.outbox.as_str())
                .or_default()
                .push(a.member.as_str());
        }
        let mut attempt = 0u32;
        loop {
            // Concurrent ZREMs, not one pipeline: each sale's outbox may
            // live on another node of a Redis Cluster.
            let acks = by_sale.iter().map(|(outbox, members)| {
                let mut conn = redis.clone();
                async move { conn.zrem::<_, _, ()>(*outbox, members).await }
            });
            match futures::future::try_join_all(acks).await.map(drop) {
                Ok(()) => {
                    metrics.outbox_acked.inc_by(batch.len() as u64);
                    break;
                }
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "outbox ack failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => {
                    // The sweeper publishes these again; workers de-duplicate.
                    tracing::warn!(error = %e, orders = batch.len(), "outbox ack given up");
                    break;
                }
            }
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

/// Publishes again what stayed in the outbox longer than `lease`.
pub struct Sweeper {
    pub sales: Arc<Sales>,
    pub redis: RedisConn,
    pub publisher: Arc<Publisher>,
    pub acker: Acker,
    pub metrics: Arc<GatewayMetrics>,
    pub lease: Duration,
    pub every: Duration,
}

impl Sweeper {
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = Ticker::new(self.every, false);
        while tick.next(&cancel).await {
            for view in self.sales.all() {
                if let Err(e) = self.sweep(view).await {
                    tracing::warn!(sale = %view.label, error = %e, "outbox sweep failed");
                }
            }
        }
    }

    /// Expires every hold of the sale whose deadline passed and publishes
    /// the expired records; returns how many expired here. The due holds
    /// (up to 500 a call) are settled at once, each in its own atomic
    /// script, and their records published at once, so that a sale whose
    /// buyers mostly did not pay gets its units back at Redis's and the
    /// broker's pace rather than a round trip per hold.
    pub async fn expire_due(&self, view: &SaleView) -> anyhow::Result<usize> {
        let mut conn = self.redis.clone();
        let due: Vec<String> = scripts::DUE_HOLDS
            .key(view.keys.holds())
            .arg(500)
            .invoke_async(&mut conn)
            .await?;
        let settles = due.iter().map(|id| {
            let mut conn = self.redis.clone();
            async move {
                crate::holds::settle(&mut conn, view, id, crate::holds::Settle::Expire)
                    .await
                    .map(|(outcome, record)| (id, outcome, record))
            }
        });
        let mut expired = 0;
        let mut failure = None;
        let mut records = Vec::new();
        for settled in futures::future::join_all(settles).await {
            match settled {
                Ok((id, crate::holds::Settled::Expired, record)) => {
                    expired += 1;
                    self.metrics.holds_expired.inc();
                    if let Some(record) = record
                        && let Ok(parsed) = OrderRecord::from_message(record.as_bytes())
                    {
                        records.push((id, record, parsed.rev));
                    }
                }
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
        // Expiries a failover could still undo stay in the outbox; the
        // sweeper sends them once the replicas hold them.
        if !records.is_empty()
            && !crate::reserve::replicas_hold_writes(
                &mut conn,
                &view.keys,
                view.replica_acks,
                "expired holds",
            )
            .await
        {
            records.clear();
        }
        // A record that fails stays in the outbox; the sweeper delivers it.
        let publishes = records
            .iter()
            .map(|(id, record, rev)| self.send(view, id, *rev, record));
        futures::future::join_all(publishes).await;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(expired),
        }
    }

    /// Runs the hold expiry every `every` until cancelled.
    pub async fn run_expiry(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let mut tick = Ticker::new(every, true);
        while tick.next(&cancel).await {
            for view in self.sales.all() {
                if let Err(e) = self.expire_due(view).await {
                    tracing::warn!(sale = %view.label, error = %e, "hold expiry failed");
                }
            }
        }
    }

    /// One pass over one sale; returns how many orders were published again.
    ///
    /// Leases what waited past the lease in batches and publishes each
    /// batch at once (the confirms come back together), batch after batch
    /// while they come full, up to [`SWEEP_BATCHES_PER_PASS`]: after
    /// RabbitMQ was away during a sale, the backlog drains at the broker's
    /// pace instead of one confirm round trip per order. A failed publish
    /// ends the pass; its order stays in the outbox for the next one.
    pub async fn sweep(&self, view: &SaleView) -> anyhow::Result<usize> {
        let mut conn = self.redis.clone();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let mut published = 0;
        // Each record at most once per pass: with a short lease, a batch
        // published a moment ago may be due again before its acks landed.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..SWEEP_BATCHES_PER_PASS {
            let records: Vec<String> = scripts::SWEEP
                .key(view.keys.outbox())
                .key(view.keys.orders())
                .arg(lease_ms)
                .arg(SWEEP_BATCH)
                .invoke_async(&mut conn)
                .await?;
            let leased = records.len();
            let fresh: Vec<&String> = records
                .iter()
                .filter(|r| seen.insert((*r).clone()))
                .collect();
            let again = fresh.len() < leased;
            // An order left in the outbox because too few replicas held its
            // reservation goes out only once they do (the lease just written
            // comes after it on the replication stream): a failover may
            // still take the reservation away, and its unit would then be
            // sold twice.
            if !fresh.is_empty()
                && !crate::reserve::replicas_hold_writes(
                    &mut conn,
                    &view.keys,
                    view.replica_acks,
                    "outbox entries",
                )
                .await
            {
                break;
            }
            let sends = fresh.into_iter().map(|record| self.republish(view, record));
            let mut failure = None;
            for result in futures::future::join_all(sends).await {
                match result {
                    Some(Ok(())) => published += 1,
                    Some(Err(e)) => failure = Some(e),
                    None => {}
                }
            }
            if let Some(e) = failure {
                tracing::warn!(sale = %view.label, error = %e, "re-publish failed; will retry");
                break;
            }
            if leased < SWEEP_BATCH || again {
                break;
            }
        }
        if published > 0 {
            tracing::info!(sale = %view.label, published, "re-published orders from the outbox");
        }
        Ok(published)
    }

    /// Publishes one leased record again; `None` for a record that cannot
    /// be read, which stays in the outbox for inspection.
    async fn republish(
        &self,
        view: &SaleView,
        record: &str,
    ) -> Option<Result<(), crate::publish::PublishError>> {
        let Ok(parsed) = OrderRecord::from_message(record.as_bytes()) else {
            tracing::error!(sale = %view.label, "unreadable record in outbox; left for inspection");
            return None;
        };
        let sent = self
            .send(view, &parsed.order_id.to_string(), parsed.rev, record)
            .await;
        if sent.is_ok() {
            self.metrics.outbox_republished.inc();
        }
        Some(sent)
    }

    /// Publishes one record of the outbox; once RabbitMQ confirmed it, it
    /// leaves the outbox.
    async fn send(
        &self,
        view: &SaleView,
        id: &str,
        rev: u32,
        record: &str,
    ) -> Result<(), crate::publish::PublishError> {
        let sent = self
            .publisher
            .publish(&view.queue, id, record.as_bytes())
            .await;
        match &sent {
            Ok(()) => self.acker.confirmed(view, id, rev),
            Err(e) => self.metrics.publish_failed(e),
        }
        sent
    }
}
