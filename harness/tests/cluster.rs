//! Sales on a Redis Cluster (the three primaries scripts/services starts):
//! the URL names one node, the components find the cluster themselves, and
//! each sale's keys live on the one node its hash tag picks.

use flashsale_common::SaleRef;
use flashsale_harness::{
    Env, by_status, eventually, herd, open_sale, redis_cluster_url, restock_reaches,
};
use flashsale_store::keys::SaleKeys;
use std::time::Duration;

/// `host:port` of each primary of the cluster behind `url`.
async fn primaries(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    Ok(nodes
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")))
        .filter_map(|l| l.split(' ').nth(1))
        .filter_map(|addr| addr.split('@').next())
        .map(str::to_owned)
        .collect())
}

/// The primary that holds the keys of `env`'s sale: the only one that
/// answers for them instead of redirecting.
async fn owner(env: &Env, nodes: &[String]) -> anyhow::Result<String> {
    let key = SaleKeys::new(&env.sale).sale();
    for node in nodes {
        let mut conn = redis::Client::open(format!("redis://{node}"))?
            .get_multiplexed_async_connection()
            .await?;
        let answer: redis::RedisResult<i64> =
            redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await;
        if answer.is_ok() {
            return Ok(node.clone());
        }
    }
    anyhow::bail!("no primary holds {key}")
}

/// Keys of `sale` on `node`.
async fn keys_on(sale: &SaleRef, node: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = redis::Client::open(format!("redis://{node}"))?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("fs:{{{sale}}}*");
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sales_on_two_cluster_nodes_never_oversell() -> anyhow::Result<()> {
    let url = redis_cluster_url();
    let nodes = primaries(&url).await?;
    anyhow::ensure!(nodes.len() >= 2, "a cluster of one primary: {nodes:?}");
    let a = Env::on_redis("cluster-a", &url).await?;
    assert!(a.redis.is_cluster(), "{url} was not taken for a cluster");
    let a_node = owner(&a, &nodes).await?;
    // A second sale on another primary, so that one gateway serves sales
    // on two nodes (a random name lands elsewhere two times in three).
    let mut b = Env::on_redis("cluster-b", &url).await?;
    let mut tries = 1;
    while owner(&b, &nodes).await? == a_node {
        anyhow::ensure!(tries < 30, "30 sales in a row on {a_node}");
        b.cleanup().await?;
        b = Env::on_redis("cluster-b", &url).await?;
        tries += 1;
    }
    let b_node = owner(&b, &nodes).await?;

    // Stock 100 each, with per-client rate-limit buckets so that deleting
    // the sale has buckets to find on its node. A bucket expires once it
    // would be full again (burst / rate, here 100 s): long enough to
    // outlast the test however slow the host, and no buyer is limited.
    for env in [&a, &b] {
        let mut cfg = open_sale(100, 1, 1);
        cfg.rate_per_second = 10;
        cfg.burst = 1_000;
        env.seed(&cfg).await?;
    }
    let b_sale = b.sale.to_string();
    let gw = a.gateway(&["--sale", &b_sale]).await?;
    let (wa, wb) = (a.worker(&[]).await?, b.worker(&[]).await?);

    let attempts = |env: &Env| {
        let url = env.orders_url(&gw);
        let purchases = (0..1_000)
            .map(|i| (format!("{}-{i}", env.sale.name), 1, None))
            .collect();
        async move { herd(&url, purchases, 200).await }
    };
    let (answers_a, answers_b) = tokio::try_join!(attempts(&a), attempts(&b))?;
    for (env, answers) in [(&a, &answers_a), (&b, &answers_b)] {
        let counts = by_status(answers);
        assert_eq!(
            (counts.get(&202), counts.get(&409)),
            (Some(&100), Some(&900)),
            "{}: {counts:?}",
            env.sale
        );
        let snap = env.snapshot().await?;
        assert_eq!((snap.sold, snap.remaining), (100, 0), "{}", env.sale);
        env.wait_persisted(100, Duration::from_secs(60)).await?;
        // The acker removed each confirmed order from its sale's outbox, on
        // the sale's own node.
        eventually("an empty outbox", Duration::from_secs(10), || async {
            Ok(env.outbox_len().await? == 0)
        })
        .await?;
    }

    // A restock reaches the gateway through pub/sub, whichever node the
    // sale lives on: the sold-out answer from memory ends.
    a.seed(&open_sale(150, 1, 1)).await?;
    let url = a.orders_url(&gw);
    restock_reaches(&url, Duration::from_secs(10)).await?;

    gw.shutdown().await?;
    wa.shutdown().await?;
    wb.shutdown().await?;
    // Deleting a sale removes every key of it, rate-limit buckets included,
    // from its node.
    for (env, node) in [(a, a_node), (b, b_node)] {
        let sale = env.sale.clone();
        let before = keys_on(&sale, &node).await?;
        assert!(
            before.iter().any(|k| k.contains(":rl:")),
            "no rate-limit bucket on {node}: {before:?}"
        );
        env.cleanup().await?;
        let after = keys_on(&sale, &node).await?;
        assert!(after.is_empty(), "left on {node}: {after:?}");
    }
    Ok(())
}
