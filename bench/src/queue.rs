//! The waiting-room scenario: joins per second; standings answered per
//! second against the sold-out answers of a herd (both from memory) on
//! the same machine in the same run; the time from the last unit sold to
//! every waiter reading `sold_out`; what a proof of work costs; and the
//! Redis memory a million waiting tickets take.

use crate::load;
use flashsale_api::sale::AdmissionMode;
use flashsale_harness::{Env, open_sale};
use flashsale_store::stock::AdmissionConfig;
use std::time::{Duration, Instant};

const KEY: &str = "the benchmark's pass key, thirty-two bytes or more";

/// Requests per second of a load's samples that got `status`.
fn rate(samples: &[load::Sample], secs: f64, status: u16) -> f64 {
    samples.iter().filter(|s| s.0 == status).count() as f64 / secs.max(1e-9)
}

/// An open sale of 10 units with a FIFO line open for a minute already.
fn with_line(per_second: u32, pass_ms: i64) -> flashsale_store::stock::SeedConfig {
    let mut cfg = open_sale(10, 1, 1);
    cfg.admission = AdmissionConfig {
        mode: AdmissionMode::Fifo,
        open_ms: flashsale_harness::now_ms() - 60_000,
        per_second,
        pass_ms,
        challenge_bits: 0,
    };
    cfg
}

pub struct Options {
    pub attempts: usize,
    pub concurrency: usize,
    pub rounds: usize,
    /// Tickets whose Redis memory is measured (0: skip).
    pub memory_tickets: usize,
}

