//! The FlashSale gateway: takes the burst of buyers, reserves stock in Redis
//! with one Lua call, publishes each accepted order to RabbitMQ with publisher
//! confirms and answers `202` only after the broker confirmed it.

pub mod admission;
pub mod api;
pub mod connections;
pub mod error;
pub mod holds;
pub mod live;
pub mod metrics;
pub mod outbox;
pub mod publish;
pub mod request;
pub mod reserve;
pub mod room;
pub mod sales;
pub mod storefront;

use anyhow::Context;
use api::{AppState, RateLimitKey};
use axum::Router;
use axum::routing::{get, post};
use clap::Parser;
use flashsale_common::config::{AmqpArgs, LogArgs, RedisArgs, SaleArgs};
use flashsale_common::ops;
use flashsale_common::tls::TlsArgs;
use metrics::GatewayMetrics;
use outbox::{Acker, Sweeper};
use prometheus_client::registry::Registry;
use publish::Publisher;
use sales::Sales;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flashsale-gateway",
    version,
    about = "FlashSale gateway: reserves stock in Redis and publishes accepted orders to RabbitMQ",
    long_about = "FlashSale gateway: reserves stock in Redis and publishes accepted orders to RabbitMQ.\n\n\
        Serves POST /api/v1/sales/{namespace}/{name}/orders for the sales named with --sale, \
        answering 202 only after RabbitMQ confirmed the order. Also serves /healthz, /readyz \
        and /metrics, on the same port or, with --ops-listen, on a port of their own that \
        buyers cannot reach. Refuses a Redis that may evict keys without an expiry (maxmemory with an \
        allkeys-* policy): it could drop a sale's stock or orders. Every flag has an environment \
        variable twin; RUST_LOG sets the log filter."
)]
pub struct Config {
    #[command(flatten)]
    pub sales: SaleArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Address the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of a second listener for /healthz, /readyz and /metrics
    /// only; the API's port then answers them 404, so buyers cannot read
    /// the metrics or the readiness errors (which name the stores). Unset:
    /// everything on --listen.
    #[arg(long, env = "OPS_LISTEN_ADDR")]
    pub ops_listen: Option<SocketAddr>,
    /// Connections the kernel may queue before the gateway accepts them. A
    /// herd opens many at once; past this (and net.core.somaxconn) the
    /// kernel drops SYNs and each dropped client waits a second to retry.
    #[arg(long, env = "LISTEN_BACKLOG", hide = true, default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Channels in the RabbitMQ publishing pool (each in confirm mode).
    #[arg(long, env = "PUBLISH_CHANNELS", hide = true, default_value_t = 4)]
    pub publish_channels: usize,
    /// How long to wait for RabbitMQ's confirm before answering 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", hide = true, default_value_t = 3000)]
    pub publish_timeout_ms: u64,
    /// Most purchase attempts of one sale decided in one reservation script
    /// call. Attempts that arrive while the sale's earlier calls run go
    /// together in the next one (1: a call per attempt).
    #[arg(long, env = "RESERVE_BATCH", hide = true, default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub reserve_batch: u16,
    /// Reservation script calls in flight at once, per sale.
    #[arg(long, env = "RESERVE_CALLS", hide = true, default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub reserve_calls: u16,
    /// Redis replicas that must acknowledge a reservation (Redis `WAIT`)
    /// before its order is published and the buyer gets 202. With 1 or
    /// more, a failover to an acknowledging replica cannot lose a sold
    /// unit; a reservation too few replicas acknowledge in time gets 503
    /// `order_pending` and waits in the outbox. 0: do not wait.
    #[arg(long, env = flashsale_common::backend_keys::REDIS_WAIT_REPLICAS, default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long to wait for those replicas, in milliseconds.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", hide = true, default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_wait_timeout_ms: u64,
    /// Age after which an unconfirmed outbox entry is published again.
    #[arg(long, env = "OUTBOX_LEASE_MS", hide = true, default_value_t = 5000)]
    pub outbox_lease_ms: u64,
    /// How often the outbox sweeper and the stock poller run.
    #[arg(long, env = "SWEEP_INTERVAL_MS", hide = true, default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// How often each sale's stock is read for live-stock streams and the
    /// sold-out flag (one read per sale per process, whatever the clients).
    #[arg(long, env = "STOCK_POLL_MS", hide = true, default_value_t = 250)]
    pub stock_poll_ms: u64,
    /// How often due payment holds are expired (their units go back on sale).
    #[arg(long, env = "HOLD_SWEEP_MS", hide = true, default_value_t = 200)]
    pub hold_sweep_ms: u64,
    /// Identity the per-client rate limit is keyed by.
    #[arg(long, env = "RATE_LIMIT_KEY", value_enum, default_value = "user")]
    pub rate_limit_key: RateLimitKey,
    /// Proxies in front of the gateway that append to X-Forwarded-For: the
    /// client's IP is the N-th entry from the right (0: the connection's).
    #[arg(long, env = "TRUSTED_PROXIES", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=8))]
    pub trusted_proxies: u8,
    /// Buyers' connections open at once at most (lowered to what the
    /// open-file limit allows); beyond it a connection gets `503`.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Live-stock (SSE) streams served at once at most; beyond it `503`.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 2_000)]
    pub max_streams: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", hide = true, default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Token the payment service presents to confirm a paid order, as
    /// `Authorization: Bearer <token>` on POST …/orders/{id}/confirm.
    /// Without it anyone who knows an order id may confirm it, unpaid: set
    /// it wherever buyers reach the gateway.
    #[arg(long, env = flashsale_common::backend_keys::CONFIRM_TOKEN, hide_env_values = true,
          value_parser = flashsale_common::config::ConfirmTokenParser)]
    pub confirm_token: Option<String>,
    /// Header in which a trusted proxy in front of the gateway names the
    /// signed-in buyer (e.g. X-Authenticated-User). With it, purchases
    /// without the header are refused (401), the body's `user` may be left
    /// out and must otherwise match, and per-user limits hold per signed-in
    /// buyer. Only for gateways that nothing but that proxy can reach.
    #[arg(long, env = "USER_HEADER")]
    pub user_header: Option<axum::http::HeaderName>,
    /// Key that signs the waiting room's tickets, passes and challenges
    /// (at least 32 bytes; the operator makes one per sale, in its Secret).
    /// Every gateway of a sale needs the same. Without it a sale with a
    /// waiting room takes no joins and no orders.
    #[arg(long, env = flashsale_common::backend_keys::PASS_KEY, hide_env_values = true,
          value_parser = pass_key)]
    pub pass_key: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE_SECONDS",
        hide = true,
        default_value_t = 25
    )]
    pub shutdown_grace_seconds: u64,
}

