//! SIGTERM in the middle of a burst, to the real `flashsale-gateway` binary:
//! it stops taking connections, answers every request it had already
//! taken, writes the outbox acks of the orders RabbitMQ confirmed, closes
//! its connections and exits 0. Invariant: no order is reserved without its
//! buyer getting the answer, and every 202 reaches PostgreSQL exactly once.

use flashsale_e2e::{
    Env, amqp_url, buy, eventually, http, open_sale, redis_url, sigterm, spawn_binary,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What one buyer saw over its run of purchases.
#[derive(Default)]
struct Seen {
    accepted: usize,
    accepted_while_stopping: usize,
    other_statuses: Vec<u16>,
    errors_before_stop: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_answers_every_request_it_took() -> anyhow::Result<()> {
    let env = Env::new("sigterm").await?;
    env.seed(&open_sale(1_000_000, 1, 1)).await?;
    let worker = env.worker(&[]).await?;
    let args = [
        "--sale".to_owned(),
        env.sale.to_string(),
        "--redis-url".to_owned(),
        redis_url(),
        "--amqp-url".to_owned(),
        amqp_url(),
    ];
    let (mut gateway, base) = spawn_binary(env!("CARGO_BIN_EXE_flashsale-gateway"), &args).await?;
    let url = format!(
        "{base}/api/v1/sales/{}/{}/orders",
        env.sale.namespace, env.sale.name
    );
    let client = http();
    eventually("the gateway is ready", Duration::from_secs(30), || {
        let probe = client.get(format!("{base}/readyz")).send();
        async move { Ok(probe.await.is_ok_and(|r| r.status() == 200)) }
    })
    .await?;

    let accepted = Arc::new(AtomicUsize::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let mut buyers = Vec::new();
    for b in 0..200 {
        let (client, url) = (client.clone(), url.clone());
        let (accepted, stopping) = (Arc::clone(&accepted), Arc::clone(&stopping));
        buyers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            for i in 0.. {
                let answer = buy(&client, &url, &format!("buyer-{b}-{i}"), 1, None).await;
                // Read after the answer came: one that arrives once the stop
                // began was drained.
                let late = stopping.load(Ordering::SeqCst);
                match answer {
                    Ok(a) if a.status == 202 => {
                        seen.accepted += 1;
                        seen.accepted_while_stopping += usize::from(late);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => seen.other_statuses.push(a.status),
                    // Refused, or closed before the gateway read the
                    // request: the gateway is gone, this buyer stops.
                    Err(_) if late => break,
                    Err(_) => {
                        seen.errors_before_stop += 1;
                        break;
                    }
                }
            }
            seen
        }));
    }

    eventually("500 orders accepted", Duration::from_secs(60), || {
        let n = accepted.load(Ordering::Relaxed);
        async move { Ok(n >= 500) }
    })
    .await?;
    stopping.store(true, Ordering::SeqCst);
    let status = sigterm(&mut gateway, Duration::from_secs(30)).await?;
    assert!(status.success(), "the gateway exited with {status}");

    let mut total = Seen::default();
    for b in buyers {
        let seen = tokio::time::timeout(Duration::from_secs(30), b)
            .await
            .map_err(|_| anyhow::anyhow!("a buyer still ran 30 s after the gateway exited"))??;
        total.accepted += seen.accepted;
        total.accepted_while_stopping += seen.accepted_while_stopping;
        total.other_statuses.extend(seen.other_statuses);
        total.errors_before_stop += seen.errors_before_stop;
    }

    assert_eq!(
        total.errors_before_stop, 0,
        "requests failed before the stop began"
    );
    assert!(
        total.other_statuses.is_empty(),
        "every answer should be 202, also while draining: {:?}",
        total.other_statuses
    );
    assert!(
        total.accepted_while_stopping > 0,
        "no request was in flight when SIGTERM came, so nothing was drained"
    );
    let snap = env.snapshot().await?;
    assert_eq!(
        snap.sold, total.accepted as i64,
        "orders reserved in Redis differ from the 202s the buyers received"
    );
    let keys = flashsale_common::keys::SaleKeys::new(&env.sale);
    let mut conn = env.redis.clone();
    let pending: i64 = redis::cmd("ZCARD")
        .arg(keys.outbox())
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        pending, 0,
        "confirmed orders left in the outbox: their acks were not written before the exit"
    );

    env.wait_persisted(total.accepted as i64, Duration::from_secs(60))
        .await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!(
        ledger.orders, total.accepted as i64,
        "rows in PostgreSQL != 202 answers"
    );
    worker.shutdown().await?;
    env.cleanup().await
}
