//! The real `flashsale-gateway` binary stopped in the middle of a burst of
//! 200 buyers.
//!
//! * SIGTERM: it stops taking connections, answers every request it had
//!   already taken, writes the outbox acks of the orders RabbitMQ confirmed
//!   and exits 0. No order is reserved without its buyer getting the answer.
//! * SIGKILL: nothing runs on the way out. Orders reserved but not yet
//!   published, and orders confirmed but not yet acknowledged in the outbox,
//!   are delivered by another gateway's outbox sweep. Every reserved order
//!   becomes exactly one row, every `202` among them.

use flashsale_harness::{Env, buy, eventually, http, open_sale, sigterm, spawn_binary};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What the buyers saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<String>,
    accepted_while_stopping: usize,
    other_statuses: Vec<u16>,
    errors_before_stop: usize,
}

/// 200 buyers buying one unit each, again and again, until the gateway is
/// gone.
struct Burst {
    accepted: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    buyers: Vec<JoinHandle<Seen>>,
}

impl Burst {
    fn start(url: &str) -> Burst {
        let client = http();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let buyers = (0..200)
            .map(|b| {
                let (client, url) = (client.clone(), url.to_owned());
                let (accepted, stopping) = (Arc::clone(&accepted), Arc::clone(&stopping));
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    for i in 0.. {
                        let answer = buy(&client, &url, &format!("buyer-{b}-{i}"), 1, None).await;
                        // Read after the answer came: one that arrives once
                        // the stop began was drained.
                        let late = stopping.load(Ordering::SeqCst);
                        match answer {
                            Ok(a) if a.status == 202 => {
                                let id = a.body["orderId"].as_str().unwrap_or_default();
                                seen.accepted.push(id.to_owned());
                                seen.accepted_while_stopping += usize::from(late);
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(a) => seen.other_statuses.push(a.status),
                            // Refused, or cut off: the gateway is gone, this
                            // buyer stops.
                            Err(_) if late => break,
                            Err(_) => {
                                seen.errors_before_stop += 1;
                                break;
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        Burst {
            accepted,
            stopping,
            buyers,
        }
    }

    /// Waits for 500 accepted orders, then marks the stop as begun.
    async fn until_stop(&self) -> anyhow::Result<()> {
        eventually("500 orders accepted", Duration::from_secs(60), || {
            let n = self.accepted.load(Ordering::Relaxed);
            async move { Ok(n >= 500) }
        })
        .await?;
        self.stopping.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<Seen> {
        let mut total = Seen::default();
        for b in self.buyers {
            let seen = tokio::time::timeout(Duration::from_secs(30), b)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("a buyer still ran 30 s after the gateway exited")
                })??;
            total.accepted.extend(seen.accepted);
            total.accepted_while_stopping += seen.accepted_while_stopping;
            total.other_statuses.extend(seen.other_statuses);
            total.errors_before_stop += seen.errors_before_stop;
        }
        assert_eq!(
            total.errors_before_stop, 0,
            "requests failed before the stop began"
        );
        Ok(total)
    }
}

/// Starts the binary for the sale; returns it, ready, with its orders URL.
async fn start_gateway(env: &Env) -> anyhow::Result<(tokio::process::Child, String)> {
    let (gateway, base) =
        spawn_binary(env!("CARGO_BIN_EXE_flashsale-gateway"), &env.gateway_args()).await?;
    let client = http();
    eventually("the gateway is ready", Duration::from_secs(30), || {
        let probe = client.get(format!("{base}/readyz")).send();
        async move { Ok(probe.await.is_ok_and(|r| r.status() == 200)) }
    })
    .await?;
    let url = format!(
        "{base}/api/v1/sales/{}/{}/orders",
        env.sale.namespace, env.sale.name
    );
    Ok((gateway, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_answers_every_request_it_took() -> anyhow::Result<()> {
    let env = Env::new("sigterm").await?;
    env.seed(&open_sale(1_000_000, 1, 1)).await?;
    let worker = env.worker(&[]).await?;
    let (mut gateway, url) = start_gateway(&env).await?;

    let burst = Burst::start(&url);
    burst.until_stop().await?;
    let status = sigterm(&mut gateway, Duration::from_secs(30)).await?;
    assert!(status.success(), "the gateway exited with {status}");
    let seen = burst.finish().await?;

    assert!(
        seen.other_statuses.is_empty(),
        "every answer should be 202, also while draining: {:?}",
        seen.other_statuses
    );
    assert!(
        seen.accepted_while_stopping > 0,
        "no request was in flight when SIGTERM came, so nothing was drained"
    );
    let accepted = seen.accepted.len() as i64;
    assert_eq!(
        env.snapshot().await?.sold,
        accepted,
        "orders reserved in Redis differ from the 202s the buyers received"
    );
    assert_eq!(
        env.outbox_len().await?,
        0,
        "confirmed orders left in the outbox: their acks were not written before the exit"
    );
    env.wait_persisted(accepted, Duration::from_secs(60))
        .await?;
    let stored = env.stored_order_ids().await?;
    let answered: HashSet<String> = seen.accepted.into_iter().collect();
    assert_eq!(stored, answered, "rows in PostgreSQL != 202 answers");
    worker.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_reserved_order() -> anyhow::Result<()> {
    let env = Env::new("sigkill").await?;
    env.seed(&open_sale(1_000_000, 1, 1)).await?;
    let worker = env.worker(&[]).await?;
    let (mut gateway, url) = start_gateway(&env).await?;

    let burst = Burst::start(&url);
    burst.until_stop().await?;
    let pid = gateway
        .id()
        .ok_or_else(|| anyhow::anyhow!("the gateway exited before SIGKILL"))?;
    gateway.start_kill()?;
    tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .map_err(|_| anyhow::anyhow!("process {pid} survived SIGKILL for 30 s"))??;
    let seen = burst.finish().await?;
    assert!(
        seen.other_statuses.is_empty(),
        "every answer before the kill should be 202: {:?}",
        seen.other_statuses
    );

    // Whatever the killed gateway reserved, heard of or not, is in Redis:
    // another gateway's sweep delivers what waits in the outbox.
    let sold = env.snapshot().await?.sold;
    let stranded = env.outbox_len().await?;
    assert!(
        stranded > 0,
        "the kill left nothing in the outbox, so there was nothing to recover"
    );
    let rescuer = env
        .gateway(&["--outbox-lease-ms", "0", "--sweep-interval-ms", "3600000"])
        .await?;
    let mut passes = 0;
    while rescuer.sweep_outbox().await? > 0 {
        passes += 1;
        anyhow::ensure!(passes < 100, "the outbox did not empty in 100 sweeps");
    }
    env.wait_persisted(sold, Duration::from_secs(60)).await?;
    let stored = env.stored_order_ids().await?;
    assert_eq!(
        stored.len() as i64,
        sold,
        "rows in PostgreSQL != orders reserved in Redis"
    );
    let lost: Vec<_> = seen
        .accepted
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "202s that never reached PostgreSQL: {lost:?}"
    );
    eventually("the outbox is empty", Duration::from_secs(10), || async {
        Ok(env.outbox_len().await? == 0)
    })
    .await?;
    rescuer.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
