//! SIGTERM to the real `flashsale-worker` binary while it holds a batch it
//! has not stored yet: it stops gathering, stores the batch, acknowledges
//! it and exits 0 at once. Every order is then either a row or still
//! queued, never both and never neither, and the next worker stores each
//! exactly once.

use flashsale_common::amqp;
use flashsale_harness::{
    Env, amqp_url, by_status, eventually, herd, open_sale, sigterm, spawn_binary,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_and_acknowledges_the_batch_in_hand() -> anyhow::Result<()> {
    const ORDERS: i64 = 2_000;
    const PREFETCH: i64 = 500;
    let env = Env::new("wsigterm").await?;
    env.seed(&open_sale(ORDERS, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    // The orders wait in the queue while no worker runs.
    let purchases = (0..ORDERS).map(|i| (format!("b{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 200).await?;
    assert_eq!(
        by_status(&answers).get(&202).copied(),
        Some(ORDERS as usize)
    );
    gw.shutdown().await?;

    // Batches larger than the prefetch window and a minute to fill them:
    // the worker takes 500 orders and then waits, holding them unstored.
    let args = [
        "--sale".to_owned(),
        env.sale.to_string(),
        "--amqp-url".to_owned(),
        amqp_url(),
        "--database-url".to_owned(),
        env.db_url.clone(),
        "--batch-size".to_owned(),
        "10000".to_owned(),
        "--batch-timeout-ms".to_owned(),
        "60000".to_owned(),
        "--prefetch".to_owned(),
        PREFETCH.to_string(),
    ];
    let (mut worker, _) = spawn_binary(env!("CARGO_BIN_EXE_flashsale-worker"), &args).await?;
    let queue = amqp::orders_queue(&env.sale);
    eventually(
        "the worker holds a full prefetch window",
        Duration::from_secs(30),
        || async { Ok(i64::from(env.queue_depth(&queue).await?) == ORDERS - PREFETCH) },
    )
    .await?;
    assert_eq!(
        env.persisted_orders().await?,
        0,
        "stored before its batch was full"
    );

    let status = sigterm(&mut worker, Duration::from_secs(10)).await?;
    assert!(status.success(), "the worker exited with {status}");
    // The batch in hand (what had reached the worker of the window RabbitMQ
    // sent) is stored; the rest of the window goes back to the queue.
    let stored = env.persisted_orders().await?;
    assert!(
        stored > 0 && stored <= PREFETCH,
        "the batch in hand was not stored on SIGTERM: {stored} rows"
    );
    // Stored and acknowledged: nothing stored comes back to the queue.
    eventually(
        "every order either stored or queued, exactly once",
        Duration::from_secs(10),
        || async { Ok(stored + i64::from(env.queue_depth(&queue).await?) == ORDERS) },
    )
    .await?;

    let next = env.worker(&[]).await?;
    env.wait_persisted(ORDERS, Duration::from_secs(60)).await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!((ledger.orders, ledger.units), (ORDERS, ORDERS));
    assert_eq!(env.queue_depth(&queue).await?, 0);
    next.shutdown().await?;
    env.cleanup().await
}
