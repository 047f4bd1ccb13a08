//! `flashsale-bench --target`, as a cluster user drives a sale with several
//! gateway pods: one bench per gateway. Each checks the sale's total in
//! PostgreSQL, not only what its own gateway accepted.

use flashsale_harness::{Env, buy, http, open_sale};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_at_one_of_two_gateways_checks_the_sales_total() -> anyhow::Result<()> {
    let env = Env::new("bench-target").await?;
    env.seed(&open_sale(40, 1, 1)).await?;
    let (a, b) = (env.gateway(&[]).await?, env.gateway(&[]).await?);
    let worker = env.worker(&[]).await?;
    // Another bench, at the other gateway, took 10 units.
    for n in 0..10 {
        buy(&http(), &env.orders_url(&b), &format!("other-{n}"), 1, None)
            .await?
            .accepted_id()?;
    }
    env.wait_persisted(10, Duration::from_secs(30)).await?;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-bench"))
        .args(["--target", &a.url(), "--sale", &env.sale.to_string()])
        .args(["-n", "30", "-c", "5", "--buyers", "30"])
        .args(["--database-url", &env.db_url])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the bench failed though the sale's total is right:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(stdout.contains("40 orders, 40 units"), "{stdout}");
    worker.shutdown().await?;
    a.shutdown().await?;
    b.shutdown().await?;
    env.cleanup().await
}
