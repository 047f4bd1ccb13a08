//! The sold-out fast path: refusals from memory, replays of accepted keys
//! still answered, and a restock noticed at once.

use flashsale_harness::{Env, buy, eventually, http, metric, open_sale};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_answers_from_memory_and_learns_of_a_restock() -> anyhow::Result<()> {
    let env = Env::new("soldout").await?;
    let mut cfg = open_sale(5, 1, 1);
    env.seed(&cfg).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);

    let mut first_answers = Vec::new();
    for i in 0..5 {
        let a = buy(
            &client,
            &url,
            &format!("b{i}"),
            1,
            Some(&format!("key-{i}")),
        )
        .await?;
        assert_eq!(a.status, 202);
        first_answers.push(a.body);
    }
    let a = buy(&client, &url, "late", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );

    let memory = "flashsale_gateway_sold_out_from_memory_total";
    eventually(
        "refusals come from memory",
        Duration::from_secs(5),
        || async {
            let a = buy(&client, &url, "later", 1, None).await?;
            assert_eq!(a.status, 409);
            Ok(metric(&gw.url(), memory).await? > 0.0)
        },
    )
    .await?;

    // A replay of an accepted key still gets its first answer; an unknown
    // key is refused from memory.
    let before = metric(&gw.url(), memory).await?;
    let replay = buy(&client, &url, "b3", 1, Some("key-3")).await?;
    assert_eq!((replay.status, &replay.body), (202, &first_answers[3]));
    let fresh = buy(&client, &url, "x", 1, Some("never-seen")).await?;
    assert_eq!(fresh.status, 409);
    assert_eq!(metric(&gw.url(), memory).await?, before + 1.0);

    // Restock: the gateway learns of it without a restart.
    cfg.stock = 8;
    env.seed(&cfg).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut accepted = 0;
    let mut n = 0;
    while accepted < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "restock not noticed within 5 s"
        );
        n += 1;
        let a = buy(&client, &url, &format!("after-restock-{n}"), 1, None).await?;
        match a.status {
            202 => accepted += 1,
            409 => tokio::time::sleep(Duration::from_millis(10)).await,
            other => anyhow::bail!("unexpected {other}: {}", a.body),
        }
    }
    let snap = env.snapshot().await?;
    assert_eq!((snap.stock, snap.sold, snap.remaining), (8, 8, 0));
    env.wait_persisted(8, Duration::from_secs(30)).await?;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
