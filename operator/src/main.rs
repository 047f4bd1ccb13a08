/// mimalloc: the request path allocates many small, short-lived buffers,
/// where glibc malloc was a large share of the CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use flashsale_common::amqp;
use flashsale_common::config::{AmqpArgs, DatabaseArgs, LogArgs, RedisArgs, SaleArgs};
use flashsale_common::ops;
use flashsale_common::tls::TlsArgs;
use flashsale_operator::backends::BackendUrls;
use flashsale_operator::controller::{self, Context};
use flashsale_operator::leader::LeaderElector;
use flashsale_operator::metrics::OperatorMetrics;
use flashsale_operator::{crd_yaml, seed};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flashsale-operator",
    version,
    about = "FlashSale operator: runs FlashSale custom resources as flash sales",
    long_about = "FlashSale operator: runs FlashSale custom resources as flash sales.\n\n\
        `run` reconciles FlashSales in a cluster (in-cluster config or KUBECONFIG), `crd` prints \
        the CustomResourceDefinition, `seed` creates or restocks sales in Redis from manifest \
        files, `redrive` moves sales' dead letters back to their orders queues. Every flag has an environment variable twin; RUST_LOG sets the log filter."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile FlashSales in the cluster until SIGTERM.
    Run(Box<RunArgs>),
    /// Print the FlashSale CustomResourceDefinition as YAML.
    Crd,
    /// Create or restock the sales of a manifest in Redis (idempotent).
    Seed(Box<SeedArgs>),
    /// Move the messages of sales' dead-letter queues back to their orders
    /// queues, once what made the workers refuse them is fixed.
    Redrive(Box<RedriveArgs>),
}

