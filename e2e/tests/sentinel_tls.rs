//! Redis behind Sentinel over TLS (`rediss+sentinel://`): the sentinel and
//! both servers listen in TLS only, so every command the gateway sends,
//! to the sentinel or to a server, goes encrypted and checked against the
//! CA of `--tls-ca-file`. A sale whose primary crashes goes on selling on
//! the promoted replica, reached over TLS as well; a CA that did not sign
//! the servers' certificate stops the gateway's start with an error that
//! says so.
//!
//! One test function: the CA certificates are a setting of the process.

use flashsale_common::redisconn::RedisConn;
use flashsale_common::tls::Tls;
use flashsale_e2e::sentinel::SentinelGroup;
use flashsale_e2e::tlsproxy::TestPki;
use flashsale_e2e::{Env, buy, by_status, eventually, herd, http, open_sale};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_behind_sentinel_over_tls_survives_a_failover() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let mut group = SentinelGroup::start_tls(&pki).await?;
    let sentinel_url = group.url();
    assert!(
        sentinel_url.starts_with("rediss+sentinel://"),
        "{sentinel_url}"
    );
    let tls = Tls::from_pem(Some(&pki.ca_pem), None, None, "the test's")?;
    let env = Env::on_redis_with_tls("sentinel-tls", &sentinel_url, &tls).await?;
    assert!(
        matches!(env.redis, RedisConn::Sentinel(_)),
        "{sentinel_url} was not taken for Sentinel"
    );
    env.seed(&open_sale(100, 1, 1)).await?;

    // A CA that did not sign the servers' certificate: no start.
    let stranger = TestPki::new()?.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(stranger.path().to_owned());
    match flashsale_gateway::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway started with a CA that signed none of the servers")
        }
        Err(e) => {
            let text = format!("{e:#}").to_lowercase();
            assert!(
                text.contains("cannot connect to redis") && text.contains("certificate"),
                "{e:#}"
            );
        }
    }
    assert_eq!(env.snapshot().await?.remaining, 100, "nothing was sold");

    let ca = pki.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    let gw = flashsale_gateway::Gateway::start(cfg).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let ready = http().get(format!("{}/readyz", gw.url())).send().await?;
    assert_eq!(ready.status(), 200, "{}", ready.text().await?);

    let before = herd(
        &url,
        (0..50).map(|i| (format!("before-{i}"), 1, None)).collect(),
        25,
    )
    .await?;
    assert_eq!(
        by_status(&before).get(&202),
        Some(&50),
        "{:?}",
        by_status(&before)
    );

    group.replica_caught_up().await?;
    group.kill_primary()?;
    group
        .wait_failover(Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nsentinel log:\n{}", group.sentinel_log()))?;

    // 503 while the gateway's connection still leads to the dead primary,
    // then a reservation on the promoted replica, over TLS.
    let client = http();
    let (mut accepted_while_following, mut unavailable) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_while_following == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not reserve on the promoted replica within 30 s ({unavailable} × 503)\nsentinel log:\n{}",
            group.sentinel_log()
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
        (0..100).map(|i| (format!("after-{i}"), 1, None)).collect(),
        50,
    )
    .await?;
    let counts = by_status(&after);
    assert_eq!(
        (counts.get(&202), counts.get(&409), counts.len()),
        (
            Some(&(50 - accepted_while_following)),
            Some(&(50 + accepted_while_following)),
            2
        ),
        "after the failover ({unavailable} attempts answered 503 first): {counts:?}"
    );

    // The promoted replica holds the whole sale; PostgreSQL has each order
    // once. The test's own connection follows after its first failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    let snap = loop {
        match env.snapshot().await {
            Ok(snap) => break snap,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading the sale: {e}; again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("the test's connection did not follow")),
        }
    };
    assert_eq!((snap.sold, snap.remaining), (100, 0), "{snap:?}");
    env.wait_persisted(100, Duration::from_secs(60)).await?;
    assert_eq!(env.stored_order_ids().await?.len(), 100);

    // A restock on the new primary reaches the gateway through its
    // subscription, over TLS as well.
    env.seed(&open_sale(105, 1, 1)).await?;
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
    env.cleanup().await
}
