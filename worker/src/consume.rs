//! Consuming one sale's orders queue: manual acks, a prefetch window, and
//! batches of up to N messages or T milliseconds, whichever comes first.
//! A batch is acknowledged only after its transaction committed; a message
//! that can never be stored goes to the dead-letter queue with its reason.

use crate::metrics::WorkerMetrics;
use crate::store;
use flashsale_common::SaleRef;
use flashsale_common::amqp::{self, QueueType, REASON_HEADER};
use flashsale_common::order::OrderRecord;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, Consumer};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// First wait before storing a batch again after a failure; it doubles up
/// to [`STORE_RETRY_MAX`].
const STORE_RETRY_FIRST: Duration = Duration::from_millis(200);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    pub amqp_url: String,
    pub tls: Arc<flashsale_common::tls::Tls>,
    pub queue_type: QueueType,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub prefetch: u16,
    /// A message handed out this many times before without being stored
    /// goes to the dead-letter queue instead of being tried again; 0: never.
    pub dead_letter_after: u64,
    /// For failure tests: after this many committed batches, drop the
    /// connection without acknowledging the last one, as a crash would.
    pub crash_after_batches: Option<u64>,
}

pub struct SaleConsumer {
    pub sale: SaleRef,
    pub settings: ConsumeSettings,
    pub pool: PgPool,
    pub metrics: Arc<WorkerMetrics>,
    pub connected: Arc<AtomicBool>,
    pub committed_batches: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker ended the consumer")]
    StreamEnded,
    #[error("dead-letter publish not confirmed")]
    DeadLetterUnconfirmed,
    #[error("simulated crash after a committed batch")]
    SimulatedCrash,
}

struct Session {
    conn: Connection,
    channel: Channel,
    dead: Channel,
    consumer: Consumer,
}

