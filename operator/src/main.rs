/// mimalloc: the request path allocates many small, short-lived buffers,
/// where glibc malloc was a large share of the CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::Parser;
use flashsale_common::amqp;
use flashsale_common::ops;
use flashsale_operator::cli::{
    Cli, Command, LocalArgs, RedriveArgs, RunArgs, SeedArgs, VerifyLotteryArgs,
};
use flashsale_operator::controller::{self, Context};
use flashsale_operator::leader::LeaderElector;
use flashsale_operator::metrics::OperatorMetrics;
use flashsale_operator::{crd_yaml, seed};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

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
            flashsale_common::telemetry::init(args.stores.log.log_format);
            run(*args).await
        }
        Command::VerifyLottery(args) => {
            flashsale_common::telemetry::init(args.log.log_format);
            run_verify_lottery(*args).await
        }
        Command::Local(args) => {
            flashsale_common::telemetry::init(args.stores.log.log_format);
            run_local(*args).await
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
    let tls = args.tls.load()?;
    let mut conn = flashsale_store::redisconn::open(&args.redis.redis_url, &tls).await?;
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

async fn run_verify_lottery(args: VerifyLotteryArgs) -> anyhow::Result<()> {
    let seed = flashsale_operator::backends::hex_seed(&args.seed)
        .ok_or_else(|| anyhow::anyhow!("--seed is not hex"))?;
    let tls = args.tls.load()?;
    let mut conn = flashsale_store::redisconn::open(&args.redis.redis_url, &tls).await?;
    let report = flashsale_operator::seed::verify_lottery(
        &mut conn,
        &args.sale,
        &seed,
        args.commitment.as_deref(),
    )
    .await?;
    println!("{report}");
    if !report.matches() {
        anyhow::bail!("the draw of {} does not match its seed", args.sale);
    }
    Ok(())
}

async fn run_redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let tls = args.tls.load()?;
    let conn = amqp::connect(&args.amqp.amqp_url, "flashsale-operator-redrive", &tls)
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

async fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    let tls = args.stores.tls.load()?;
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
        urls: args.stores.urls(&tls),
        queue_type: args.stores.amqp.queue_type,
        log_dir: args.log_dir,
        keep: args.keep,
        delete_on_exit: args.delete_on_exit,
        state_file: flashsale_operator::local::state_file_for(&args.files[0]),
    })
    .await
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let tls = args.stores.tls.load()?;
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
            args.stores.urls(&tls),
            args.stores.amqp.queue_type,
            args.image.clone(),
            Some(identity.clone()),
            metrics,
        )
        .allowing_images(args.allowed_images.clone()),
    );

    let ready_redis = args.stores.redis.redis_url.clone();
    let ready_tls = Arc::clone(&tls);
    let ready: ops::ReadyCheck = Arc::new(move || {
        let url = ready_redis.clone();
        let tls = Arc::clone(&ready_tls);
        Box::pin(async move {
            flashsale_store::redisconn::ping(url.as_str(), &tls)
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
