//! `flashsale-bench`: drives a gateway with N purchase attempts at
//! concurrency C and prints throughput and latency, each next to a baseline
//! measured in the same run on the same machine:
//!
//! * all accepted (stock > N): accepted/s against direct RabbitMQ publishes
//!   with publisher confirms of the same message, at the same concurrency;
//! * thundering herd (stock = 1% of N): attempts/s against the same
//!   reservation Lua script called directly on Redis, at the same concurrency.
//!
//! By default it starts a gateway and a worker in-process against the local
//! servers, on a fresh sale and database that it removes afterwards.

/// mimalloc: the request path allocates many small, short-lived buffers,
/// where glibc malloc was a large share of the CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cpu;
mod fire;
mod idle;
mod line;
mod load;
mod queue;

use clap::Parser;
use flashsale_common::amqp;
use flashsale_gateway::reserve::{Attempt, reserve};
use flashsale_gateway::sales::SaleView;
use flashsale_harness::{Env, open_sale};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "flashsale-bench",
    version,
    about = "Benchmark the FlashSale gateway against direct Redis and RabbitMQ baselines",
    long_about = "Benchmark the FlashSale gateway against direct Redis and RabbitMQ baselines.\n\n\
        Starts a gateway and a worker in-process on a fresh sale and database (the local \
        Redis, RabbitMQ and PostgreSQL from REDIS_URL, AMQP_URL and PG_ADMIN_URL), runs the \
        chosen scenarios and prints each figure with its baseline and the ratio. Figures, \
        not assertions: the machine is shared and noisy, the ratios are what to compare."
)]
struct Args {
    /// Purchase attempts per scenario.
    #[arg(long, short = 'n', default_value_t = 20_000)]
    attempts: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 200)]
    concurrency: usize,
    /// Extra gateway flag, repeatable (e.g. --gateway-arg=--publish-channels=8).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    /// Fire at a running gateway instead (e.g. http://127.0.0.1:8080) and
    /// print a summary for --sale.
    #[arg(long, requires = "sale")]
    target: Option<String>,
    /// With --target: the sale, as <namespace>/<name>.
    #[arg(long)]
    sale: Option<flashsale_common::SaleRef>,
    /// With --target: distinct buyers (attempts are spread over them).
    #[arg(long)]
    buyers: Option<usize>,
    /// With --target: the orders ledger, to count what was persisted.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/flashsale"
    )]
    database_url: String,
    /// Idle live-stock (SSE) clients connected during a second herd run,
    /// to show they do not slow purchases (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    sse_clients: usize,
    #[arg(long, hide = true)]
    hold_sse: Option<std::net::SocketAddr>,
    #[arg(long, hide = true, default_value = "")]
    hold_sse_path: String,
    #[arg(long, hide = true, default_value_t = 0)]
    hold_sse_count: usize,
    /// The baseline and the gateway take turns this many times, each with
    /// its share of the attempts, so that the shared machine's slow patches
    /// fall on both alike.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// All-accepted scenario: after each gateway round, publish directly
    /// again at the rate the gateway reached, and print what RabbitMQ's
    /// CPU per message is at that rate (it is dearer at lower rates, where
    /// it batches less).
    #[arg(long)]
    paced_baseline: bool,
    /// Queue scenario: waiting tickets whose Redis memory is measured
    /// (0 to skip).
    #[arg(long, default_value_t = 1_000_000)]
    queue_tickets: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    All,
    Accepted,
    Herd,
    /// The waiting room: joins, standings against sold-out answers, the
    /// time to tell every waiter, proof of work, memory per ticket.
    Queue,
}

#[derive(Default)]
struct Stats {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    outcomes: BTreeMap<String, usize>,
    accepted_units: i64,
}

impl Stats {
    /// Adds another run's figures: times add up, latencies pool (sort them
    /// once all runs are in).
    fn merge(&mut self, other: Stats) {
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.accepted_units += other.accepted_units;
    }
    fn rate(&self, count: usize) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }
    fn line(&self, label: &str, count: usize) -> String {
        format!(
            "  {label:<26} {:>10.0}/s   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            self.rate(count),
            self.pct(0.50),
            self.pct(0.95),
            self.pct(0.99),
            self.pct(1.0),
        )
    }
}

/// Runs `n` operations with `c` tasks pulling from a shared counter.
async fn drive<F, Fut>(n: usize, c: usize, op: F) -> anyhow::Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(String, i64)>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for _ in 0..c {
        let op = Arc::clone(&op);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            let mut units = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let (outcome, u) = op(i).await?;
                lat.push(t.elapsed().as_micros() as u64);
                units += u;
                *outcomes.entry(outcome).or_default() += 1;
            }
            anyhow::Ok((lat, outcomes, units))
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        let (lat, outcomes, units) = t.await??;
        stats.latencies_us.extend(lat);
        for (k, v) in outcomes {
            *stats.outcomes.entry(k).or_default() += v;
        }
        stats.accepted_units += units;
    }
    stats.elapsed = started.elapsed();
    stats.latencies_us.sort_unstable();
    Ok(stats)
}

