//! Redis failures under the gateway, through a TCP proxy the test controls:
//! a connection that dies after the reservation script ran (the reply is
//! lost), and Redis unreachable. Each costs the buyer a `503 unavailable`,
//! never a lost or doubled order: the retry with the same Idempotency-Key
//! gets the reservation the lost reply was about, and every order is stored
//! exactly once.

use flashsale_harness::proxy::{Mode, TcpProxy, authority};
use flashsale_harness::{Env, buy, eventually, http, metric, open_sale, redis_url};
use flashsale_store::keys::SaleKeys;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_or_an_unreachable_redis_costs_a_retry_never_an_order() -> anyhow::Result<()> {
    let env = Env::new("redisloss").await?;
    env.seed(&open_sale(100, 5, 1)).await?;
    let proxy = TcpProxy::start(authority(&redis_url(), 6379)?).await?;
    let proxied_url = proxy.url(&redis_url())?;
    // Background reads would race the single request each phase is about.
    let mut cfg = env.gateway_config(&[
        "--stock-poll-ms",
        "3600000",
        "--sweep-interval-ms",
        "3600000",
        "--hold-sweep-ms",
        "3600000",
    ]);
    cfg.redis.redis_url = proxied_url;
    let gw = flashsale_gateway::Gateway::start(cfg).await?;
    let worker = env.worker(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);
    let keys = SaleKeys::new(&env.sale);
    let mut direct = env.redis.clone();

    let a = buy(&client, &url, "ann", 1, Some("key-a")).await?;
    assert_eq!(a.status, 202, "{}", a.body);
    // Wait until the gateway has the reply to the first order's outbox ack
    // (not only Redis having run it), so the next request is the only
    // thing on the wire: a late ack reply would otherwise be the one the
    // proxy drops below, and the reservation would never be sent.
    eventually(
        "the outbox ack came back",
        Duration::from_secs(10),
        || async { Ok(metric(&gw.url(), "flashsale_gateway_outbox_acked_total").await? >= 1.0) },
    )
    .await?;
    assert_eq!(env.outbox_len().await?, 0);

    // 1. The script runs, its reply is lost with the connection.
    proxy.set(Mode::KillOnReply);
    let b = buy(&client, &url, "bob", 1, Some("key-b")).await?;
    assert_eq!(
        (b.status, b.body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{}",
        b.body
    );
    assert_eq!(b.retry_after.as_deref(), Some("1"));
    let snap = env.snapshot().await?;
    assert_eq!(snap.sold, 2, "the lost reply's reservation exists in Redis");
    let idem: Option<String> = redis::cmd("HGET")
        .arg(keys.idem())
        .arg(flashsale_store::keys::scoped_idempotency_key(
            "bob", "key-b",
        ))
        .query_async(&mut direct)
        .await?;
    let b_order = idem
        .and_then(|v| v.split('|').next().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("no reservation recorded for key-b"))?;
    assert_eq!(env.outbox_len().await?, 1, "it waits in the outbox");

    // 2. Redis unreachable: refused before anything runs. The buyer hears
    // so at once, not after the client library's reconnection backoff.
    proxy.set(Mode::Refuse);
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        buy(&client, &url, "cat", 1, Some("key-c")),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("a buyer waited over 5 s for the answer while Redis was down")
    })??;
    assert_eq!(
        (c.status, c.body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{}",
        c.body
    );
    let ready = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(format!("{}/readyz", gw.url())).send(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("/readyz took over 5 s to answer while Redis was down"))??;
    assert_eq!(ready.status(), 503, "not ready without Redis");
    assert_eq!(
        env.snapshot().await?.sold,
        2,
        "nothing ran for the refused call"
    );

    // 3. Redis back: the retries get the orders, the lost one included.
    proxy.set(Mode::Pass);
    eventually("ready again", Duration::from_secs(30), || {
        let probe = client.get(format!("{}/readyz", gw.url())).send();
        async move { Ok(probe.await.is_ok_and(|r| r.status() == 200)) }
    })
    .await?;
    let b2 = buy(&client, &url, "bob", 1, Some("key-b")).await?;
    assert_eq!(
        (b2.status, b2.body["orderId"].as_str()),
        (202, Some(b_order.as_str())),
        "{}",
        b2.body
    );
    let c2 = buy(&client, &url, "cat", 1, Some("key-c")).await?;
    assert_eq!(c2.status, 202, "{}", c2.body);
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.sold, snap.remaining),
        (3, 97),
        "one reservation per key"
    );

    env.wait_persisted(3, Duration::from_secs(30)).await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!((ledger.orders, ledger.units), (3, 3));
    gw.shutdown().await?;
    worker.shutdown().await?;
    drop(proxy);
    env.cleanup().await
}
