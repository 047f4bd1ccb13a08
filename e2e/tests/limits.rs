//! Per-user limits and idempotency under real concurrency.

use flashsale_e2e::{Env, buy, by_status, eventually, herd, http, metric, open_sale, redis_orders};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_fifty_parallel_requests_limit_two() -> anyhow::Result<()> {
    let env = Env::new("peruser").await?;
    env.seed(&open_sale(1_000, 2, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;

    let purchases = (0..50).map(|_| ("greedy".to_owned(), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 50).await?;
    let counts = by_status(&answers);
    assert_eq!(counts.get(&202), Some(&2), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&48), "{counts:?}");
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 409)
            .all(|a| a.body["error"]["code"] == "user_limit_reached"),
        "refusals must name the user limit"
    );
    let snap = env.snapshot().await?;
    assert_eq!((snap.sold, snap.remaining), (2, 998));

    // Another user is not affected.
    let other = buy(&http(), &env.orders_url(&gw), "someone-else", 1, None).await?;
    assert_eq!(other.status, 202);

    env.wait_persisted(3, Duration::from_secs(30)).await?;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_fifty_parallel_requests() -> anyhow::Result<()> {
    let env = Env::new("idem").await?;
    env.seed(&open_sale(10, 5, 5)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;

    let purchases = (0..50)
        .map(|_| ("ann".to_owned(), 2, Some("checkout-42".to_owned())))
        .collect();
    let answers = herd(&env.orders_url(&gw), purchases, 50).await?;
    assert!(
        answers.iter().all(|a| a.status == 202),
        "{:?}",
        by_status(&answers)
    );
    let first = &answers[0].body;
    assert!(answers.iter().all(|a| &a.body == first), "answers differ");

    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.sold, snap.remaining),
        (2, 8),
        "reserved more than once"
    );
    assert_eq!(redis_orders(&env).await?, 1);

    // The same key with another body is refused and changes nothing.
    let other = buy(&http(), &env.orders_url(&gw), "ann", 1, Some("checkout-42")).await?;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["error"]["field"], "Idempotency-Key");
    assert_eq!(env.snapshot().await?.remaining, 8);

    // Replays published the order again; once the worker handled every
    // confirmed message there is still exactly one row.
    let confirmed = metric(&gw.url(), "flashsale_gateway_publish_confirms_total").await?;
    assert!(confirmed >= 1.0);
    let worker_url = format!("http://{}", worker.addr());
    eventually(
        "worker handled every published copy",
        Duration::from_secs(30),
        || async {
            let stored = metric(&worker_url, "flashsale_worker_orders_stored_total").await?;
            let dups = metric(&worker_url, "flashsale_worker_duplicates_total").await?;
            Ok(stored + dups >= confirmed)
        },
    )
    .await?;
    assert_eq!(env.persisted_orders().await?, 1);
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
