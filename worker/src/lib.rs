//! The FlashSale worker: consumes accepted orders from each sale's queue and
//! stores them in PostgreSQL in batches, exactly once.

pub mod consume;
pub mod metrics;
pub mod store;

use anyhow::Context;
use axum::Router;
use clap::Parser;
use consume::{ConsumeError, ConsumeSettings, SaleConsumer};
use flashsale_common::config::{AmqpArgs, DatabaseArgs, LogArgs, SaleArgs};
use flashsale_common::tls::TlsArgs;
use flashsale_common::{db, ops};
use metrics::WorkerMetrics;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flashsale-worker",
    version,
    about = "FlashSale worker: stores accepted orders in PostgreSQL in batches, exactly once",
    long_about = "FlashSale worker: stores accepted orders in PostgreSQL in batches, exactly once.\n\n\
        Consumes the orders queue of each sale named with --sale (manual acks, prefetch window), \
        inserts up to --batch-size orders per transaction with ON CONFLICT DO NOTHING and \
        acknowledges only after the commit. Messages that can never be stored go to the sale's \
        dead-letter queue with the reason in the x-flashsale-reason header, and so do messages \
        handed out --dead-letter-after-deliveries times without being stored. Runs the schema \
        migrations at start-up. Serves /healthz, /readyz and /metrics. Every flag has an \
        environment variable twin; RUST_LOG sets the log filter."
)]
pub struct Config {
    #[command(flatten)]
    pub sales: SaleArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    /// Most orders written in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Longest wait to fill a batch, in milliseconds.
    #[arg(long, env = "BATCH_TIMEOUT_MS", hide = true, default_value_t = 20)]
    pub batch_timeout_ms: u64,
    /// Unacknowledged messages RabbitMQ may send ahead (default: twice the batch size).
    #[arg(long, env = "PREFETCH", hide = true)]
    pub prefetch: Option<u16>,
    /// PostgreSQL connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", hide = true, default_value_t = 4)]
    pub db_max_connections: u32,
    /// Seconds the current batches get to commit after SIGTERM.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECONDS",
        hide = true,
        default_value_t = 25
    )]
    pub shutdown_grace_seconds: u64,
    /// Deliveries after which a message still not stored (the workers that
    /// took it stopped or lost their connection each time, a crash loop
    /// perhaps) goes to the dead-letter queue instead of being tried again.
    /// A quorum queue of RabbitMQ 4 drops a message once it was delivered
    /// as often as its delivery limit (20 unless a policy sets another):
    /// keep this below it. 0: never.
    #[arg(
        long,
        env = "DEAD_LETTER_AFTER_DELIVERIES",
        hide = true,
        default_value_t = 15
    )]
    pub dead_letter_after_deliveries: u64,
    /// Failure drills only: drop the connection, unacknowledged, after this
    /// many committed batches (per sale).
    #[arg(long, env = "CRASH_AFTER_BATCHES", hide = true)]
    pub crash_after_batches: Option<u64>,
}

pub struct Worker {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// A handle dropped without `shutdown` (a caller that returned early)
    /// still starts the graceful stop, rather than leave the worker
    /// consuming with nobody holding it.
    _stop_on_drop: DropGuard,
}

impl Worker {
    pub async fn start(cfg: Config) -> anyhow::Result<Worker> {
        let tls = cfg.tls.load()?;
        let pool =
            db::connect_and_migrate(&cfg.database.database_url, cfg.db_max_connections, &tls)
                .await
                .with_context(
                    || "cannot prepare the orders ledger in PostgreSQL (--database-url)",
                )?;
        let mut registry = Registry::default();
        let metrics = Arc::new(WorkerMetrics::register(&mut registry));
        let batch_size = cfg.batch_size as usize;
        let settings = ConsumeSettings {
            amqp_url: cfg.amqp.amqp_url.clone(),
            tls,
            queue_type: cfg.amqp.queue_type,
            batch_size,
            batch_timeout: Duration::from_millis(cfg.batch_timeout_ms),
            prefetch: cfg
                .prefetch
                .unwrap_or_else(|| u16::try_from(batch_size * 2).unwrap_or(u16::MAX)),
            dead_letter_after: cfg.dead_letter_after_deliveries,
            crash_after_batches: cfg.crash_after_batches,
        };
        let consumers: Vec<Arc<SaleConsumer>> = cfg
            .sales
            .sales
            .iter()
            .map(|sale| {
                Arc::new(SaleConsumer {
                    sale: sale.clone(),
                    settings: settings.clone(),
                    pool: pool.clone(),
                    metrics: Arc::clone(&metrics),
                    connected: Arc::new(AtomicBool::new(false)),
                    committed_batches: AtomicU64::new(0),
                })
            })
            .collect();

        let ready: ops::ReadyCheck = {
            let pool = pool.clone();
            let flags: Vec<_> = consumers
                .iter()
                .map(|c| (c.sale.to_string(), Arc::clone(&c.connected)))
                .collect();
            let flags = Arc::new(flags);
            Arc::new(move || {
                let pool = pool.clone();
                let flags = Arc::clone(&flags);
                Box::pin(async move {
                    sqlx::query("SELECT 1")
                        .execute(&pool)
                        .await
                        .map_err(|e| format!("PostgreSQL: {e}"))?;
                    for (sale, up) in flags.iter() {
                        if !up.load(Ordering::Acquire) {
                            return Err(format!("not consuming the queue of {sale}"));
                        }
                    }
                    Ok(())
                })
            })
        };
        let app: Router = ops::router(Arc::new(registry), ready);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;

        let cancel = CancellationToken::new();
        let consuming = CancellationToken::new();
        let mut handles = Vec::new();
        for c in consumers {
            handles.push(tokio::spawn(c.run(consuming.clone())));
        }
        let stop = cancel.clone();
        let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
        let task = tokio::spawn(async move {
            let http = tokio::spawn({
                let stop = stop.clone();
                async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                }
            });
            let mut all = futures::future::join_all(handles);
            let mut crashed = false;
            tokio::select! {
                results = &mut all => {
                    crashed = results.iter().any(|r| matches!(r, Ok(Err(ConsumeError::SimulatedCrash))));
                }
                () = stop.cancelled() => {
                    consuming.cancel();
                    if tokio::time::timeout(grace, &mut all).await.is_err() {
                        tracing::warn!(?grace, "batches did not finish in time; they will be redelivered");
                    }
                }
            }
            stop.cancel();
            let _ = http.await;
            pool.close().await;
            tracing::info!("worker stopped");
            if crashed {
                anyhow::bail!("simulated crash");
            }
            Ok(())
        });
        tracing::info!(%addr, "worker listening");
        Ok(Worker {
            addr,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop: the current batches commit and are acknowledged, the
    /// rest stays in the queue for the next worker.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?
    }

    /// Resolves when the worker stopped by itself.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }
}

/// The binary's entry point: start, consume until SIGTERM, stop gracefully.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut worker = Worker::start(cfg).await?;
    tokio::select! {
        res = worker.wait() => return res,
        () = ops::shutdown_signal() => {}
    }
    worker.shutdown().await
}
