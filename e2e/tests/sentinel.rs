//! Redis behind Sentinel: a sale whose primary crashes in the middle goes
//! on selling on the replica the sentinel promotes, without overselling
//! and without losing an accepted order.

use flashsale_common::redisconn::RedisConn;
use flashsale_e2e::sentinel::SentinelGroup;
use flashsale_e2e::{Env, buy, by_status, eventually, herd, http, open_sale};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_survives_the_failover_of_its_redis_primary() -> anyhow::Result<()> {
    let mut group = SentinelGroup::start().await?;
    let env = Env::on_redis("sentinel", &group.url()).await?;
    assert!(
        matches!(env.redis, RedisConn::Sentinel(_)),
        "{} was not taken for Sentinel",
        group.url()
    );
    env.seed(&open_sale(200, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);

    let before = herd(
        &url,
        (0..100).map(|i| (format!("before-{i}"), 1, None)).collect(),
        50,
    )
    .await?;
    assert_eq!(
        by_status(&before).get(&202),
        Some(&100),
        "{:?}",
        by_status(&before)
    );

    // Every reservation so far reached the replica; then the primary dies.
    group.replica_caught_up().await?;
    group.kill_primary()?;
    group
        .wait_failover(Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nsentinel log:\n{}", group.sentinel_log()))?;

    // The gateway answers 503 while its connection still leads to the dead
    // primary, then reserves on the new one.
    let client = http();
    let (mut accepted_while_following, mut unavailable) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_while_following == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not reserve on the promoted replica within 30 s ({unavailable} × 503)"
        );
        let user = format!("during-{unavailable}");
        let answer = buy(&client, &url, &user, 1, None).await?;
        match answer.status {
            202 => accepted_while_following += 1,
            503 => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => anyhow::bail!("{user}: {other} {}", answer.body),
        }
    }
    let after = herd(
        &url,
        (0..300).map(|i| (format!("after-{i}"), 1, None)).collect(),
        100,
    )
    .await?;
    let counts = by_status(&after);
    assert_eq!(
        (counts.get(&202), counts.get(&409), counts.len()),
        (
            Some(&(100 - accepted_while_following)),
            Some(&(200 + accepted_while_following)),
            2
        ),
        "after the failover ({unavailable} attempts answered 503 first): {counts:?}"
    );

    // The promoted replica holds the whole sale: the 100 units sold before
    // the crash and the 100 after; PostgreSQL has each order once.
    // The test's own connection follows on its first failure.
    let snap = match env.snapshot().await {
        Ok(snap) => snap,
        Err(_) => env.snapshot().await?,
    };
    assert_eq!((snap.sold, snap.remaining), (200, 0), "{snap:?}");
    env.wait_persisted(200, Duration::from_secs(60)).await?;
    assert_eq!(env.stored_order_ids().await?.len(), 200);

    // A restock on the new primary reaches the gateway, which had answered
    // "sold out" from memory.
    env.seed(&open_sale(210, 1, 1)).await?;
    eventually(
        "the restock reaches the gateway",
        Duration::from_secs(15),
        || {
            let url = &url;
            async move {
                let more = (0..5).map(|i| (format!("restock-{i}"), 1, None)).collect();
                Ok(by_status(&herd(url, more, 5).await?).contains_key(&202))
            }
        },
    )
    .await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}
