//! Local mode (`flashsale-operator local`), the engine of
//! `scripts/demo`, as a real process: it seeds and opens a sale from a
//! manifest, runs the real gateway and worker binaries next to it, and with
//! `--delete-on-exit` a SIGTERM deletes the sale as a cluster would: every
//! order stored, then its queues and Redis keys gone.
//!
//! The gateway and worker binaries must sit next to the operator's, as they
//! do after a workspace build (`scripts/test`, `cargo build`).

use flashsale_common::amqp;
use flashsale_harness::proxy::{Mode, TcpProxy};
use flashsale_harness::{Env, amqp_url, buy, eventually, http, queue_messages, redis_url, sigterm};
use flashsale_store::stock;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn timestamp(ms: i64) -> anyhow::Result<String> {
    Ok(jiff::Timestamp::from_millisecond(ms)?.to_string())
}

/// A local operator of the test's own: a sale of 5 units open from 10 s
/// ago until `open_for_ms` from now, run with `flags`, its output in
/// `<dir>/operator.log`. Returns the process, the gateway's address and
/// that directory, which [`finish`] removes.
fn start_local(
    env: &Env,
    open_for_ms: i64,
    flags: &[&str],
) -> anyhow::Result<(tokio::process::Child, String, PathBuf)> {
    start_local_on(env, &redis_url(), open_for_ms, flags)
}

/// The same, with Redis at `redis`.
fn start_local_on(
    env: &Env,
    redis: &str,
    open_for_ms: i64,
    flags: &[&str],
) -> anyhow::Result<(tokio::process::Child, String, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("flashsale-{}", env.sale.name));
    let operator = Path::new(env!("CARGO_BIN_EXE_flashsale-operator"));
    for sibling in ["flashsale-gateway", "flashsale-worker"] {
        let path = operator.with_file_name(sibling);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: local mode runs it from beside the operator; build the workspace's binaries first (cargo build --bins)",
            path.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    let now = flashsale_harness::now_ms();
    let manifest = format!(
        r#"apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {{name: {name}, namespace: {ns}}}
spec:
  product: {{sku: SKU-1, name: Thing, price: "9.99", currency: EUR}}
  stock: 5
  window: {{start: "{start}", end: "{end}"}}
  limits: {{perUser: 1, perOrder: 1}}
"#,
        name = env.sale.name,
        ns = env.sale.namespace,
        start = timestamp(now - 10_000)?,
        end = timestamp(now + open_for_ms)?,
    );
    let file = dir.join("sale.yaml");
    std::fs::write(&file, manifest)?;
    let gateway = format!("127.0.0.1:{}", free_port()?);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("operator.log"))?;
    let child = tokio::process::Command::new(operator)
        .args(["local", "-f"])
        .arg(&file)
        .args(flags)
        .args(["--gateway-listen", &gateway])
        .args(["--worker-listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .args(["--redis-url", redis, "--amqp-url", &amqp_url()])
        .args(["--database-url", &env.db_url])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    Ok((child, gateway, dir))
}

/// Whether the sale's Redis keys, orders queue and dead-letter queue are
/// there: `Some(true)` all of them, `Some(false)` none, `None` some.
async fn sale_state_present(env: &Env) -> anyhow::Result<Option<bool>> {
    let mut conn = env.redis.clone();
    let mut present = vec![stock::read(&mut conn, &env.sale).await?.is_some()];
    for queue in [
        amqp::orders_queue(&env.sale),
        amqp::dead_letter_queue(&env.sale),
    ] {
        present.push(queue_messages(&queue).await?.is_some());
    }
    Ok(if present.iter().all(|p| *p) {
        Some(true)
    } else if present.iter().all(|p| !*p) {
        Some(false)
    } else {
        None
    })
}

/// Stops a local operator run with `--delete-on-exit` and checks that it
/// exited cleanly and deleted the sale's Redis keys and queues.
async fn stop_and_expect_deleted(
    env: &Env,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let status = sigterm(child, Duration::from_secs(90)).await?;
    anyhow::ensure!(
        status.success(),
        "local mode did not exit cleanly: {status}"
    );
    anyhow::ensure!(
        sale_state_present(env).await? == Some(false),
        "the sale's Redis keys or queues are still there after the SIGTERM"
    );
    Ok(())
}

/// Ends a local operator's test: prints its log when `result` is a
/// failure, and always stops the process (and so the processes it runs)
/// and removes `dir`.
async fn finish(
    dir: &Path,
    child: &mut tokio::process::Child,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    if result.is_err() {
        let log = std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default();
        eprintln!("operator log:\n{log}");
    }
    // A graceful stop first: the operator stops the gateway and worker it
    // started (a SIGKILL would leave them running, orphaned).
    if child.try_wait().ok().flatten().is_none() {
        let _ = sigterm(child, Duration::from_secs(60)).await;
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_runs_a_sale_and_deletes_it_on_sigterm() -> anyhow::Result<()> {
    let env = Env::new("local").await?;
    let (mut child, gateway, dir) = start_local(&env, 3_600_000, &["--delete-on-exit"])?;
    let check = async {
        let client = http();
        let sale_url = format!("http://{gateway}/api/v1/sales/{}", env.sale);
        eventually(
            "the local gateway serves the open sale",
            Duration::from_secs(60),
            || async {
                let Ok(resp) = client.get(&sale_url).send().await else {
                    return Ok(false);
                };
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                Ok(body["phase"] == "Active")
            },
        )
        .await?;
        let orders = format!("{sale_url}/orders");
        let mut accepted = 0;
        for user in 0..6 {
            let a = buy(&client, &orders, &format!("u{user}"), 1, None).await?;
            accepted += usize::from(a.status == 202);
        }
        anyhow::ensure!(accepted == 5, "stock 5, yet {accepted} accepted");
        eventually("5 orders stored", Duration::from_secs(30), || async {
            Ok(env.persisted_orders().await? == 5)
        })
        .await?;

        stop_and_expect_deleted(&env, &mut child).await?;
        let stored = env.persisted_orders().await?;
        anyhow::ensure!(stored == 5, "{stored} of 5 orders left in PostgreSQL");
        anyhow::Ok(())
    };
    let result = check.await;
    finish(&dir, &mut child, result).await?;
    env.cleanup().await
}

/// `--keep --delete-on-exit` (what `scripts/demo --keep` runs): a sale
/// that ended and drained stays, keys and queues, while the operator runs
/// on; a SIGTERM then deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_with_keep_outlives_the_sale_and_deletes_it_on_sigterm() -> anyhow::Result<()> {
    let env = Env::new("local-keep").await?;
    let (mut child, _, dir) = start_local(&env, 2_000, &["--keep", "--delete-on-exit"])?;
    let check = async {
        let log = dir.join("operator.log");
        eventually(
            "the kept run says its sale ended and drained",
            Duration::from_secs(60),
            || async {
                let text = std::fs::read_to_string(&log)?;
                Ok(text.contains("every sale ended and drained; running on until stopped"))
            },
        )
        .await?;
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the operator exited though --keep was given"
        );
        anyhow::ensure!(
            sale_state_present(&env).await? == Some(true),
            "the ended sale's Redis keys and queues are gone before the operator was stopped"
        );

        stop_and_expect_deleted(&env, &mut child).await
    };
    let result = check.await;
    finish(&dir, &mut child, result).await?;
    env.cleanup().await
}

/// Waits until the local gateway serves the sale in `phase`.
async fn serves(gateway: &str, env: &Env, phase: &str) -> anyhow::Result<()> {
    let client = http();
    let sale_url = format!("http://{gateway}/api/v1/sales/{}", env.sale);
    eventually(
        &format!("the local gateway serves the sale as {phase}"),
        Duration::from_secs(60),
        || async {
            let Ok(resp) = client.get(&sale_url).send().await else {
                return Ok(false);
            };
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            Ok(body["phase"] == phase)
        },
    )
    .await
}

/// Waits until the operator's output says `text`.
async fn says(dir: &Path, text: &str) -> anyhow::Result<()> {
    let log = dir.join("operator.log");
    eventually(
        &format!("local mode says {text:?}"),
        Duration::from_secs(60),
        || async { Ok(std::fs::read_to_string(&log)?.contains(text)) },
    )
    .await
}

/// A restarted local run remembers which sales it seeded (its state file
/// beside the manifest): a sale Redis lost while it was stopped is told
/// lost, never seeded again with its full stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_local_run_never_seeds_a_sale_redis_lost_again() -> anyhow::Result<()> {
    let env = Env::new("local-restart").await?;
    let (mut child, gateway, dir) = start_local(&env, 3_600_000, &[])?;
    let check = async {
        serves(&gateway, &env, "Active").await?;
        let client = http();
        let orders = format!("http://{gateway}/api/v1/sales/{}/orders", env.sale);
        for user in 0..5 {
            buy(&client, &orders, &format!("u{user}"), 1, None)
                .await?
                .accepted_id()?;
        }
        let status = sigterm(&mut child, Duration::from_secs(60)).await?;
        anyhow::ensure!(
            status.success(),
            "local mode did not exit cleanly: {status}"
        );
        // Redis loses the sale while local mode is stopped.
        stock::delete_sale(&mut env.redis.clone(), &env.sale).await?;

        let (again, gateway, _) = start_local(&env, 3_600_000, &[])?;
        child = again;
        says(&dir, "warning RedisStateLost").await?;
        let answer = buy(
            &client,
            &format!("http://{gateway}/api/v1/sales/{}/orders", env.sale),
            "late",
            1,
            None,
        )
        .await;
        anyhow::ensure!(
            stock::read(&mut env.redis.clone(), &env.sale)
                .await?
                .is_none(),
            "the sold-out sale was seeded again with its 5 units (a buyer got {:?})",
            answer.map(|a| a.status)
        );
        anyhow::Ok(())
    };
    let result = check.await;
    finish(&dir, &mut child, result).await?;
    env.cleanup().await
}

