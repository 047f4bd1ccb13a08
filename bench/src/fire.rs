//! `flashsale-bench --target URL --sale ns/name`: a burst of buyers against a
//! running gateway, with a progress bar and a summary table — stock,
//! accepted, rejected by reason, persisted in PostgreSQL, oversold,
//! throughput and latency. Used by `scripts/demo`.

use crate::load;
use flashsale_common::SaleRef;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct FireOptions {
    pub target: String,
    pub sale: SaleRef,
    pub attempts: usize,
    pub concurrency: usize,
    pub buyers: usize,
    pub database_url: String,
}

pub async fn sale_status(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

pub fn bar(done: usize, total: usize, started: Instant) -> String {
    let width = 40;
    let filled = done * width / total.max(1);
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
    format!(
        "\r  [{}{}] {done:>7}/{total}  {rate:>9.0}/s",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

pub async fn fire(o: FireOptions) -> anyhow::Result<()> {
    let base = o.target.trim_end_matches('/').to_owned();
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--target must be http://host:port"))?;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {hostport}"))?;
    let status_url = format!("{base}/api/v1/sales/{}/{}", o.sale.namespace, o.sale.name);
    let client = reqwest::Client::new();
    // A sale with a waiting room is bought through its line.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sale_status(&client, &status_url).await {
            Ok(s) if s.get("queue").is_some() => {
                return crate::line::through_the_line(&o, &client, &status_url).await;
            }
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e),
        }
    }

    // Wait (bounded) for the sale to open.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut said = String::new();
    loop {
        let now = match sale_status(&client, &status_url).await {
            Ok(s) if s["phase"] == "Active" => break,
            Ok(s) => format!(
                "waiting for {} to open (phase {})",
                o.sale,
                s["phase"].as_str().unwrap_or("?")
            ),
            Err(_) => "waiting for the gateway to answer".to_owned(),
        };
        if now != said {
            eprintln!("  {now}");
            said = now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sale did not open within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "  {} is open: {} buyers, {} attempts, {} in flight",
        o.sale, o.buyers, o.attempts, o.concurrency
    );

    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let ticker = {
        let done = Arc::clone(&done);
        let total = o.attempts;
        tokio::spawn(async move {
            loop {
                let d = done.load(Ordering::Relaxed);
                eprint!("{}", bar(d, total, started));
                let _ = std::io::stderr().flush();
                if d >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!();
        })
    };
    let buyers = o.buyers;
    let path = format!("/api/v1/sales/{}/{}/orders", o.sale.namespace, o.sale.name);
    let (samples, secs) = load::post_many(
        load::Target {
            addr,
            path,
            method: "POST",
        },
        o.attempts,
        o.concurrency,
        move |i| format!(r#"{{"user":"buyer-{}","quantity":1}}"#, i % buyers),
        Some(Arc::clone(&done)),
    )
    .await?;
    let _ = ticker.await;

    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut lat: Vec<u64> = Vec::with_capacity(samples.len());
    let mut accepted = 0usize;
    for (status, us, code) in &samples {
        lat.push(*us);
        if *status == 202 {
            accepted += 1;
        } else {
            *by_reason
                .entry(format!("{status} {}", code.as_deref().unwrap_or("?")))
                .or_default() += 1;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };

    // Wait (bounded) for the workers to store every unit the sale took:
    // through this gateway and any other one (several benches, one per
    // gateway pod, as a cluster user drives them).
    let pool = flashsale_common::db::connect(&o.database_url, 2, &Default::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (status, ledger) = loop {
        let status = sale_status(&client, &status_url).await?;
        let l = flashsale_common::db::ledger_counts(&pool, &o.sale).await?;
        if l.units - l.expired_units >= taken(&status) || Instant::now() > deadline {
            break (status, l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stock = status["stock"].as_i64().unwrap_or_default();
    let stored = ledger.units - ledger.expired_units;
    let oversold = (stored - stock).max(0);

    println!();
    println!("  FlashSale summary — {}", o.sale);
    println!("  ┌──────────────────────────────┬──────────────────────────────┐");
    let row = |k: &str, v: String| println!("  │ {k:<28} │ {v:>28} │");
    row("stock", stock.to_string());
    row("accepted (202)", accepted.to_string());
    for (reason, n) in &by_reason {
        row(&format!("rejected {reason}"), n.to_string());
    }
    row("remaining (Redis)", status["remaining"].to_string());
    row(
        "persisted in PostgreSQL",
        format!("{} orders, {} units", ledger.orders, ledger.units),
    );
    row("oversold", oversold.to_string());
    row(
        "throughput",
        format!("{:.0} attempts/s", o.attempts as f64 / secs.max(1e-9)),
    );
    row(
        "latency p50 / p95",
        format!("{:.2} / {:.2} ms", pct(0.5), pct(0.95)),
    );
    row(
        "latency p99 / max",
        format!("{:.2} / {:.2} ms", pct(0.99), pct(1.0)),
    );
    println!("  └──────────────────────────────┴──────────────────────────────┘");
    anyhow::ensure!(oversold == 0, "OVERSOLD by {oversold}");
    anyhow::ensure!(
        stored == taken(&status),
        "{stored} units in PostgreSQL for the {} the sale took",
        taken(&status)
    );
    anyhow::ensure!(
        ledger.orders as usize >= accepted,
        "{} orders in PostgreSQL for the {accepted} accepted here",
        ledger.orders
    );
    Ok(())
}

/// Units the sale took (sold or on hold), from the gateway's view of it.
fn taken(status: &serde_json::Value) -> i64 {
    status["stock"].as_i64().unwrap_or_default() - status["remaining"].as_i64().unwrap_or_default()
}