async fn gateway_load(
    addr: std::net::SocketAddr,
    path: String,
    n: usize,
    c: usize,
    tag: &str,
) -> anyhow::Result<Stats> {
    let tag = tag.to_owned();
    let (samples, secs) = load::post_many(
        load::Target {
            addr,
            path,
            method: "POST",
        },
        n,
        c,
        move |i| format!(r#"{{"user":"{tag}-{i}","quantity":1}}"#),
        None,
    )
    .await?;
    let mut stats = Stats {
        elapsed: Duration::from_secs_f64(secs),
        ..Stats::default()
    };
    for (status, us, _) in samples {
        stats.latencies_us.push(us);
        *stats.outcomes.entry(status.to_string()).or_default() += 1;
        stats.accepted_units += i64::from(status == 202);
    }
    stats.latencies_us.sort_unstable();
    Ok(stats)
}

/// Opens `c` keep-alive connections' worth of traffic without buying.
async fn warm_up(url: &str, c: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..c.min(50) {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            client.get(&url).send().await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A baseline measured in the same run as the gateway: the reservation
/// script called directly on Redis, or publishes with confirms straight to
/// RabbitMQ. Its sale or queue lives for the whole scenario, across rounds.
enum Baseline {
    Lua {
        sale: flashsale_common::SaleRef,
        view: Arc<SaleView>,
    },
    Publish(Box<PublishTarget>),
}

/// The publish baseline's connection, channel (in confirm mode), queues
/// and message.
struct PublishTarget {
    conn: lapin::Connection,
    ch: lapin::Channel,
    queues: [String; 2],
    body: Arc<Vec<u8>>,
}

impl Baseline {
    /// Lua baseline: a sale of its own with the same stock, same script.
    async fn lua(env: &Env, stock: i64) -> anyhow::Result<Self> {
        let sale =
            flashsale_common::SaleRef::new(&env.sale.namespace, &format!("{}-lua", env.sale.name))?;
        let mut conn = env.redis.clone();
        flashsale_store::stock::seed(
            &mut conn,
            &sale,
            &open_sale(stock, 1, 1),
            flashsale_store::stock::SeedMode::CreateOrUpdate,
        )
        .await?;
        let view = Arc::new(SaleView::new(sale.clone()));
        Ok(Self::Lua { sale, view })
    }

    /// Publish baseline: a queue of its own, declared like the gateway's.
    async fn publish(env: &Env) -> anyhow::Result<Self> {
        let conn = amqp::connect(
            &flashsale_harness::amqp_url(),
            "flashsale-bench",
            &Default::default(),
        )
        .await?;
        let ch = conn.create_channel().await?;
        let base =
            flashsale_common::SaleRef::new(&env.sale.namespace, &format!("{}-pub", env.sale.name))?;
        amqp::declare(&ch, &base, amqp::QueueType::Quorum).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let body = Arc::new(
            serde_json::json!({"v": 1, "orderId": uuid::Uuid::new_v4(), "namespace": "bench",
                "name": "x", "user": "someone", "quantity": 1, "status": "confirmed",
                "reservedAtMs": 1_763_700_000_000_i64, "holdExpiresAtMs": null})
            .to_string()
            .into_bytes(),
        );
        Ok(Self::Publish(Box::new(PublishTarget {
            conn,
            ch,
            queues: [amqp::orders_queue(&base), amqp::dead_letter_queue(&base)],
            body,
        })))
    }

    /// One round of `n` operations at concurrency `c`; `round` keeps the
    /// buyers of every round distinct. With `pace` (operations per second),
    /// direct publishes start no faster than that.
    async fn run(
        &self,
        env: &Env,
        round: usize,
        n: usize,
        c: usize,
        pace: Option<f64>,
    ) -> anyhow::Result<Stats> {
        match self {
            Self::Lua { view, .. } => {
                let view = Arc::clone(view);
                let redis = env.redis.clone();
                drive(n, c, move |i| {
                    let view = Arc::clone(&view);
                    let mut conn = redis.clone();
                    async move {
                        let id = uuid::Uuid::new_v4().to_string();
                        let user = format!("lua-{round}-{i}");
                        let a = Attempt {
                            order_id: &id,
                            user: &user,
                            quantity: 1,
                            idempotency_key: None,
                            client: &user,
                            place: None,
                        };
                        let r = reserve(&mut conn, &view, &a).await?;
                        let accepted =
                            matches!(r, flashsale_gateway::reserve::Reservation::Accepted { .. });
                        Ok((
                            if accepted { "ok" } else { "refused" }.to_owned(),
                            i64::from(accepted),
                        ))
                    }
                })
                .await
            }
            Self::Publish(target) => {
                let ch = target.ch.clone();
                let queue = target.queues[0].clone();
                let body = Arc::clone(&target.body);
                let start = tokio::time::Instant::now();
                drive(n, c, move |i| {
                    let due = pace.map(|rate| start + Duration::from_secs_f64(i as f64 / rate));
                    let ch = ch.clone();
                    let body = Arc::clone(&body);
                    let queue = queue.clone();
                    // The same properties as the gateway's publishes.
                    let props = amqp::order_properties(&uuid::Uuid::new_v4().to_string());
                    async move {
                        if let Some(due) = due {
                            tokio::time::sleep_until(due).await;
                        }
                        let confirm = ch
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..BasicPublishOptions::default()
                                },
                                &body,
                                props,
                            )
                            .await?
                            .await?;
                        let ok = matches!(confirm, Confirmation::Ack(None));
                        Ok((if ok { "ack" } else { "nack" }.to_owned(), i64::from(ok)))
                    }
                })
                .await
            }
        }
    }

    async fn remove(self, env: &Env) -> anyhow::Result<()> {
        match self {
            Self::Lua { sale, .. } => {
                let mut conn = env.redis.clone();
                flashsale_store::stock::delete_sale(&mut conn, &sale).await?;
            }
            Self::Publish(target) => {
                for q in &target.queues {
                    let _ = target
                        .ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                flashsale_common::amqp::close_quietly(&target.conn, "done").await;
            }
        }
        Ok(())
    }
}

async fn scenario(args: &Args, herd: bool) -> anyhow::Result<()> {
    scenario_with(args, herd, 0).await.map(|_| ())
}

/// Runs one scenario with `sse` idle live-stock clients connected; returns
/// the gateway's attempts per second.
///
/// The baseline and the gateway take turns, `--rounds` times, each with its
/// share of the attempts: a slow patch of the shared machine (or the broker
/// busy with its own housekeeping) then falls on both alike instead of on
/// whichever happened to run at that moment.
async fn scenario_with(args: &Args, herd: bool, sse: usize) -> anyhow::Result<f64> {
    let n = args.attempts;
    let c = args.concurrency;
    let rounds = args.rounds.clamp(1, n.max(1));
    let stock = if herd {
        (n / 100).max(1) as i64
    } else {
        (n * 2) as i64
    };
    let env = Env::new(if herd { "bench-herd" } else { "bench-all" }).await?;
    env.seed(&open_sale(stock, 1, 1)).await?;
    let extra: Vec<&str> = args.gateway_args.iter().map(String::as_str).collect();
    let gw = env.gateway(&extra).await?;
    let title = match (herd, sse) {
        (true, 0) => "thundering herd".to_owned(),
        (true, k) => format!("thundering herd with {k} idle live-stock clients"),
        _ => "all accepted".to_owned(),
    };
    println!("\n== {title}: {n} attempts, {c} in flight, stock {stock}, {rounds} rounds");
    let idle = if sse > 0 {
        let path = format!(
            "/api/v1/sales/{}/{}/events",
            env.sale.namespace, env.sale.name
        );
        Some(idle::IdleClients::open(gw.addr(), &path, sse).await?)
    } else {
        None
    };

    // Warm the gateway without buying, then take turns. Nothing consumes
    // during either run; the worker drains afterwards.
    warm_up(&env.sale_url(&gw), c).await?;
    let base = if herd {
        Baseline::lua(&env, stock).await?
    } else {
        Baseline::publish(&env).await?
    };
    let path = format!(
        "/api/v1/sales/{}/{}/orders",
        env.sale.namespace, env.sale.name
    );
    let mut baseline = Stats::default();
    let mut stats = Stats::default();
    let (mut base_cpu, mut gw_cpu) = (cpu::Sample::default(), cpu::Sample::default());
    let (mut paced_cpu, mut paced_rate) = (cpu::Sample::default(), Vec::new());
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let share = n / rounds + usize::from(round < n % rounds);
        let t0 = cpu::sample();
        let b = base.run(&env, round, share, c, None).await?;
        let t1 = cpu::sample();
        let g = gateway_load(gw.addr(), path.clone(), share, c, &format!("buyer{round}")).await?;
        let t2 = cpu::sample();
        base_cpu.add(&t1.since(&t0));
        gw_cpu.add(&t2.since(&t1));
        if args.paced_baseline && !herd {
            let ok = g.outcomes.get("202").copied().unwrap_or(0);
            let p = base.run(&env, round, share, c, Some(g.rate(ok))).await?;
            paced_cpu.add(&cpu::sample().since(&t2));
            paced_rate.push(p.rate(share));
        }
        let ratio = if herd {
            g.rate(share) / b.rate(share).max(1e-9)
        } else {
            let ok = g.outcomes.get("202").copied().unwrap_or(0);
            g.rate(ok) / b.rate(share).max(1e-9)
        };
        ratios.push(ratio);
        baseline.merge(b);
        stats.merge(g);
    }
    baseline.latencies_us.sort_unstable();
    stats.latencies_us.sort_unstable();
    if let Some(idle) = idle {
        idle.close().await;
    }
    base.remove(&env).await?;
    let worker = env.worker(&[]).await?;

    let accepted = stats.outcomes.get("202").copied().unwrap_or(0);
    println!("{}", stats.line("gateway attempts", n));
    println!("{}", stats.line("gateway accepted", accepted));
    let per_round = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" ");
    // One round that a broker stall hit (on either side) moves the overall
    // ratio; the median of the rounds does not.
    let median = {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    };
    if herd {
        println!("{}", baseline.line("baseline: Lua on Redis", n));
        println!(
            "  ratio gateway attempts/s : direct Lua calls/s = {:.2}   (rounds: {per_round}; median {median:.2})",
            stats.rate(n) / baseline.rate(n).max(1e-9)
        );
    } else {
        println!("{}", baseline.line("baseline: publish+confirm", n));
        println!(
            "  ratio gateway accepted/s : direct publish+confirm/s = {:.2}   (rounds: {per_round}; median {median:.2})",
            stats.rate(accepted) / baseline.rate(n).max(1e-9)
        );
    }
    if let (Some(g), Some(b)) = (gw_cpu.per(n), base_cpu.per(n)) {
        println!("  CPU per attempt, gateway:  {g}");
        println!("  CPU per attempt, baseline: {b}");
    }
    if let Some(p) = paced_cpu.per(n) {
        let rates = paced_rate
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!("  CPU per attempt, baseline at the gateway's rate: {p}   (publishes/s: {rates})");
    }
    println!("  outcomes: {:?}", stats.outcomes);

    let snap = env.snapshot().await?;
    let sold = snap.sold;
    env.wait_persisted(sold, Duration::from_secs(120)).await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    let oversold = (ledger.units - stock).max(0);
    println!(
        "  oversell check: stock {stock}, units sold in Redis {sold}, units in PostgreSQL {}, oversold {oversold}",
        ledger.units
    );
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    if oversold > 0 {
        anyhow::bail!("OVERSOLD by {oversold}");
    }
    Ok(stats.rate(n))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.hold_sse {
        return idle::hold(addr, args.hold_sse_path.clone(), args.hold_sse_count).await;
    }
    if let (Some(target), Some(sale)) = (&args.target, &args.sale) {
        return fire::fire(fire::FireOptions {
            target: target.clone(),
            sale: sale.clone(),
            attempts: args.attempts,
            concurrency: args.concurrency,
            buyers: args.buyers.unwrap_or(args.attempts / 2).max(1),
            database_url: args.database_url.clone(),
        })
        .await;
    }
    println!(
        "flashsale-bench: {} attempts, {} in flight, {} cores",
        args.attempts,
        args.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    // The herd first: the all-accepted run leaves RabbitMQ busy compacting
    // and deleting a large queue for a while.
    if matches!(args.scenario, Scenario::All | Scenario::Herd) {
        let plain = scenario_with(&args, true, 0).await?;
        if args.sse_clients > 0 {
            // A push reaches every client once per stock change (at most 4/s),
            // a fixed cost: compare over a run long enough to show the
            // per-purchase effect, at least 400,000 attempts (a few seconds).
            let long = Args {
                attempts: args.attempts.max(400_000),
                ..args.clone()
            };
            let plain = if long.attempts == args.attempts {
                plain
            } else {
                scenario_with(&long, true, 0).await?
            };
            let with = scenario_with(&long, true, args.sse_clients).await?;
            println!(
                "\n  idle live-stock clients: {} attempts/s with {} idle SSE clients vs {} without = {:.2}",
                with.round(),
                args.sse_clients,
                plain.round(),
                with / plain.max(1e-9)
            );
        }
    }
    if matches!(args.scenario, Scenario::All | Scenario::Queue) {
        queue::run(&queue::Options {
            attempts: args.attempts,
            concurrency: args.concurrency,
            rounds: args.rounds,
            memory_tickets: args.queue_tickets,
        })
        .await?;
    }
    if matches!(args.scenario, Scenario::All | Scenario::Accepted) {
        scenario(&args, false).await?;
    }
    Ok(())
}