/// Redis unreachable under a local run: it retries as the controller does
/// and keeps its gateway and worker running; once Redis is back, the sale
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_run_rides_out_a_redis_outage() -> anyhow::Result<()> {
    let env = Env::new("local-outage").await?;
    let proxy = TcpProxy::start(flashsale_harness::proxy::authority(&redis_url(), 6379)?).await?;
    let (mut child, gateway, dir) =
        start_local_on(&env, &proxy.url(&redis_url())?, 3_600_000, &[])?;
    let check = async {
        serves(&gateway, &env, "Active").await?;
        proxy.set(Mode::Refuse);
        says(&dir, "reconcile failed, retrying in 3 s").await?;
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "local mode exited on a Redis outage"
        );
        proxy.set(Mode::Pass);
        let client = http();
        let orders = format!("http://{gateway}/api/v1/sales/{}/orders", env.sale);
        eventually(
            "a purchase succeeds once Redis is back",
            Duration::from_secs(30),
            || async { Ok(buy(&client, &orders, "back", 1, None).await?.status == 202) },
        )
        .await?;
        let log = std::fs::read_to_string(dir.join("operator.log"))?;
        anyhow::ensure!(
            log.matches("started flashsale-gateway").count() == 1,
            "the gateway was stopped and started again during the outage:\n{log}"
        );
        anyhow::Ok(())
    };
    let result = check.await;
    finish(&dir, &mut child, result).await?;
    env.cleanup().await
}