pub async fn run(o: &Options) -> anyhow::Result<()> {
    let (n, c) = (o.attempts, o.concurrency);
    let rounds = o.rounds.max(1);
    println!(
        "\n== waiting room: {n} joins, {n} standings and {n} sold-out answers per round, {c} in flight, {rounds} rounds"
    );

    // A line of stock 10 that lets 10 through: everyone else waits.
    let line = Env::new("bench-queue").await?;
    line.seed(&with_line(1_000, 600_000)).await?;
    let gw = line.gateway(&["--pass-key", KEY]).await?;
    // The herd's baseline: a sold-out sale on a gateway of its own.
    let herd = Env::new("bench-queue-herd").await?;
    herd.seed(&open_sale(0, 1, 1)).await?;
    let herd_gw = herd.gateway(&[]).await?;
    let base = format!("/api/v1/sales/{}/{}", line.sale.namespace, line.sale.name);

    let (mut joins, mut join_secs) = (0.0, 0.0);
    let (mut polls, mut poll_secs, mut sold_out, mut sold_out_secs) = (0.0, 0.0, 0.0, 0.0);
    let mut last_ticket = String::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (samples, secs) = load::post_many(
            load::Target {
                addr: gw.addr(),
                path: format!("{base}/queue"),
                method: "POST",
            },
            n,
            c,
            |_| "{}".to_owned(),
            None,
        )
        .await?;
        joins += rate(&samples, secs, 201) * secs;
        join_secs += secs;
        if round == 0 {
            // The last to join waits behind everyone.
            let r: serde_json::Value = flashsale_harness::http()
                .post(format!("{}{base}/queue", gw.url()))
                .json(&serde_json::json!({}))
                .send()
                .await?
                .json()
                .await?;
            last_ticket = r["ticket"].as_str().unwrap_or_default().to_owned();
        }
        let (s, secs) = load::post_many(
            load::Target {
                addr: gw.addr(),
                path: format!("{base}/queue/{last_ticket}"),
                method: "GET",
            },
            n,
            c,
            |_| String::new(),
            None,
        )
        .await?;
        let p = rate(&s, secs, 200);
        polls += p * secs;
        poll_secs += secs;
        let herd_path = format!(
            "/api/v1/sales/{}/{}/orders",
            herd.sale.namespace, herd.sale.name
        );
        let (s, secs) = load::post_many(
            load::Target {
                addr: herd_gw.addr(),
                path: herd_path,
                method: "POST",
            },
            n,
            c,
            |i| format!(r#"{{"user":"herd-{i}","quantity":1}}"#),
            None,
        )
        .await?;
        let h = rate(&s, secs, 409);
        sold_out += h * secs;
        sold_out_secs += secs;
        ratios.push(p / h.max(1e-9));
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  joins                          {:>8.0}/s",
        joins / join_secs
    );
    println!(
        "  standings answered             {:>8.0}/s   sold-out answers of a herd {:>8.0}/s",
        polls / poll_secs,
        sold_out / sold_out_secs
    );
    println!(
        "  ratio standings/s : sold-out answers/s = {:.2}   (rounds: {})",
        (polls / poll_secs) / (sold_out / sold_out_secs).max(1e-9),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    sold_out_told(&line, &gw).await?;
    gw.shutdown().await?;
    herd_gw.shutdown().await?;
    line.cleanup().await?;
    herd.cleanup().await?;
    proof_of_work();
    if o.memory_tickets > 0 {
        memory(o.memory_tickets).await?;
    }
    Ok(())
}

/// Sells the last units and times how long until every waiter reads
/// `sold_out` (each polled in turn until it does).
async fn sold_out_told(env: &Env, gw: &flashsale_gateway::Gateway) -> anyhow::Result<()> {
    let client = flashsale_harness::http();
    let url = format!("{}/queue", env.sale_url(gw));
    // The first ten places hold the passes: they buy the ten units.
    let signer = flashsale_gateway::admission::Signer::new(KEY.as_bytes());
    let mut conn = env.redis.clone();
    let ids = flashsale_store::queue::tickets(&mut conn, &env.sale, 2_010).await?;
    let ticket = |a: usize| {
        signer.sign(
            flashsale_gateway::admission::Kind::Ticket,
            &flashsale_gateway::admission::Ticket {
                s: env.sale.to_string(),
                a: a as u64,
                i: ids[a - 1].clone(),
                j: 0,
                u: None,
            },
        )
    };
    let waiters: Vec<String> = (11..=2_010).map(ticket).collect();
    let mut last = Instant::now();
    for a in 1..=10 {
        let s: serde_json::Value = client
            .get(format!("{url}/{}", ticket(a)))
            .send()
            .await?
            .json()
            .await?;
        let pass = s["pass"].as_str().unwrap_or_default().to_owned();
        let r = client
            .post(env.orders_url(gw))
            .bearer_auth(pass)
            .json(&serde_json::json!({"quantity": 1}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().as_u16() == 202,
            "place {a} could not buy: {}",
            r.status()
        );
        last = Instant::now();
    }
    let mut told = vec![false; waiters.len()];
    let mut slowest = Duration::ZERO;
    while told.iter().any(|t| !t) {
        anyhow::ensure!(
            last.elapsed() < Duration::from_secs(30),
            "waiters not told in 30 s"
        );
        for (i, t) in waiters.iter().enumerate() {
            if told[i] {
                continue;
            }
            let s: serde_json::Value = client
                .get(format!("{url}/{t}"))
                .send()
                .await?
                .json()
                .await?;
            if s["state"] == "sold_out" {
                told[i] = true;
                slowest = slowest.max(last.elapsed());
            }
        }
    }
    println!(
        "  last unit sold to all {} waiters told sold_out: {:.0} ms (the last one read it then; polling them all takes part of it)",
        waiters.len(),
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Hashes a second on one core of this machine, and what a difficulty
/// costs in expected hashes.
fn proof_of_work() {
    let token = "a challenge token of the usual length, about one hundred and fifty characters, signed by the gateway for one sale";
    let started = Instant::now();
    let mut hashes = 0u64;
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..10_000 {
            std::hint::black_box(flashsale_gateway::admission::solves(
                token,
                &n.to_string(),
                64,
            ));
            n += 1;
        }
        hashes += 10_000;
    }
    let per_second = hashes as f64 / started.elapsed().as_secs_f64();
    println!(
        "  proof of work: {per_second:.0} SHA-256/s on one core of this machine (native code)"
    );
    for bits in [12u32, 16, 20] {
        let expected = 2f64.powi(bits as i32);
        println!(
            "    {bits} bits: {expected:.0} hashes expected, {:.2} s on one such core; a farm of 100 cores joins {:.0} times a second",
            expected / per_second,
            100.0 * per_second / expected
        );
    }
}

/// Redis memory of `n` waiting tickets: joins through the join script,
/// measured with INFO before and after.
async fn memory(n: usize) -> anyhow::Result<()> {
    let env = Env::new("bench-queue-memory").await?;
    env.seed(&with_line(1, 60_000)).await?;
    let mut conn = env.redis.clone();
    let used = |conn: &mut flashsale_store::redisconn::RedisConn| {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap_or(0),
            )
        }
    };
    flashsale_store::scripts::JOIN
        .prepare_invoke()
        .load_async(&mut conn)
        .await?;
    let before = used(&mut conn).await?;
    let started = Instant::now();
    let keys = flashsale_store::keys::SaleKeys::new(&env.sale);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for _ in chunk {
            let id = flashsale_gateway::admission::random_id();
            pipe.cmd("EVALSHA")
                .arg(flashsale_store::scripts::JOIN.get_hash())
                .arg(5)
                .arg(keys.sale())
                .arg(keys.queue())
                .arg(keys.line())
                .arg(keys.queue_users())
                .arg(keys.pow())
                .arg(id)
                .arg("")
                .arg("")
                .arg(0)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let after = used(&mut conn).await?;
    let counts = flashsale_store::queue::counts(&mut conn, &env.sale).await?;
    println!(
        "  Redis memory of {} waiting tickets: {:.1} MB ({:.0} bytes a ticket); joined through the script in {:.1} s",
        counts.joined,
        (after - before) as f64 / 1e6,
        (after - before) as f64 / counts.joined.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    env.cleanup().await
}
