//! `flashsale-bench --target URL --sale ns/name` on a sale with a waiting
//! room: a crowd joins the line (solving the proof of work), follows its
//! standing, and buys with its pass when its turn comes. Prints the line's
//! progress every second and a summary: what sold, who was told sold out
//! and how soon, and whether the ledger holds exactly the stock. Used by
//! `scripts/demo --queue`.

use crate::fire::{FireOptions, sale_status};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A buyer of the crowd.
struct Buyer {
    ticket: String,
    place: Option<u64>,
    state: String,
    bought: bool,
}

pub async fn through_the_line(
    o: &FireOptions,
    client: &reqwest::Client,
    status_url: &str,
) -> anyhow::Result<()> {
    let queue = format!("{status_url}/queue");
    let orders = format!("{status_url}/orders");
    let n = o.buyers;
    // Join once the line opens.
    let deadline = Instant::now() + Duration::from_secs(300);
    let crowd: Vec<anyhow::Result<Buyer>> = loop {
        let first = join(client, &queue).await;
        match first {
            Ok(b) => {
                eprintln!("  the line of {} is open: {n} buyers join", o.sale);
                let started = Instant::now();
                let mut rest: Vec<anyhow::Result<Buyer>> = futures::stream::iter(1..n)
                    .map(|_| join(client, &queue))
                    .buffer_unordered(o.concurrency.min(64))
                    .collect()
                    .await;
                rest.push(Ok(b));
                eprintln!(
                    "  {n} joined in {:.1} s (each solved the proof of work)",
                    started.elapsed().as_secs_f64()
                );
                break rest;
            }
            Err(e) => {
                anyhow::ensure!(Instant::now() < deadline, "cannot join the line: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut crowd = crowd.into_iter().collect::<anyhow::Result<Vec<Buyer>>>()?;

    let started = Instant::now();
    let mut last_sale: Option<Instant> = None;
    let mut all_told: Option<Instant> = None;
    let mut said = Instant::now() - Duration::from_secs(1);
    let mut admitted_at: Vec<(u64, i64)> = Vec::new();
    loop {
        let open: Vec<usize> = (0..crowd.len())
            .filter(|&i| {
                !matches!(crowd[i].state.as_str(), "sold_out" | "ended" | "expired")
                    && !crowd[i].bought
            })
            .collect();
        if open.is_empty() {
            all_told.get_or_insert_with(Instant::now);
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the line did not end within 10 minutes"
        );
        let answers: Vec<(usize, anyhow::Result<Value>)> = futures::stream::iter(open)
            .map(|i| {
                let url = format!("{queue}/{}", crowd[i].ticket);
                async move { (i, standing(client, &url).await) }
            })
            .buffer_unordered(o.concurrency.min(64))
            .collect()
            .await;
        for (i, answer) in answers {
            let Ok(s) = answer else { continue };
            let b = &mut crowd[i];
            b.state = s["state"].as_str().unwrap_or("?").to_owned();
            b.place = s["place"].as_u64().or(b.place);
            if b.state == "admitted" && !b.bought {
                let r = client
                    .post(&orders)
                    .bearer_auth(s["pass"].as_str().unwrap_or_default())
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await?;
                if r.status().as_u16() == 202 {
                    b.bought = true;
                    last_sale = Some(Instant::now());
                    // The pass runs from the admission step: its expiry
                    // orders the admissions exactly.
                    admitted_at.push((
                        b.place.unwrap_or(0),
                        s["passExpiresAtMs"].as_i64().unwrap_or(0),
                    ));
                }
            }
        }
        if said.elapsed() >= Duration::from_secs(1) {
            said = Instant::now();
            let count = |st: &str| crowd.iter().filter(|b| b.state == st && !b.bought).count();
            eprintln!(
                "  line: {:>6} waiting  {:>6} admitted  {:>6} bought  {:>6} told sold out  {:>5} passes ran out",
                count("waiting"),
                count("admitted"),
                crowd.iter().filter(|b| b.bought).count(),
                count("sold_out"),
                count("expired"),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = sale_status(client, status_url).await?;
    let stock = status["stock"].as_i64().unwrap_or_default();
    let pool = flashsale_common::db::connect(&o.database_url, 2, &Default::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ledger = loop {
        let l = flashsale_common::db::ledger_counts(&pool, &o.sale).await?;
        if l.units >= stock - status["remaining"].as_i64().unwrap_or_default()
            || Instant::now() > deadline
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bought = crowd.iter().filter(|b| b.bought).count();
    let told = crowd.iter().filter(|b| b.state == "sold_out").count();
    // Admitted in line order: no place let through before an earlier one.
    admitted_at.sort();
    let out_of_order = admitted_at.windows(2).filter(|w| w[1].1 < w[0].1).count();
    println!();
    println!("  FlashSale waiting room summary — {}", o.sale);
    println!("  ┌──────────────────────────────┬──────────────────────────────┐");
    let row = |k: &str, v: String| println!("  │ {k:<28} │ {v:>28} │");
    row("stock", stock.to_string());
    row("buyers in line", crowd.len().to_string());
    row("bought with a pass", bought.to_string());
    row("told sold out", told.to_string());
    row(
        "last sale to all told",
        match (last_sale, all_told) {
            (Some(s), Some(t)) => format!(
                "{:.0} ms",
                t.saturating_duration_since(s).as_secs_f64() * 1000.0
            ),
            _ => "-".to_owned(),
        },
    );
    row("admitted out of line order", out_of_order.to_string());
    row(
        "persisted in PostgreSQL",
        format!("{} orders, {} units", ledger.orders, ledger.units),
    );
    row("oversold", (ledger.units - stock).max(0).to_string());
    println!("  └──────────────────────────────┴──────────────────────────────┘");
    anyhow::ensure!(
        ledger.units <= stock,
        "OVERSOLD by {}",
        ledger.units - stock
    );
    anyhow::ensure!(
        out_of_order == 0,
        "{out_of_order} buyers admitted out of line order"
    );
    Ok(())
}

async fn standing(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// Joins the line, solving its challenge when it sets one.
async fn join(client: &reqwest::Client, queue: &str) -> anyhow::Result<Buyer> {
    let c: Value = client
        .get(format!("{queue}/challenge"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = c["challenge"].as_str().unwrap_or_default().to_owned();
    let bits = u8::try_from(c["bits"].as_u64().unwrap_or(0)).unwrap_or(0);
    let body = if bits == 0 {
        json!({})
    } else {
        let t = token.clone();
        let solution =
            tokio::task::spawn_blocking(move || flashsale_gateway::admission::solve(&t, bits))
                .await?;
        json!({"challenge": token, "solution": solution})
    };
    let r = client.post(queue).json(&body).send().await?;
    let status = r.status().as_u16();
    let b: Value = r.json().await.unwrap_or_default();
    anyhow::ensure!(status == 201 || status == 200, "join: {status} {b}");
    Ok(Buyer {
        ticket: b["ticket"].as_str().unwrap_or_default().to_owned(),
        place: b["place"].as_u64(),
        state: b["state"].as_str().unwrap_or("waiting").to_owned(),
        bought: false,
    })
}