impl SaleConsumer {
    /// Consumes until cancelled, reconnecting after failures. Returns an
    /// error only for a simulated crash.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), ConsumeError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match self.session(&cancel).await {
                Ok(()) => return Ok(()),
                Err(ConsumeError::SimulatedCrash) => return Err(ConsumeError::SimulatedCrash),
                Err(e) => {
                    self.connected.store(false, Ordering::Release);
                    tracing::warn!(sale = %self.sale, error = %e, ?backoff, "consumer failed; reconnecting");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn open(&self) -> Result<Session, ConsumeError> {
        let conn = amqp::connect(
            &self.settings.amqp_url,
            "flashsale-worker",
            &self.settings.tls,
        )
        .await?;
        let channel = conn.create_channel().await?;
        amqp::declare(&channel, &self.sale, self.settings.queue_type).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let dead = conn.create_channel().await?;
        dead.confirm_select(ConfirmSelectOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                amqp::orders_queue(&self.sale).into(),
                format!("flashsale-worker-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Session {
            conn,
            channel,
            dead,
            consumer,
        })
    }

    async fn session(&self, cancel: &CancellationToken) -> Result<(), ConsumeError> {
        let mut s = self.open().await?;
        self.connected.store(true, Ordering::Release);
        tracing::info!(sale = %self.sale, queue = %amqp::orders_queue(&self.sale), "consuming");
        let result = self.consume(&mut s, cancel).await;
        self.connected.store(false, Ordering::Release);
        match &result {
            Err(ConsumeError::SimulatedCrash) => {
                // Drop the connection with the batch unacknowledged.
                let _ = tokio::time::timeout(
                    amqp::CLOSE_TIMEOUT,
                    s.conn.close(320, "simulated crash".into()),
                )
                .await;
            }
            _ => {
                amqp::close_quietly(&s.conn, "worker stopping").await;
            }
        }
        result
    }

    async fn consume(
        &self,
        s: &mut Session,
        cancel: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        loop {
            // `biased`: once stopping, no further delivery is taken, even
            // when some are already buffered (a select picks among ready
            // branches at random otherwise).
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                next = s.consumer.next() => match next {
                    Some(d) => d?,
                    None => return Err(ConsumeError::StreamEnded),
                },
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.settings.batch_timeout;
            while batch.len() < self.settings.batch_size {
                tokio::select! {
                    biased;
                    // Stopping: store what is in hand now rather than wait
                    // out the batch timeout (and maybe the grace period).
                    () = cancel.cancelled() => break,
                    next = s.consumer.next() => match next {
                        Some(d) => batch.push(d?),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.handle_batch(s, batch, cancel).await?;
        }
    }

    async fn handle_batch(
        &self,
        s: &Session,
        batch: Vec<Delivery>,
        cancel: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let Some(last_tag) = batch.iter().map(|d| d.delivery_tag).max() else {
            return Ok(());
        };
        let mut orders = Vec::with_capacity(batch.len());
        // The delivery each order came in, by the order's index.
        let mut sources = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for d in &batch {
            if d.redelivered {
                self.metrics.redeliveries.inc();
            }
            let deliveries = amqp::delivery_count(&d.properties);
            if self.settings.dead_letter_after > 0 && deliveries >= self.settings.dead_letter_after
            {
                // Every worker that took it died or lost its connection
                // before storing it (perhaps because of it). One more
                // return brings it nearer the queue's delivery limit, where
                // RabbitMQ 4 drops it: kept in the dead-letter queue
                // instead, for a redrive.
                poison.push((
                    d,
                    format!(
                        "handed out {deliveries} times before without being stored (workers stopped or \
                         lost their connection while holding it); kept here before the queue's \
                         delivery limit drops it; redrive it once the workers are stable"
                    ),
                ));
                continue;
            }
            match OrderRecord::from_message(&d.data) {
                Ok(rec) if rec.namespace == self.sale.namespace && rec.name == self.sale.name => {
                    orders.push(rec);
                    sources.push(d);
                }
                Ok(rec) => poison.push((
                    d,
                    format!(
                        "order for sale {}/{} on the queue of {}",
                        rec.namespace, rec.name, self.sale
                    ),
                )),
                Err(reason) => poison.push((d, reason.to_string())),
            }
        }
        self.metrics.batch_size.observe(batch.len() as f64);

        // A failure to store keeps the batch in hand and tries again,
        // rather than return it to the queue: RabbitMQ 4's quorum queues
        // drop a message returned 20 times, which a PostgreSQL outage of a
        // few seconds would reach.
        let mut backoff = STORE_RETRY_FIRST;
        loop {
            let started = Instant::now();
            let attempt = match store::insert_orders(&self.pool, &orders).await {
                Ok(inserted) => Ok((inserted, Vec::new())),
                Err(e) if store::refused(&e) => {
                    tracing::warn!(sale = %self.sale, error = %e, orders = orders.len(), "PostgreSQL refused the batch; storing its orders one by one");
                    self.store_one_by_one(&orders, &sources).await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok((inserted, refused)) => {
                    self.metrics
                        .insert_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.orders_stored.inc_by(inserted);
                    self.metrics.duplicates.inc_by(
                        (orders.len() as u64).saturating_sub(inserted + refused.len() as u64),
                    );
                    poison.extend(refused);
                    break;
                }
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::warn!(sale = %self.sale, error = %e, messages = batch.len(), retry_in = ?backoff, "batch not stored; keeping it and trying again");
                    tokio::select! {
                        biased;
                        // Stopping: the batch is not acknowledged, and
                        // RabbitMQ hands it to another worker.
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(STORE_RETRY_MAX);
                }
            }
        }

        for (d, reason) in &poison {
            self.dead_letter(&s.dead, d, reason).await?;
        }

        let n = self.committed_batches.fetch_add(1, Ordering::AcqRel) + 1;
        if self.settings.crash_after_batches == Some(n) {
            return Err(ConsumeError::SimulatedCrash);
        }
        s.channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
        self.metrics.batches.inc();
        tracing::debug!(sale = %self.sale, messages = batch.len(), orders = orders.len(), dead = poison.len(), "batch committed");
        Ok(())
    }

    /// Stores each order in a transaction of its own, so that an order
    /// PostgreSQL refuses (a value its columns cannot hold, a constraint
    /// added to the ledger) goes to the dead-letter queue with the
    /// database's reason instead of failing its batch at every attempt.
    /// A failure that is not a refusal fails the whole attempt, which the
    /// caller repeats; what was stored stays stored, and storing it again
    /// changes nothing. Returns the rows stored and the refused orders with
    /// their reasons.
    async fn store_one_by_one<'a>(
        &self,
        orders: &[OrderRecord],
        sources: &[&'a Delivery],
    ) -> sqlx::Result<(u64, Vec<(&'a Delivery, String)>)> {
        let mut inserted = 0;
        let mut refused = Vec::new();
        for (order, delivery) in orders.iter().zip(sources) {
            match store::insert_orders(&self.pool, std::slice::from_ref(order)).await {
                Ok(n) => inserted += n,
                Err(e) if store::refused(&e) => {
                    refused.push((*delivery, format!("PostgreSQL refused the order: {e}")));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((inserted, refused))
    }

    async fn dead_letter(
        &self,
        dead: &Channel,
        d: &Delivery,
        reason: &str,
    ) -> Result<(), ConsumeError> {
        tracing::warn!(sale = %self.sale, reason, "moving a message to the dead-letter queue");
        let mut headers = d
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        // The orders queue's count; the dead-letter queue keeps its own.
        headers.remove(amqp::DELIVERY_COUNT_HEADER);
        let mut headers = FieldTable::from(headers);
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(
            ShortString::from(amqp::ORIGINAL_QUEUE_HEADER),
            AMQPValue::LongString(amqp::orders_queue(&self.sale).into()),
        );
        // The message as it came (content type, message id, type), so that
        // a redrive puts back what the gateway published.
        let props = d
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm =
            amqp::publish_confirmed(dead, &amqp::dead_letter_queue(&self.sale), &d.data, props)
                .await?;
        match confirm {
            Confirmation::Ack(None) => {
                self.metrics.dead_letters.inc();
                Ok(())
            }
            _ => Err(ConsumeError::DeadLetterUnconfirmed),
        }
    }
}
