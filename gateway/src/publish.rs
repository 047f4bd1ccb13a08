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
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
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

pub struct Publisher {
    url: String,
    sales: Vec<SaleRef>,
    queue_type: QueueType,
    channels: usize,
    timeout: Duration,
    pool: RwLock<Option<Arc<Pool>>>,
    connecting: Mutex<()>,
    next: AtomicUsize,
}

impl Publisher {
    pub fn new(
        url: String,
        sales: Vec<SaleRef>,
        queue_type: QueueType,
        channels: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            url,
            sales,
            queue_type,
            channels: channels.max(1),
            timeout,
            pool: RwLock::new(None),
            connecting: Mutex::new(()),
            next: AtomicUsize::new(0),
        }
    }

    async fn open(&self) -> Result<Pool, PublishError> {
        let unreachable = |e: lapin::Error| PublishError::Unreachable(e.to_string());
        let conn = amqp::connect(&self.url, "flashsale-gateway")
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

    async fn current(&self) -> Result<Arc<Pool>, PublishError> {
        if let Some(p) = self.pool.read().await.as_ref()
            && p.healthy()
        {
            return Ok(Arc::clone(p));
        }
        let _guard = self.connecting.lock().await;
        if let Some(p) = self.pool.read().await.as_ref()
            && p.healthy()
        {
            return Ok(Arc::clone(p));
        }
        let fresh = Arc::new(self.open().await?);
        *self.pool.write().await = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Connects now (start-up and readiness).
    pub async fn ensure_connected(&self) -> Result<(), PublishError> {
        self.current().await.map(|_| ())
    }

    pub async fn is_connected(&self) -> bool {
        self.pool.read().await.as_ref().is_some_and(|p| p.healthy())
    }

    /// Publishes one order record and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        order_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let pool = self.current().await?;
        let idx = self.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
        let channel = &pool.channels[idx];
        let props = amqp::order_properties(order_id);
        let send = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await?;
            confirm.await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Failed(e.to_string())),
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
        if let Some(p) = self.pool.write().await.take() {
            for ch in &p.channels {
                let _ = ch.wait_for_confirms().await;
            }
            let _ = p.conn.close(200, "gateway shutting down".into()).await;
        }
    }
}
