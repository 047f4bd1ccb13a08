//! Per-client token buckets in Redis, checked in the reservation's round
//! trip: a client far above its limit gets only its share, other clients are
//! not slowed, and the limit holds across two gateways sharing one Redis.

use flashsale_harness::{Env, buy, http, open_sale};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_client_gets_its_share_across_two_gateways() -> anyhow::Result<()> {
    let env = Env::new("ratelimit").await?;
    let mut cfg = open_sale(100_000, 100_000, 1);
    cfg.rate_per_second = 10;
    cfg.burst = 10;
    env.seed(&cfg).await?;
    let gw1 = env.gateway(&[]).await?;
    let gw2 = env.gateway(&[]).await?;
    let urls = [env.orders_url(&gw1), env.orders_url(&gw2)];

    // The greedy client sends at ~10x its rate for 2 s, alternating gateways,
    // while a polite client stays at its rate.
    let greedy = {
        let urls = urls.clone();
        tokio::spawn(async move {
            let client = http();
            let started = Instant::now();
            let (mut ok, mut limited, mut i) = (0u32, 0u32, 0usize);
            let mut retry_after_seen = true;
            while started.elapsed() < Duration::from_secs(2) {
                let a = buy(&client, &urls[i % 2], "greedy", 1, None).await?;
                match a.status {
                    202 => ok += 1,
                    429 => {
                        limited += 1;
                        retry_after_seen &= a
                            .retry_after
                            .as_deref()
                            .is_some_and(|v| v.parse::<u64>().is_ok());
                    }
                    other => anyhow::bail!("unexpected {other}: {}", a.body),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok((ok, limited, started.elapsed(), retry_after_seen))
        })
    };
    let polite = {
        let urls = urls.clone();
        tokio::spawn(async move {
            let client = http();
            let (mut ok, mut slowest) = (0u32, Duration::ZERO);
            for i in 0..16 {
                let t = Instant::now();
                let a = buy(&client, &urls[i % 2], "polite", 1, None).await?;
                slowest = slowest.max(t.elapsed());
                anyhow::ensure!(
                    a.status == 202,
                    "polite client refused: {} {}",
                    a.status,
                    a.body
                );
                ok += 1;
                tokio::time::sleep(Duration::from_millis(125)).await;
            }
            anyhow::Ok((ok, slowest))
        })
    };
    let (ok, limited, elapsed, retry_after_seen) = greedy.await??;
    let (polite_ok, slowest) = polite.await??;

    // Burst plus what the bucket refills while the client hammers.
    let allowed = 10.0 + 10.0 * elapsed.as_secs_f64() + 1.0;
    assert!(
        f64::from(ok) <= allowed,
        "greedy got {ok}, more than its share {allowed:.0}"
    );
    assert!(ok >= 10, "greedy should get at least its burst, got {ok}");
    assert!(
        limited > ok,
        "greedy should be refused more than served: {ok} ok, {limited} limited"
    );
    assert!(retry_after_seen, "every 429 carries Retry-After");
    assert_eq!(polite_ok, 16, "the polite client is never limited");
    assert!(
        slowest < Duration::from_secs(1),
        "the polite client was slowed: {slowest:?}"
    );
    let snap = env.snapshot().await?;
    assert_eq!(
        snap.sold,
        i64::from(ok + polite_ok),
        "a 429 reserved nothing"
    );
    gw1.shutdown().await?;
    gw2.shutdown().await?;
    env.cleanup().await
}
