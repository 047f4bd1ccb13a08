//! Redis's memory limit under a sale, on a Redis server of each test's own
//! (the shared one's settings are not the test's to change).
//!
//! A Redis that may evict keys without an expiry (`allkeys-*` with a
//! limit) could drop a sale's stock or its not yet published orders, so
//! no gateway starts on it and a running gateway turns unready when the
//! policy changes under it. A full Redis under `noeviction` refuses writes:
//! the buyer gets `503`, nothing is reserved, and once there is room again
//! the sale goes on with every order stored exactly once.

use flashsale_harness::redis_server::RedisServer;
use flashsale_harness::{Env, buy, by_status, eventually, herd, http, open_sale};
use std::time::Duration;

async fn readyz(gw: &flashsale_gateway::Gateway) -> anyhow::Result<(u16, String)> {
    let resp = http().get(format!("{}/readyz", gw.url())).send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gateway_starts_on_a_redis_that_evicts_any_key() -> anyhow::Result<()> {
    let server =
        RedisServer::start(&[("maxmemory", "64mb"), ("maxmemory-policy", "allkeys-lru")]).await?;
    let env = Env::on_redis("evicting", &server.url()).await?;

    let err = match env.gateway(&[]).await {
        Ok(_) => anyhow::bail!("a gateway started on a Redis that evicts any key"),
        Err(e) => flashsale_common::ops::describe(&e),
    };
    for part in [
        format!("sale {} cannot run on this Redis", env.sale),
        "maxmemory-policy allkeys-lru".to_owned(),
        "CONFIG SET maxmemory-policy noeviction".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} not in: {err}");
    }
    assert_eq!(
        server.key_count().await?,
        0,
        "the refused gateway wrote nothing"
    );

    // Without a limit, nothing is ever evicted, whatever the policy.
    server.config_set("maxmemory", "0").await?;
    let gw = env.gateway(&[]).await?;
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_turns_unready_when_its_redis_starts_evicting_any_key() -> anyhow::Result<()> {
    // The managed services' default: only keys with an expiry are evicted,
    // and of a sale's keys only the rate-limit buckets have one.
    let server =
        RedisServer::start(&[("maxmemory", "64mb"), ("maxmemory-policy", "volatile-lru")]).await?;
    let env = Env::on_redis("unready", &server.url()).await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let first = buy(&client, &env.orders_url(&gw), "ann", 1, None).await?;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(readyz(&gw).await?.0, 200);

    server.config_set("maxmemory-policy", "allkeys-lfu").await?;
    let (status, body) = readyz(&gw).await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("Redis of sale {}", env.sale))
            && body.contains("maxmemory-policy allkeys-lfu"),
        "{body}"
    );

    server.config_set("maxmemory-policy", "noeviction").await?;
    let (status, body) = readyz(&gw).await?;
    assert_eq!(status, 200, "{body}");
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_reservations_and_loses_no_order() -> anyhow::Result<()> {
    let server = RedisServer::start(&[("maxmemory-policy", "noeviction")]).await?;
    let env = Env::on_redis("fullredis", &server.url()).await?;
    let stock = 60;
    env.seed(&open_sale(stock, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let wave = |from: usize| {
        (from..from + 20)
            .map(|i| (format!("u{i}"), 1, None))
            .collect()
    };

    let answers = herd(&url, wave(0), 20).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&20), "{answers:?}");

    // A limit below what Redis holds: every write that needs memory fails.
    server.config_set("maxmemory", "1").await?;
    let answers = herd(&url, wave(20), 20).await?;
    for a in &answers {
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (503, Some("store_full")),
            "{}",
            a.body
        );
        assert_eq!(a.retry_after.as_deref(), Some("1"));
    }
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.remaining, snap.reserved + snap.sold),
        (stock - 20, 20),
        "a refused write reserved nothing"
    );

    server.config_set("maxmemory", "0").await?;
    let answers = herd(&url, wave(20), 20).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&20), "{answers:?}");
    let answers = herd(&url, wave(40), 20).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&20), "{answers:?}");
    let sold_out = buy(&http(), &url, "late", 1, None).await?;
    assert_eq!(sold_out.status, 409, "{}", sold_out.body);

    env.wait_persisted(stock, Duration::from_secs(30)).await?;
    eventually("the outbox is empty", Duration::from_secs(10), || async {
        Ok(env.outbox_len().await? == 0)
    })
    .await?;
    assert_eq!(env.persisted_orders().await?, stock);
    assert_eq!(env.snapshot().await?.remaining, 0);
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