/// A running gateway (the binary and the tests use the same code).
pub struct Gateway {
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    sweeper: Arc<Sweeper>,
    /// A handle dropped without `shutdown` (a caller that returned early)
    /// still starts the graceful stop, rather than leave the gateway
    /// serving with nobody holding it.
    _stop_on_drop: DropGuard,
}

/// How often each gateway runs an admission step of each sale with a
/// waiting room: the pace at which waiters learn they are admitted.
pub const ADMIT_EVERY: Duration = Duration::from_millis(250);

fn pass_key(text: &str) -> Result<String, String> {
    if text.len() < 32 {
        return Err("a pass key needs at least 32 bytes".to_owned());
    }
    Ok(text.to_owned())
}

impl Gateway {
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        let tls = cfg.tls.load()?;
        let redis = flashsale_store::redisconn::open(&cfg.redis.redis_url, &tls).await?;
        tracing::info!(
            cluster = redis.is_cluster(),
            "connected to {}",
            redis.kind()
        );
        {
            let mut conn = redis.clone();
            for sale in &cfg.sales.sales {
                conn.check_keeps_sale_keys(sale)
                    .await
                    .with_context(|| format!("sale {sale} cannot run on this Redis"))?;
            }
            flashsale_store::scripts::RESERVE
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .context("cannot load the Lua scripts into Redis")?;
        }
        let publisher = Arc::new(Publisher::new(
            cfg.amqp.amqp_url.clone(),
            tls,
            cfg.sales.sales.clone(),
            cfg.amqp.queue_type,
            cfg.publish_channels,
            Duration::from_millis(cfg.publish_timeout_ms),
        ));
        if let Err(e) = publisher.ensure_connected().await {
            tracing::warn!(error = %e, "RabbitMQ not reachable yet; not ready until it is");
        }
        let mut registry = Registry::default();
        let metrics = Arc::new(GatewayMetrics::register(&mut registry));
        let acks = (cfg.redis_wait_replicas > 0).then_some(reserve::ReplicaAcks {
            replicas: cfg.redis_wait_replicas,
            timeout_ms: cfg.redis_wait_timeout_ms,
        });
        match acks {
            Some(acks) => warn_if_too_few_replicas(&redis, acks.replicas).await,
            None if redis.is_sentinel() => {
                tracing::warn!(
                    "Redis through Sentinel without --redis-wait-replicas: a failover or hand-over \
                     may lose reservations whose orders went out, and those units may be sold twice; \
                     set --redis-wait-replicas 1"
                );
            }
            None => {}
        }
        let sales = Arc::new(Sales::new(&cfg.sales.sales, acks));
        // Each sale's settings (its waiting room above all) before the
        // first request.
        for view in sales.all() {
            let mut conn = redis.clone();
            if let Ok(Some(snap)) = flashsale_store::stock::read(&mut conn, &view.sale).await {
                view.on_snapshot(&snap);
            }
        }
        if cfg.reserve_batch > 1 {
            for view in sales.all() {
                view.start_batching(
                    redis.clone(),
                    usize::from(cfg.reserve_batch),
                    usize::from(cfg.reserve_calls),
                );
            }
        }
        let background = CancellationToken::new();
        let cancel = CancellationToken::new();
        let (acker, acker_task) =
            Acker::start(redis.clone(), Arc::clone(&metrics), background.clone());
        let storefront_page = storefront::render(cfg.user_header.as_ref());
        let state = Arc::new(AppState {
            sales: Arc::clone(&sales),
            redis: redis.clone(),
            publisher: Arc::clone(&publisher),
            acker: acker.clone(),
            metrics: Arc::clone(&metrics),
            rate_limit_key: cfg.rate_limit_key,
            trusted_proxies: usize::from(cfg.trusted_proxies),
            max_body_bytes: cfg.max_body_bytes,
            confirm_token: cfg.confirm_token.clone().filter(|t| !t.is_empty()),
            user_header: cfg.user_header.clone(),
            storefront_csp: storefront::content_security_policy(&storefront_page),
            streams: Arc::new(tokio::sync::Semaphore::new(cfg.max_streams)),
            signer: cfg
                .pass_key
                .as_deref()
                .map(|k| admission::Signer::new(k.as_bytes())),
            storefront: storefront_page,
            shutdown: cancel.clone(),
        });
        if state.confirm_token.is_none() {
            tracing::warn!(
                "no --confirm-token: anyone who knows an order id may confirm its payment hold"
            );
        }
        let api = Router::new()
            .route(
                "/api/v1/sales/{namespace}/{name}/orders",
                post(api::create_order),
            )
            .route(
                "/api/v1/sales/{namespace}/{name}/orders/{order_id}",
                get(api::get_order),
            )
            .route(
                "/api/v1/sales/{namespace}/{name}/orders/{order_id}/confirm",
                post(api::confirm_order),
            )
            .route("/api/v1/sales/{namespace}/{name}", get(api::sale_status))
            .route("/api/v1/sales/{namespace}/{name}/queue", post(room::join))
            .route(
                "/api/v1/sales/{namespace}/{name}/queue/challenge",
                get(room::challenge),
            )
            .route(
                "/api/v1/sales/{namespace}/{name}/queue/{ticket}",
                get(room::standing),
            )
            .route(
                "/api/v1/sales/{namespace}/{name}/queue/{ticket}/events",
                get(room::standing_events),
            )
            .route(
                "/api/v1/sales/{namespace}/{name}/events",
                get(live::sale_events),
            )
            .route("/sales/{namespace}/{name}", get(storefront::page))
            .fallback(api::not_found)
            .method_not_allowed_fallback(api::method_not_allowed)
            .layer(axum::middleware::from_fn(api::header_budget))
            .with_state(state);
        let ops_routes = ops::router(
            Arc::new(registry),
            readiness(&redis, &cfg.sales.sales, &publisher, &cancel),
        );
        let (app, ops_server) = match cfg.ops_listen {
            None => (api.merge(ops_routes), None),
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (--ops-listen)"))?;
                (api, Some((listener, ops_routes)))
            }
        };

        let listener = listen(cfg.listen, cfg.listen_backlog)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        // The operational endpoints serve until the gateway has stopped,
        // so that probes and scrapes see it drain.
        let ops_stop = CancellationToken::new();
        let (ops_addr, ops_task) = match ops_server {
            None => (None, None),
            Some((listener, routes)) => {
                let at = listener.local_addr()?;
                let stop = ops_stop.clone();
                let task = tokio::spawn(async move {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                });
                (Some(at), Some(task))
            }
        };

        let every = Duration::from_millis(cfg.sweep_interval_ms);
        let sweeper = Arc::new(Sweeper {
            sales: Arc::clone(&sales),
            redis: redis.clone(),
            publisher: Arc::clone(&publisher),
            acker,
            metrics: Arc::clone(&metrics),
            lease: Duration::from_millis(cfg.outbox_lease_ms),
            every,
        });
        let tasks = vec![
            tokio::spawn(Arc::clone(&sales).follow_events(redis.clone(), background.clone())),
            tokio::spawn(Arc::clone(&sales).poll(
                redis.clone(),
                Duration::from_millis(cfg.stock_poll_ms),
                background.clone(),
            )),
            tokio::spawn(Arc::clone(&sales).admit(
                redis.clone(),
                ADMIT_EVERY,
                Arc::clone(&metrics),
                background.clone(),
            )),
            tokio::spawn(Arc::clone(&sweeper).run(background.clone())),
            tokio::spawn(
                Arc::clone(&sweeper)
                    .run_expiry(Duration::from_millis(cfg.hold_sweep_ms), background.clone()),
            ),
        ];

        let stop = cancel.clone();
        let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
        let cap = connections::connection_cap(cfg.max_connections);
        let refused = Arc::clone(&metrics);
        let task = tokio::spawn(async move {
            connections::serve(listener, app, cap, stop, grace, move || {
                refused.refused_connections.inc();
            })
            .await;
            // Requests are drained: stop the background work, write the
            // pending outbox acks, then wait for outstanding confirms.
            background.cancel();
            for t in tasks {
                let _ = t.await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), acker_task).await;
            publisher.close().await;
            ops_stop.cancel();
            if let Some(t) = ops_task {
                let _ = t.await;
            }
            tracing::info!("gateway stopped");
            Ok(())
        });
        match ops_addr {
            Some(ops) => {
                tracing::info!(%addr, %ops, "gateway listening; operational endpoints apart")
            }
            None => tracing::info!(%addr, "gateway listening"),
        }
        Ok(Gateway {
            addr,
            ops_addr,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            task,
            sweeper,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where /healthz, /readyz and /metrics are served: the --ops-listen
    /// address, or the API's.
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops_addr.unwrap_or(self.addr))
    }

    /// Runs one outbox sweep over every sale now; returns the orders published again.
    pub async fn sweep_outbox(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for view in self.sweeper.sales.all() {
            n += self.sweeper.sweep(view).await?;
        }
        Ok(n)
    }

    /// Graceful stop: no new connections, in-flight requests finish, pending
    /// outbox acks are written, the RabbitMQ connection closes.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?
    }

    /// Resolves when the gateway stopped by itself (a fatal server error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }
}

