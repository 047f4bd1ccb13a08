//! The one sequence both executors follow (`apply::execute`), seen through
//! an executor that records what it is asked, on the real stores: no
//! mocked API server.

use flashsale_api::sale::{FlashSale, FlashSaleStatus, Phase};
use flashsale_common::amqp::QueueType;
use flashsale_harness::{Env, amqp_url, now_ms};
use flashsale_operator::apply::{Executor, Note, Stores, Told, execute};
use flashsale_operator::backends::{BackendUrls, Backends};
use flashsale_operator::error::Error;
use flashsale_operator::observe::observe;
use flashsale_operator::plan::plan;
use serde_json::json;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    status: Mutex<Option<FlashSaleStatus>>,
}

impl Recorder {
    fn push(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Executor for Recorder {
    async fn hold(&self, _sale: &FlashSale) -> Result<(), Error> {
        self.push("hold".into());
        Ok(())
    }

    async fn release(&self, _sale: &FlashSale) -> Result<(), Error> {
        self.push("release".into());
        Ok(())
    }

    async fn workloads(
        &self,
        _sale: &FlashSale,
        gateway: i32,
        worker: i32,
        create: bool,
    ) -> Result<(), Error> {
        self.push(format!("workloads {gateway} {worker} create={create}"));
        Ok(())
    }

    async fn tell(&self, _sale: &FlashSale, notes: &[Note]) {
        let reasons: Vec<&str> = notes.iter().map(|n| n.reason).collect();
        self.push(format!("tell {}", reasons.join(",")));
    }

    async fn write_status(&self, _sale: &FlashSale, status: FlashSaleStatus) -> Result<(), Error> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        self.push(format!(
            "status {} remaining={}",
            status.phase.map_or("-", Phase::as_str),
            status.remaining.unwrap_or_default()
        ));
        Ok(())
    }
}

fn sale(env: &Env, deleting: bool) -> anyhow::Result<FlashSale> {
    let ts = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let mut metadata = json!({
        "name": env.sale.name, "namespace": env.sale.namespace,
        "uid": format!("uid-{}", env.sale.name), "generation": 1,
        "creationTimestamp": ts(now_ms() - 60_000),
    });
    if deleting {
        metadata["deletionTimestamp"] = json!(ts(now_ms()));
        metadata["finalizers"] = json!(["flashsale.io/cleanup"]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "flashsale.io/v1alpha1",
        "kind": "FlashSale",
        "metadata": metadata,
        "spec": {
            "product": {"sku": "SKU-1", "name": "Thing", "price": "9.99", "currency": "EUR"},
            "stock": 7,
            "window": {"start": ts(now_ms() - 60_000), "end": ts(now_ms() + 3_600_000)},
            "gateway": {"replicas": 3},
            "worker": {"replicas": 2}
        }
    }))?)
}

/// One reconcile of `sale` through the recorder.
async fn once(
    env: &Env,
    backends: &Backends,
    told: &Told,
    sale: &FlashSale,
) -> anyhow::Result<(Vec<String>, bool)> {
    let urls = urls(env);
    let observed = observe(backends, &urls, None, sale).await?;
    let p = plan(sale, &observed, now_ms());
    let exec = Recorder::default();
    let stores = Stores {
        backends,
        urls: &urls,
    };
    let released = execute(&exec, stores, told, sale, &observed, &p, Vec::new()).await?;
    Ok((exec.calls(), released))
}

fn urls(env: &Env) -> BackendUrls {
    BackendUrls {
        redis_url: env.redis_url.clone(),
        amqp_url: amqp_url(),
        database_url: env.db_url.clone(),
        ..BackendUrls::default()
    }
}

#[tokio::test]
async fn a_new_sale_is_held_seeded_run_told_and_given_a_status() -> anyhow::Result<()> {
    let env = Env::new("execute").await?;
    let backends = Backends::new(urls(&env), QueueType::Quorum);
    let told = Told::default();
    let (calls, released) = once(&env, &backends, &told, &sale(&env, false)?).await?;
    assert!(!released);
    assert_eq!(
        calls,
        [
            "hold",
            "workloads 3 2 create=true",
            "tell Seeded,Opened",
            "status Active remaining=7",
        ],
        "the sequence of a first reconcile"
    );
    assert_eq!(env.snapshot().await?.remaining, 7, "the sale was seeded");
    env.cleanup().await
}

