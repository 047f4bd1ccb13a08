//! Publishing accepted orders to RabbitMQ with publisher confirms.
//!
//! A pool of channels on one connection, each in confirm mode; requests are
//! spread over the channels and many publishes are in flight at once, so the
//! broker acknowledges them in batches. A message counts as delivered only on
//! a positive confirm with no `basic.return` (the `mandatory` flag makes an
//! unroutable message come back instead of vanishing).

use flashsale_common::SaleRef;
use flashsale_common::amqp::{self, QueueType};
use lapin::Confirmation;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is not reachable: {0}")]
    Unreachable(String),
    #[error("no confirm from RabbitMQ within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ returned the message: no queue {0}")]
    Unroutable(String),
    #[error("publish failed: {0}")]
    Failed(String),
}

impl PublishError {
    /// Every value of [`PublishError::label`], so that the failure counters
    /// exist at zero from the start (`rate()` misses a counter's first
    /// increment when its series only appears with it).
    pub const LABELS: [&'static str; 5] =
        ["unreachable", "timeout", "nack", "unroutable", "failed"];

    pub fn label(&self) -> &'static str {
        match self {
            PublishError::Unreachable(_) => "unreachable",
            PublishError::Timeout(_) => "timeout",
            PublishError::Nacked => "nack",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Failed(_) => "failed",
        }
    }
}

struct Pool {
    conn: Connection,
    channels: Vec<Channel>,
}

impl Pool {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

/// Longest a whole connection attempt (connection, channels, queue
/// declarations) may take; the connection alone is bounded by
/// [`amqp::CONNECT_TIMEOUT`]. A broker that stops answering halfway would
/// otherwise hold the attempt, and every purchase behind it, forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// After a failed attempt, calls fail at once for this long instead of
/// each starting an attempt of its own.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What connection attempts need, shared with the task that runs each one.
struct Link {
    url: String,
    tls: Arc<flashsale_common::tls::Tls>,
    sales: Vec<SaleRef>,
    queue_type: QueueType,
    channels: usize,
    pool: RwLock<Option<Arc<Pool>>>,
    /// Held by the running attempt, so there is one at a time.
    connecting: Arc<Mutex<()>>,
    failed: std::sync::Mutex<Option<(Instant, PublishError)>>,
}

pub struct Publisher {
    link: Arc<Link>,
    timeout: Duration,
    next: AtomicUsize,
}

impl Publisher {
    pub fn new(
        url: String,
        tls: Arc<flashsale_common::tls::Tls>,
        sales: Vec<SaleRef>,
        queue_type: QueueType,
        channels: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            link: Arc::new(Link {
                url,
                tls,
                sales,
                queue_type,
                channels: channels.max(1),
                pool: RwLock::new(None),
                connecting: Arc::new(Mutex::new(())),
                failed: std::sync::Mutex::new(None),
            }),
            timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// Connects now (start-up and readiness).
    pub async fn ensure_connected(&self) -> Result<(), PublishError> {
        self.link.current().await.map(|_| ())
    }

    /// Publishes one order record and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        order_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let props = amqp::order_properties(order_id);
        // Getting a connection counts against the timeout too.
        let send = async {
            let pool = self.link.current().await?;
            let idx = self.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
            let channel = &pool.channels[idx];
            amqp::publish_confirmed(channel, queue, body, props)
                .await
                .map_err(|e| PublishError::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, send).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)))) => {
                Err(PublishError::Unroutable(queue.to_owned()))
            }
            Ok(Ok(Confirmation::Nack(None))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Failed(
                "channel is not in confirm mode".into(),
            )),
        }
    }

    /// Closes the connection after in-flight confirms arrived.
    pub async fn close(&self) {
        if let Some(p) = self.link.pool.write().await.take() {
            for ch in &p.channels {
                let _ = ch.wait_for_confirms().await;
            }
            flashsale_common::amqp::close_quietly(&p.conn, "gateway shutting down").await;
        }
    }
}

impl Link {
    async fn healthy(&self) -> Option<Arc<Pool>> {
        self.pool
            .read()
            .await
            .as_ref()
            .filter(|p| p.healthy())
            .map(Arc::clone)
    }

    fn recent_failure(&self) -> Option<PublishError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RETRY_PAUSE)
            .map(|(_, e)| e.clone())
    }

    /// The healthy pool, or one connection attempt. The attempt runs in a
    /// task of its own holding the `connecting` lock: a caller that gives up
    /// (its publish timed out) neither cancels it halfway nor lets a second
    /// attempt start beside it.
    async fn current(self: &Arc<Self>) -> Result<Arc<Pool>, PublishError> {
        if let Some(p) = self.healthy().await {
            return Ok(p);
        }
        let turn = Arc::clone(&self.connecting).lock_owned().await;
        if let Some(p) = self.healthy().await {
            return Ok(p);
        }
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        let link = Arc::clone(self);
        tokio::spawn(async move {
            let _turn = turn;
            link.connect().await
        })
        .await
        .map_err(|e| PublishError::Failed(e.to_string()))?
    }

    async fn connect(&self) -> Result<Arc<Pool>, PublishError> {
        let opened = tokio::time::timeout(ATTEMPT_TIMEOUT, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::Unreachable(format!(
                    "RabbitMQ did not set up the channels within {ATTEMPT_TIMEOUT:?}"
                )))
            });
        let remember = |failure: Option<(Instant, PublishError)>| {
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = failure;
        };
        match opened {
            Ok(pool) => {
                remember(None);
                let pool = Arc::new(pool);
                *self.pool.write().await = Some(Arc::clone(&pool));
                Ok(pool)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to RabbitMQ");
                remember(Some((Instant::now(), e.clone())));
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Pool, PublishError> {
        let unreachable = |e: lapin::Error| PublishError::Unreachable(e.to_string());
        let conn = amqp::connect(&self.url, "flashsale-gateway", &self.tls)
            .await
            .map_err(unreachable)?;
        let mut channels = Vec::with_capacity(self.channels);
        for i in 0..self.channels {
            let ch = conn.create_channel().await.map_err(unreachable)?;
            if i == 0 {
                for sale in &self.sales {
                    amqp::declare(&ch, sale, self.queue_type)
                        .await
                        .map_err(unreachable)?;
                }
            }
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unreachable)?;
            channels.push(ch);
        }
        tracing::info!(channels = channels.len(), "connected to RabbitMQ");
        Ok(Pool { conn, channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_label_is_listed() {
        for e in [
            PublishError::Unreachable(String::new()),
            PublishError::Timeout(Duration::ZERO),
            PublishError::Nacked,
            PublishError::Unroutable(String::new()),
            PublishError::Failed(String::new()),
        ] {
            assert!(PublishError::LABELS.contains(&e.label()), "{e}");
        }
    }
}