/// Logs a warning at start when the Redis primary has fewer replicas than
/// `--redis-wait-replicas` requires: every purchase would then wait out the
/// timeout and get 503.
async fn warn_if_too_few_replicas(redis: &flashsale_store::redisconn::RedisConn, required: u32) {
    match redis.clone().connected_replicas().await {
        Ok(Some(n)) if n >= required => {
            tracing::info!(
                replicas = n,
                required,
                "reservations wait for Redis replicas"
            );
        }
        Ok(Some(n)) => tracing::warn!(
            replicas = n,
            required,
            "the Redis primary has fewer replicas than --redis-wait-replicas: purchases will get 503 until enough are attached"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(required, error = %e, "cannot read the Redis primary's replicas (INFO replication)")
        }
    }
}

/// Ready while the Redis of every sale answers and keeps the sale's keys
/// (a policy changed at run time, or a new primary after a failover, may
/// evict them), and RabbitMQ is reachable; never once the gateway is
/// stopping (`stopping` cancelled), while it finishes the requests in
/// flight.
fn readiness(
    redis: &flashsale_store::redisconn::RedisConn,
    sales: &[flashsale_common::SaleRef],
    publisher: &Arc<Publisher>,
    stopping: &CancellationToken,
) -> ops::ReadyCheck {
    let redis = redis.clone();
    let sales: Arc<[flashsale_common::SaleRef]> = sales.into();
    let publisher = Arc::clone(publisher);
    let stopping = stopping.clone();
    Arc::new(move || {
        let mut redis = redis.clone();
        let sales = Arc::clone(&sales);
        let publisher = Arc::clone(&publisher);
        let stopping = stopping.is_cancelled();
        Box::pin(async move {
            if stopping {
                return Err("shutting down: finishing the requests in flight".to_owned());
            }
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut redis).await;
            pong.map_err(|e| format!("Redis: {e}"))?;
            for sale in sales.iter() {
                redis
                    .check_keeps_sale_keys(sale)
                    .await
                    .map_err(|e| format!("Redis of sale {sale}: {}", ops::describe(&e)))?;
            }
            publisher
                .ensure_connected()
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// The binary's entry point: start, serve until SIGTERM, stop gracefully.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut gw = Gateway::start(cfg).await?;
    tokio::select! {
        res = gw.wait() => return res,
        () = ops::shutdown_signal() => {}
    }
    gw.shutdown().await
}

/// Binds the HTTP listener with an explicit accept backlog.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