#[tokio::test]
async fn a_deleted_drained_sale_is_cleaned_up_and_released_without_being_held() -> anyhow::Result<()>
{
    let env = Env::new("execute-del").await?;
    let backends = Backends::new(urls(&env), QueueType::Quorum);
    let told = Told::default();
    // Seeded and running first, as a sale is before it is deleted.
    once(&env, &backends, &told, &sale(&env, false)?).await?;
    let (calls, released) = once(&env, &backends, &told, &sale(&env, true)?).await?;
    assert!(released, "{calls:?}");
    assert_eq!(
        calls.first().map(String::as_str),
        Some("workloads 0 0 create=false"),
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("release"),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c == "hold"),
        "a deleted sale is not held again: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("status")),
        "a released sale has no status to write: {calls:?}"
    );
    let mut redis = env.redis.clone();
    assert!(
        flashsale_store::stock::read(&mut redis, &env.sale)
            .await?
            .is_none(),
        "its Redis keys are gone"
    );
    env.cleanup().await
}

/// A lottery: its seed is committed to in the status before the line
/// opens, drawn at the start over those who joined before it, revealed
/// after, and `verify-lottery`'s check says the order matches.
#[tokio::test]
async fn a_lottery_is_committed_drawn_at_the_start_and_revealed() -> anyhow::Result<()> {
    let env = Env::new("execute-lottery").await?;
    let backends = Backends::new(urls(&env), QueueType::Quorum);
    let told = Told::default();
    let start = now_ms() + 3_000;
    let mut sale = sale(&env, false)?;
    sale.spec.window.start = jiff::Timestamp::from_millisecond(start)?;
    sale.spec.admission = Some(serde_json::from_value(json!({"mode": "lottery"}))?);
    let mut urls = urls(&env);
    let made = flashsale_operator::backends::ensure_admission_keys(&sale, &mut urls, None, None);
    assert!(made.lottery_seed && made.pass_key);
    let seed_hex = urls.lottery_seed.clone().unwrap_or_default();
    let seed = flashsale_operator::backends::hex_seed(&seed_hex).unwrap_or_default();

    let step = |sale: FlashSale, urls: BackendUrls| {
        let (backends, told) = (&backends, &told);
        async move {
            let mut observed = observe(backends, &urls, None, &sale).await?;
            observed.kept_lottery_seed.clone_from(&urls.lottery_seed);
            let p = plan(&sale, &observed, now_ms());
            let exec = Recorder::default();
            let stores = Stores {
                backends,
                urls: &urls,
            };
            execute(&exec, stores, told, &sale, &observed, &p, Vec::new()).await?;
            let status = exec
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            anyhow::Ok((exec.calls(), status))
        }
    };
    let (calls, status) = step(sale.clone(), urls.clone()).await?;
    assert!(calls.iter().any(|c| c.contains("QueueOpened")), "{calls:?}");
    let lottery = status.and_then(|s| s.lottery).unwrap_or_default();
    assert_eq!(
        lottery.commitment,
        flashsale_store::queue::commitment(&seed)
    );
    assert_eq!(lottery.seed, None, "kept secret until the draw");

    let mut conn = env.redis.clone();
    for i in 0..20 {
        let joined =
            flashsale_store::queue::join(&mut conn, &env.sale, &format!("t{i}"), None, None)
                .await?
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(joined.arrival, i + 1);
    }
    // Drawn by the first reconcile after the start (by Redis's clock).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let (calls, status) = step(sale.clone(), urls.clone()).await?;
        if calls.iter().any(|c| c.contains("DrawRevealed")) {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no draw 10 s after the start: {calls:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let lottery = status.and_then(|s| s.lottery).unwrap_or_default();
    assert_eq!(lottery.seed.as_deref(), Some(seed_hex.as_str()), "revealed");
    assert_eq!(lottery.drawn, Some(20));
    let report = flashsale_operator::seed::verify_lottery(
        &mut conn,
        &env.sale,
        &seed,
        Some(&lottery.commitment),
    )
    .await?;
    assert!(report.matches(), "{report}");
    let wrong =
        flashsale_operator::seed::verify_lottery(&mut conn, &env.sale, b"another seed", None)
            .await?;
    assert!(
        !wrong.matches(),
        "another seed gives another order: {wrong}"
    );
    env.cleanup().await
}
