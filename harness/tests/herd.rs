//! Thundering herd: many more buyers than units, hundreds in flight.
//! Invariants: never oversold, every 202 reaches PostgreSQL exactly once.

use flashsale_harness::{Env, by_status, herd, open_sale};
use std::collections::HashSet;
use std::time::Duration;

async fn run_herd(
    stock: i64,
    attempts: usize,
    quantities: &[u32],
    per_user: u32,
) -> anyhow::Result<()> {
    let env = Env::new("herd").await?;
    env.seed(&open_sale(stock, per_user, per_user)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;

    let purchases = (0..attempts)
        .map(|i| (format!("buyer-{i}"), quantities[i % quantities.len()], None))
        .collect();
    let answers = herd(&env.orders_url(&gw), purchases, 200).await?;

    let counts = by_status(&answers);
    let accepted: Vec<_> = answers.iter().filter(|a| a.status == 202).collect();
    let units: i64 = accepted
        .iter()
        .map(|a| a.body["quantity"].as_i64().unwrap_or(0))
        .sum();
    // Every answer is either accepted or refused for lack of stock.
    assert_eq!(
        counts.get(&202).copied().unwrap_or(0) + counts.get(&409).copied().unwrap_or(0),
        attempts,
        "unexpected statuses: {counts:?}"
    );
    assert!(
        units <= stock,
        "oversold: {units} units accepted for stock {stock}"
    );
    let ids: HashSet<_> = accepted
        .iter()
        .map(|a| a.body["orderId"].to_string())
        .collect();
    assert_eq!(ids.len(), accepted.len(), "an order id was given twice");

    let snap = env.snapshot().await?;
    assert_eq!(snap.sold, units, "Redis sold count differs from the 202s");
    assert_eq!(snap.remaining, stock - units);
    if quantities == [1] {
        assert_eq!(units, stock, "stock should sell out exactly: {counts:?}");
    } else {
        // Mixed quantities may leave fewer units than the smallest ask.
        assert!(snap.remaining < i64::from(*quantities.iter().max().unwrap_or(&1)));
    }

    env.wait_persisted(accepted.len() as i64, Duration::from_secs(60))
        .await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!(
        ledger.orders,
        accepted.len() as i64,
        "rows in PostgreSQL != 202 answers"
    );
    assert_eq!(ledger.units, units, "units in PostgreSQL != units accepted");
    let stored: HashSet<_> = env
        .stored_order_ids()
        .await?
        .into_iter()
        .map(|id| format!("\"{id}\""))
        .collect();
    assert_eq!(
        stored, ids,
        "stored order ids differ from the accepted ones"
    );

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buyers_for_one_hundred_units() -> anyhow::Result<()> {
    run_herd(100, 10_000, &[1], 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_quantities_for_one_thousand_units() -> anyhow::Result<()> {
    run_herd(1_000, 10_000, &[1, 2, 3], 3).await
}
