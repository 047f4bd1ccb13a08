//! Live stock over SSE, and the storefront page in a real headless browser
//! (Debian's Chromium driven by playwright-core; `scripts/test` installs
//! both). Screenshots of each state go to `artifacts/storefront/`.

use flashsale_harness::{Env, buy, http, open_sale};
use futures::StreamExt;
use std::time::Duration;

/// Reads SSE `stock` events until one satisfies `want`.
async fn next_event<S>(
    stream: &mut S,
    buf: &mut String,
    want: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value>
where
    S: futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                let v: serde_json::Value = serde_json::from_str(data.trim())?;
                if want(&v) {
                    return Ok(v);
                }
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stock_is_pushed_on_change() -> anyhow::Result<()> {
    let env = Env::new("sse").await?;
    env.seed(&open_sale(5, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let resp = client
        .get(format!("{}/events", env.sale_url(&gw)))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let first = next_event(&mut stream, &mut buf, |_| true).await?;
    assert_eq!(
        (first["remaining"].as_i64(), first["phase"].as_str()),
        (Some(5), Some("Active"))
    );
    for i in 0..5 {
        assert_eq!(
            buy(&client, &env.orders_url(&gw), &format!("u{i}"), 1, None)
                .await?
                .status,
            202
        );
    }
    let last = next_event(&mut stream, &mut buf, |v| v["remaining"] == 0).await?;
    assert_eq!(last["phase"], "SoldOut");
    // The open stream is counted, and no longer once it is closed.
    let clients = "flashsale_gateway_sse_clients";
    assert_eq!(flashsale_harness::metric(&gw.url(), clients).await?, 1.0);
    drop(stream);
    flashsale_harness::eventually(
        "the closed stream uncounted",
        Duration::from_secs(10),
        || async { Ok(flashsale_harness::metric(&gw.url(), clients).await? == 0.0) },
    )
    .await?;
    let unknown = client
        .get(format!("{}/api/v1/sales/e2e/nope/events", gw.url()))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_in_a_real_browser() -> anyhow::Result<()> {
    let env = Env::new("store").await?;
    let users = in_the_browser(&env, None).await?;
    assert!(users.contains("browser@example.com"), "{users:?}");
    env.cleanup().await
}

/// Behind a proxy that signs buyers in, the page asks for no name and the
/// order is the signed-in buyer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_for_signed_in_buyers() -> anyhow::Result<()> {
    let env = Env::new("store-signed").await?;
    let users = in_the_browser(&env, Some("signed-in-buyer-7")).await?;
    assert!(users.contains("signed-in-buyer-7"), "{users:?}");
    assert!(!users.contains("browser@example.com"), "{users:?}");
    env.cleanup().await
}

/// Runs `harness/browser/<script>` with node, bounded to two minutes, with
/// `args` after the script and the artifacts directory last but for
/// `extra`, and `env`; its log goes to `artifacts/node.log`. Fails with the
/// log unless it exits 0 and left every screenshot of `shots`.
async fn run_browser_script(
    script: &str,
    args: &[String],
    artifacts: &std::path::Path,
    extra: &[String],
    env: &[(&str, &str)],
    shots: &[&str],
) -> anyhow::Result<()> {
    // A missing set-up fails at once, saying how to install it.
    let root = flashsale_harness::repo_root();
    anyhow::ensure!(
        root.join("harness/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run scripts/test, or `npm ci` in harness/browser"
    );
    // The script logs each step to a file; a stuck step is killed after a
    // bounded wait and named in the failure.
    std::fs::create_dir_all(artifacts)?;
    let log_path = artifacts.join("node.log");
    let log = std::fs::File::create(&log_path)?;
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("harness/browser").join(script))
        .args(args)
        .arg(artifacts)
        .args(extra)
        .envs(env.iter().copied())
        .current_dir(root.join("harness/browser"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run node (scripts/test installs it): {e}"))?;
    let limit = Duration::from_secs(120);
    let status = tokio::time::timeout(limit, node.wait()).await;
    if status.is_err() {
        let _ = node.kill().await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = status.map_err(|_| {
        anyhow::anyhow!("the browser test did not finish within {limit:?}; its log:\n{log}")
    })??;
    anyhow::ensure!(status.success(), "browser test failed:\n{log}");
    for shot in shots {
        anyhow::ensure!(artifacts.join(shot).exists(), "missing screenshot {shot}");
    }
    Ok(())
}

/// Runs `harness/browser/storefront.mjs` against a sale of 4 units served by a
/// gateway (with `--user-header X-Authenticated-User` when `signed_in` names
/// the buyer the browser's requests carry, as a signing-in proxy would add
/// it) and returns the users of the orders PostgreSQL stored.
async fn in_the_browser(
    env: &Env,
    signed_in: Option<&str>,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let root = flashsale_harness::repo_root();
    let stock = 4;
    let mut cfg = open_sale(stock, 1, 1);
    cfg.hold_ms = 120_000;
    env.seed(&cfg).await?;
    let header_args: &[&str] = if signed_in.is_some() {
        &["--user-header", "X-Authenticated-User"]
    } else {
        &[]
    };
    let gw = env.gateway(header_args).await?;
    let worker = env.worker(&[]).await?;
    let page = format!(
        "{}/sales/{}/{}",
        gw.url(),
        env.sale.namespace,
        env.sale.name
    );
    let html = http().get(&page).send().await?;
    assert_eq!(html.status(), 200);
    // No other site may frame the page, and only its own script runs (the
    // browser below runs it under this policy).
    let header = |name: &str| {
        html.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = header("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = html.text().await?;
    assert!(html.contains("<label for=\"user\""));
    let marker = format!(
        "data-user-header=\"{}\"",
        if signed_in.is_some() {
            "x-authenticated-user"
        } else {
            ""
        }
    );
    assert!(html.contains(&marker), "{marker}");

    let artifacts = root.join(format!(
        "artifacts/storefront{}",
        if signed_in.is_some() {
            "-signed-in"
        } else {
            ""
        }
    ));
    let signed_in_env: Vec<(&str, &str)> =
        signed_in.map(|u| ("SIGNED_IN_AS", u)).into_iter().collect();
    run_browser_script(
        "storefront.mjs",
        &[page, env.sale_url(&gw)],
        &artifacts,
        &[stock.to_string()],
        &signed_in_env,
        &["1-open.png", "2-reserved.png", "3-sold-out.png"],
    )
    .await?;
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.remaining, snap.sold + snap.reserved),
        (0, stock),
        "the page never oversells"
    );
    env.wait_persisted(stock, Duration::from_secs(30)).await?;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM orders WHERE sale_namespace = $1 AND sale_name = $2",
    )
    .bind(&env.sale.namespace)
    .bind(&env.sale.name)
    .fetch_all(&env.pool)
    .await?;
    gw.shutdown().await?;
    worker.shutdown().await?;
    Ok(users.into_iter().collect())
}

/// The storefront's waiting room in Debian's Chromium (`harness/browser/queue.mjs`):
/// the page joins the line with a proof of work, shows its place, buys
/// with its pass when its turn comes, and a page behind the stock reads
/// "Sold out" once the last unit is sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storefront_waiting_room_in_a_real_browser() -> anyhow::Result<()> {
    let env = Env::new("store-queue").await?;
    let mut cfg = open_sale(4, 1, 1);
    cfg.admission = flashsale_store::stock::AdmissionConfig {
        mode: flashsale_api::sale::AdmissionMode::Fifo,
        open_ms: flashsale_harness::now_ms() - 60_000,
        per_second: 2,
        pass_ms: 120_000,
        challenge_bits: 10,
    };
    env.seed(&cfg).await?;
    let gw = env
        .gateway(&[
            "--pass-key",
            "a pass key of at least thirty-two bytes, for tests",
        ])
        .await?;
    let worker = env.worker(&[]).await?;
    let page = format!(
        "{}/sales/{}/{}",
        gw.url(),
        env.sale.namespace,
        env.sale.name
    );
    let artifacts = flashsale_harness::repo_root().join("artifacts/storefront-queue");
    run_browser_script(
        "queue.mjs",
        &[page, env.sale_url(&gw)],
        &artifacts,
        &[],
        &[],
        &[
            "queue-1-in-line.png",
            "queue-2-bought.png",
            "queue-3-sold-out.png",
        ],
    )
    .await?;
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.remaining, snap.sold),
        (0, 4),
        "the line never oversells"
    );
    env.wait_persisted(4, Duration::from_secs(30)).await?;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