#[derive(Args)]
#[command(
    long_about = "Move the messages of sales' dead-letter queues back to their orders queues.\n\n\
        A worker moves a message it can never store to the sale's dead-letter queue \
        (flashsale.<ns>.<name>.dead), with the reason in its x-flashsale-reason header. Once the \
        cause is fixed (a worker that reads a newer message version, a constraint dropped from \
        the ledger), redrive puts the messages back for the sale's workers to store: each \
        leaves the dead-letter queue only after RabbitMQ confirmed it on the orders queue, and \
        the workers store an order once whatever the copies. A message that fails again comes \
        back to the dead-letter queue and is not moved twice in one run."
)]
struct RedriveArgs {
    #[command(flatten)]
    sales: SaleArgs,
    /// Move at most this many messages of each sale (default: all that the
    /// dead-letter queue holds when the move starts).
    #[arg(long)]
    limit: Option<u32>,
    #[command(flatten)]
    amqp: AmqpArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct SeedArgs {
    /// Manifest file with one or more FlashSale documents ("-" for stdin).
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Namespace for sales whose metadata has none.
    #[arg(short = 'n', long, env = "NAMESPACE", default_value = "default")]
    namespace: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Run without a cluster: gateway and worker as local processes, the
    /// status printed instead of written to Kubernetes.
    #[arg(long)]
    local: bool,
    /// With --local: manifest file(s) with FlashSale documents.
    #[arg(short = 'f', long = "filename", requires = "local")]
    files: Vec<String>,
    /// With --local: namespace for sales whose metadata has none.
    #[arg(short = 'n', long, default_value = "default", requires = "local")]
    namespace: String,
    /// With --local: where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "local")]
    gateway_listen: SocketAddr,
    /// With --local: where the worker serves /metrics.
    #[arg(long, default_value = "127.0.0.1:9091", requires = "local")]
    worker_listen: SocketAddr,
    /// With --local: directory for the gateway's and worker's logs.
    #[arg(long, default_value = "flashsale-local-logs", requires = "local")]
    log_dir: std::path::PathBuf,
    /// With --local: keep running after every sale ended, until stopped.
    /// With --delete-on-exit as well, stopping it deletes the sales.
    #[arg(long, requires = "local")]
    keep: bool,
    /// With --local: when stopped (SIGTERM, Ctrl-C) or once every sale
    /// ended (unless --keep), delete the sales as `kubectl delete` would:
    /// close them, let the worker store every order, then remove their
    /// queues and Redis keys (orders stay in PostgreSQL). Waits at most
    /// 60 s; stop it again to leave at once.
    #[arg(long, requires = "local")]
    delete_on_exit: bool,
    /// Watch only these namespaces, comma-separated (default: all
    /// namespaces); the operator needs rights in those alone.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// Image of gateway and worker pods unless a FlashSale overrides it.
    #[arg(long, env = "FLASHSALE_IMAGE", default_value = concat!("localhost/flashsale:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Other images a FlashSale may name for its pods (comma-separated;
    /// a trailing `*` allows a prefix). Its pods get the stores' passwords:
    /// any other image makes the sale Invalid.
    #[arg(long, env = "FLASHSALE_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// A NetworkPolicy for each sale's pods, as JSON: {"gatewayFrom":
    /// [peers that may send buyers' requests], "metricsFrom": [peers that
    /// may scrape metrics; any when empty]}, peers as in a NetworkPolicy.
    #[arg(long, env = "FLASHSALE_SALE_NETWORK_POLICY", value_parser = sale_network_policy)]
    sale_network_policy: Option<flashsale_operator::workloads::SaleNetworkPolicy>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// Elect a leader through a Lease (needed with more than one replica).
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "flashsale-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a lease is valid without renewal.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity in the lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Token the payment service presents to confirm paid orders, handed
    /// to every sale's gateways (a sale's own Secret may give another as
    /// CONFIRM_TOKEN). Without it, anyone who knows an order id may
    /// confirm its hold.
    #[arg(long, env = flashsale_common::backend_keys::CONFIRM_TOKEN, hide_env_values = true,
          value_parser = flashsale_common::config::ConfirmTokenParser)]
    confirm_token: Option<String>,
    /// Redis replicas that must acknowledge each reservation before the
    /// gateways publish its order and answer 202, handed to every sale's
    /// gateways (a sale's own Secret may give another as
    /// REDIS_WAIT_REPLICAS). 0: no wait.
    #[arg(long, env = flashsale_common::backend_keys::REDIS_WAIT_REPLICAS, default_value_t = 0)]
    redis_wait_replicas: u32,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => crd_yaml().map(|y| print!("{y}")),
        Command::Seed(args) => {
            flashsale_common::telemetry::init(args.log.log_format);
            run_seed(*args).await
        }
        Command::Redrive(args) => {
            flashsale_common::telemetry::init(args.log.log_format);
            run_redrive(*args).await
        }
        Command::Run(args) => {
            flashsale_common::telemetry::init(args.log.log_format);
            run(*args).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flashsale_common::ops::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_seed(args: SeedArgs) -> anyhow::Result<()> {
    let sales = seed::read_manifests(&args.file)?;
    args.tls.apply()?;
    let mut conn = flashsale_store::redisconn::open(&args.redis.redis_url).await?;
    let mut failed = 0;
    for sale in &sales {
        match seed::seed_one(&mut conn, sale, &args.namespace).await {
            Ok((r, report)) => println!("{}", seed::describe(&r, &report)),
            Err(e) => {
                eprintln!("error: {}", flashsale_common::ops::describe(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} sales not seeded", sales.len());
    }
    Ok(())
}

async fn run_redrive(args: RedriveArgs) -> anyhow::Result<()> {
    args.tls.apply()?;
    let conn = amqp::connect(&args.amqp.amqp_url, "flashsale-operator-redrive")
        .await
        .context("cannot connect to RabbitMQ (--amqp-url)")?;
    let mut failed = 0;
    for sale in &args.sales.sales {
        match amqp::redrive(&conn, sale, args.amqp.queue_type, args.limit).await {
            Ok(done) => println!(
                "{sale}: moved {} message(s) from {} to {}; {} left in the dead-letter queue",
                done.moved,
                amqp::dead_letter_queue(sale),
                amqp::orders_queue(sale),
                done.left
            ),
            Err(e) => {
                eprintln!("error: {sale}: {e}");
                failed += 1;
            }
        }
    }
    flashsale_common::amqp::close_quietly(&conn, "redrive done").await;
    if failed > 0 {
        anyhow::bail!("{failed} of {} sales not redriven", args.sales.sales.len());
    }
    Ok(())
}

fn sale_network_policy(
    text: &str,
) -> Result<flashsale_operator::workloads::SaleNetworkPolicy, String> {
    serde_json::from_str(text).map_err(|e| format!("not a sale network policy: {e}"))
}

async fn run_local(args: RunArgs) -> anyhow::Result<()> {
    if args.files.is_empty() {
        anyhow::bail!("--local needs at least one manifest: -f <file>");
    }
    let tls = args.tls.apply()?;
    let mut sales = Vec::new();
    for f in &args.files {
        for mut sale in seed::read_manifests(f)? {
            if sale.metadata.namespace.is_none() {
                sale.metadata.namespace = Some(args.namespace.clone());
            }
            sales.push(sale);
        }
    }
    flashsale_operator::local::run_local(flashsale_operator::local::LocalOptions {
        sales,
        gateway_listen: args.gateway_listen,
        worker_listen: args.worker_listen,
        urls: BackendUrls::with_tls(
            args.redis.redis_url,
            args.amqp.amqp_url,
            args.database.database_url,
            &tls,
        )
        .with_confirm_token(args.confirm_token)
        .with_redis_wait_replicas(args.redis_wait_replicas),
        queue_type: args.amqp.queue_type,
        log_dir: args.log_dir,
        keep: args.keep,
        delete_on_exit: args.delete_on_exit,
        state_file: flashsale_operator::local::state_file_for(&args.files[0]),
    })
    .await
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.local {
        return run_local(args).await;
    }
    let tls = args.tls.apply()?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(OperatorMetrics::register(&mut registry));
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("flashsale-operator-{}", std::process::id()));
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            BackendUrls::with_tls(
                args.redis.redis_url.clone(),
                args.amqp.amqp_url.clone(),
                args.database.database_url.clone(),
                &tls,
            )
            .with_confirm_token(args.confirm_token.clone())
            .with_redis_wait_replicas(args.redis_wait_replicas),
            args.amqp.queue_type,
            args.image.clone(),
            Some(identity.clone()),
            metrics,
        )
        .allowing_images(args.allowed_images.clone()),
    );

    let ready_redis = args.redis.redis_url.clone();
    let ready: ops::ReadyCheck = Arc::new(move || {
        let url = ready_redis.clone();
        Box::pin(async move {
            flashsale_store::redisconn::ping(url.as_str())
                .await
                .map_err(|e| format!("Redis: {e}"))
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let http = tokio::spawn(async move {
        axum::serve(listener, ops::router(Arc::new(registry), ready))
            .with_graceful_shutdown(ops::shutdown_signal())
            .await
    });

    let stop = tokio_util::sync::CancellationToken::new();
    let mut leader_task = None;
    let mut elected = None;
    if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            &ns,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds),
        ));
        tokio::select! {
            () = elector.acquire() => {}
            () = ops::shutdown_signal() => return Ok(()),
        }
        elected = Some(Arc::clone(&elector));
        let stop = stop.clone();
        leader_task = Some(tokio::spawn(async move {
            elector.hold().await;
            stop.cancel();
        }));
    }
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            ops::shutdown_signal().await;
            stop.cancel();
        });
    }
    let namespaces: Vec<Option<String>> = if args.watch_namespace.is_empty() {
        vec![None]
    } else {
        args.watch_namespace.iter().cloned().map(Some).collect()
    };
    tracing::info!(
        namespaces = %args.watch_namespace.join(","),
        "reconciling FlashSales{}",
        if args.watch_namespace.is_empty() { " in all namespaces" } else { "" }
    );
    // One controller per watched namespace: each lists and watches there
    // alone, so a Role in each is all the operator needs.
    futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| controller::run(Arc::clone(&ctx), ns, stop.clone().cancelled_owned())),
    )
    .await;
    if let Some(t) = leader_task {
        t.abort();
    }
    // Reconciling has stopped: hand the lease over at once.
    if let Some(elector) = elected {
        match elector.release().await {
            Ok(()) => tracing::info!("released the lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the lease; it expires by itself"),
        }
    }
    http.abort();
    tracing::info!("operator stopped");
    Ok(())
}
