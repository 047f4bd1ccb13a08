//! `flashsale-operator seed`: the real binary against the real Redis.

use flashsale_harness::{Env, redis_cluster_url};
use std::process::Command;

fn manifest(env: &Env, stock: i64) -> String {
    format!(
        r#"apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {{name: {name}, namespace: {ns}}}
spec:
  product: {{sku: SKU-1, name: Thing, price: "1.00", currency: EUR}}
  stock: {stock}
  window: {{start: "2020-01-01T00:00:00Z", end: "2099-01-01T00:00:00Z"}}
"#,
        name = env.sale.name,
        ns = env.sale.namespace
    )
}

fn seed(env: &Env, stock: i64) -> anyhow::Result<(bool, String)> {
    let dir = std::env::temp_dir().join(format!("fs-seed-{}", env.sale.name));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("sale.yaml");
    std::fs::write(&file, manifest(env, stock))?;
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(["seed", "-f"])
        .arg(&file)
        .args(["--redis-url", &env.redis_url])
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_is_idempotent_restocks_by_difference_and_refuses_below_sold() -> anyhow::Result<()> {
    seeding(Env::new("seedcli").await?).await
}

/// The same against a node of a Redis Cluster, which the binary finds out
/// by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_works_the_same_on_a_redis_cluster() -> anyhow::Result<()> {
    seeding(Env::on_redis("seedcluster", &redis_cluster_url()).await?).await
}

/// The same through Redis Sentinel: the URL names the sentinel, which
/// names the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_works_the_same_through_redis_sentinel() -> anyhow::Result<()> {
    let group = flashsale_harness::sentinel::SentinelGroup::start().await?;
    seeding(Env::on_redis("seedsentinel", &group.url()).await?).await
}

async fn seeding(env: Env) -> anyhow::Result<()> {
    let (ok, out) = seed(&env, 10)?;
    assert!(
        ok && out.contains("created (stock 10, remaining 10"),
        "{out}"
    );
    let (ok, out) = seed(&env, 10)?;
    assert!(
        ok && out.contains("unchanged (stock 10, remaining 10"),
        "{out}"
    );
    assert_eq!(
        env.snapshot().await?.remaining,
        10,
        "seeding twice must not double the stock"
    );

    // Sell 4 units through a gateway, then restock.
    let gw = env.gateway(&[]).await?;
    let client = flashsale_harness::http();
    for i in 0..4 {
        let a = flashsale_harness::buy(&client, &env.orders_url(&gw), &format!("u{i}"), 1, None)
            .await?;
        assert_eq!(a.status, 202);
    }
    let (ok, out) = seed(&env, 15)?;
    assert!(
        ok && out.contains("restocked (stock 15, remaining 11"),
        "{out}"
    );
    let (ok, out) = seed(&env, 3)?;
    assert!(!ok, "lowering below what is sold must fail");
    assert!(out.contains("at least 4"), "{out}");
    let s = env.snapshot().await?;
    assert_eq!(
        (s.stock, s.remaining, s.sold),
        (15, 11, 4),
        "a refused seed changes nothing"
    );
    gw.shutdown().await?;
    env.cleanup().await
}

#[test]
fn seed_reports_a_bad_manifest_clearly() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fs-seed-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: flashsale.io/v1alpha1\nkind: FlashSale\nmetadata: {name: x}\nspec: {stock: -1}\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(["seed", "-f"])
        .arg(&file)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid FlashSale") && err.contains("product"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_example_manifests_are_valid() -> anyhow::Result<()> {
    for example in ["examples/flashsale.yaml", "examples/queued-sale.yaml"] {
        let path = flashsale_harness::repo_root()
            .join(example)
            .display()
            .to_string();
        let sales = flashsale_operator::seed::read_manifests(&path)?;
        assert_eq!(sales.len(), 1);
        assert!(
            sales[0].spec.problems().is_empty(),
            "{example}: {:?}",
            sales[0].spec.problems()
        );
    }
    Ok(())
}

/// A Redis it cannot reach is named in the error without its password.
#[test]
fn an_unreachable_redis_is_named_without_its_password() -> anyhow::Result<()> {
    let example = flashsale_harness::repo_root().join("examples/flashsale.yaml");
    for (url, named) in [
        (
            "redis://:s3cret@127.0.0.1:1",
            "cannot connect to Redis at redis://:***@127.0.0.1:1",
        ),
        (
            "redis+sentinel://:s3cret@127.0.0.1:1,127.0.0.1:2/fs?sentinel_password=s3cret",
            "cannot connect to Redis at redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2/fs?sentinel_password=***",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args(["seed", "-f"])
            .arg(&example)
            .args(["--redis-url", url])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(named), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    Ok(())
}

/// A Redis that may evict keys without an expiry is refused before
/// anything is written: it could drop the stock, and a later seed would
/// then count the whole stock again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_refuses_a_redis_that_evicts_any_key() -> anyhow::Result<()> {
    let server = flashsale_harness::redis_server::RedisServer::start(&[
        ("maxmemory", "64mb"),
        ("maxmemory-policy", "allkeys-random"),
    ])
    .await?;
    let env = Env::on_redis("seedevict", &server.url()).await?;
    let (ok, out) = seed(&env, 10)?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{} cannot run on this Redis", env.sale))
            && out.contains("maxmemory-policy allkeys-random"),
        "{out}"
    );
    assert_eq!(
        server.key_count().await?,
        0,
        "a refused seed writes nothing"
    );

    server
        .config_set("maxmemory-policy", "volatile-lru")
        .await?;
    let (ok, out) = seed(&env, 10)?;
    assert!(ok && out.contains("created (stock 10"), "{out}");
    env.cleanup().await
}
