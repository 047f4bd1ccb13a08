//! Redis behind Sentinel: a sale whose primary crashes, or is handed over
//! to its replica, in the middle goes on selling on the replica the
//! sentinel promotes, without overselling and without losing an accepted
//! order.

use flashsale_harness::sentinel::{SentinelGroup, crash_mid_sale};
use flashsale_harness::{
    Env, buy, by_status, eventually, herd, http, metric, open_sale, restock_reaches,
};
use flashsale_store::redisconn::RedisConn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

    // Half the stock sells, the primary crashes, and once the sentinel has
    // promoted the replica the same gateway sells the rest there: 503 while
    // it still talks to the dead primary, then exactly 100 more units.
    crash_mid_sale(&mut group, &env, &url, 200).await?;

    // A restock on the new primary reaches the gateway, which had answered
    // "sold out" from memory.
    env.seed(&open_sale(210, 1, 1)).await?;
    restock_reaches(&url, Duration::from_secs(15)).await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}

/// With `--redis-wait-replicas 1`, a buyer gets 202 only once the replica
/// holds the reservation: while it acknowledges nothing, the order is not
/// published and the buyer gets 503 `order_pending`; once it is back, the
/// same Idempotency-Key gets the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_out_only_once_a_replica_holds_its_reservation() -> anyhow::Result<()> {
    let group = SentinelGroup::start().await?;
    let env = Env::on_redis("replica-ack", &group.url()).await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env
        .gateway(&[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "300",
        ])
        .await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let base = gw.url();
    let confirms = || metric(&base, "flashsale_gateway_publish_confirms_total");

    let first = herd(
        &url,
        (0..20).map(|i| (format!("buyer-{i}"), 1, None)).collect(),
        20,
    )
    .await?;
    assert_eq!(
        by_status(&first).get(&202),
        Some(&20),
        "{:?}",
        by_status(&first)
    );
    assert_eq!(confirms().await?, 20.0);

    group.signal_replica("STOP")?;
    let client = http();
    let paused = buy(&client, &url, "late", 1, Some("late-key")).await;
    group.signal_replica("CONT")?;
    let paused = paused?;
    assert_eq!(
        (paused.status, paused.body["error"]["code"].as_str()),
        (503, Some("order_pending")),
        "{}",
        paused.body
    );
    let order_id = paused.body["error"]["orderId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no orderId in {}", paused.body))?
        .to_owned();
    assert_eq!(
        confirms().await?,
        20.0,
        "the unreplicated order was published"
    );
    assert_eq!(
        metric(
            &base,
            r#"flashsale_gateway_orders_total{outcome="replica_pending"}"#
        )
        .await?,
        1.0
    );
    // The unit is reserved all the same: it is not sold twice.
    assert_eq!(env.snapshot().await?.remaining, 79);

    // The replica is back: the same key gets the same order, now published.
    let again = buy(&client, &url, "late", 1, Some("late-key")).await?;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["orderId"].as_str(), Some(order_id.as_str()));
    env.wait_persisted(21, Duration::from_secs(30)).await?;
    assert!(env.stored_order_ids().await?.contains(&order_id));

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}

/// The distinct scores one outbox entry of a sale was seen with: the time
/// it was written, then each lease a sweep gave it.
struct Leases<'a> {
    env: &'a Env,
    outbox: String,
    member: String,
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl<'a> Leases<'a> {
    fn new(env: &'a Env, member: String) -> Self {
        Self {
            env,
            outbox: flashsale_store::keys::SaleKeys::new(&env.sale).outbox(),
            member,
            seen: std::sync::Mutex::default(),
        }
    }

    /// Reads the entry's score now; how many distinct ones were seen.
    async fn count(&self) -> anyhow::Result<usize> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&self.outbox)
            .arg(&self.member)
            .query_async(&mut self.env.redis.clone())
            .await?;
        let mut seen = self.seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(s) = score {
            seen.insert(s.to_bits());
        }
        Ok(seen.len())
    }
}

/// With `--redis-wait-replicas 1`, the outbox sweeper sends an order again
/// only once a replica holds it, as the buyer's request does: while the
/// replica acknowledges nothing, the sweeper leases the order pass after
/// pass and sends nothing (a failover could still take the reservation
/// away, and its unit would be sold twice); once the replica is back, the
/// order goes out and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_sends_an_order_only_once_a_replica_holds_it() -> anyhow::Result<()> {
    let group = SentinelGroup::start().await?;
    let env = Env::on_redis("sweep-ack", &group.url()).await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env
        .gateway(&[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "200",
            "--outbox-lease-ms",
            "100",
            "--sweep-interval-ms",
            "100",
        ])
        .await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let base = gw.url();
    let sent_again = || metric(&base, "flashsale_gateway_outbox_republished_total");

    group.signal_replica("STOP")?;
    let stopped = async {
        let order_id = buy(&http(), &url, "late", 1, None).await?.pending_id()?;
        // Two leases after the first: two sweeps found the order due.
        let leases = Leases::new(&env, format!("{order_id}:1"));
        eventually(
            "the sweeper leased the order twice, or sent it",
            Duration::from_secs(20),
            || async { Ok(leases.count().await? >= 3 || sent_again().await? > 0.0) },
        )
        .await?;
        // Read before the replica is back: the sweeper sends it then.
        anyhow::Ok((order_id, sent_again().await?))
    }
    .await;
    group.signal_replica("CONT")?;
    let (order_id, sent_while_stopped) = stopped?;
    assert_eq!(
        sent_while_stopped, 0.0,
        "the sweeper sent an order no replica holds"
    );

    // The replica is back: the sweeper sends it, the worker stores it.
    env.wait_persisted(1, Duration::from_secs(30)).await?;
    assert!(env.stored_order_ids().await?.contains(&order_id));
    eventually("an empty outbox", Duration::from_secs(30), || async {
        Ok(env.outbox_len().await.unwrap_or(1) == 0)
    })
    .await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}

/// With `--redis-wait-replicas 1`, a payment is reported done only once a
/// replica holds it: while the replica acknowledges nothing, the confirm
/// answers 503 `confirm_pending` and nothing is published; confirming again
/// once it is back answers 200, and the payment reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_confirmed_only_once_a_replica_holds_it() -> anyhow::Result<()> {
    let group = SentinelGroup::start().await?;
    let env = Env::on_redis("confirm-ack", &group.url()).await?;
    let mut cfg = open_sale(100, 1, 1);
    cfg.hold_ms = 600_000;
    env.seed(&cfg).await?;
    let gw = env
        .gateway(&[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "200",
        ])
        .await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let client = http();
    let order_id = buy(&client, &url, "payer", 1, None).await?.accepted_id()?;
    let confirm = || async {
        let r = client
            .post(format!("{url}/{order_id}/confirm"))
            .send()
            .await?;
        let status = r.status().as_u16();
        anyhow::Ok((status, r.json::<serde_json::Value>().await?))
    };

    group.signal_replica("STOP")?;
    let paused = confirm().await;
    group.signal_replica("CONT")?;
    let (status, body) = paused?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("confirm_pending")),
        "{body}"
    );
    assert_eq!(
        metric(&gw.url(), "flashsale_gateway_publish_confirms_total").await?,
        1.0,
        "the unreplicated payment was published"
    );

    let (status, body) = confirm().await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("confirmed")),
        "{body}"
    );
    env.wait_ledger(
        "the payment reaches PostgreSQL",
        Duration::from_secs(30),
        |l| l.confirmed_units == 1,
    )
    .await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}

/// With `--redis-wait-replicas 1`, an expired hold's record goes out only
/// once a replica holds the expiry: while the replica acknowledges nothing,
/// the record waits in the outbox (the sweeper leases it pass after pass and
/// sends nothing) and PostgreSQL still shows the hold; once the replica is
/// back, the expiry reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expiry_goes_out_only_once_a_replica_holds_it() -> anyhow::Result<()> {
    let group = SentinelGroup::start().await?;
    let env = Env::on_redis("expiry-ack", &group.url()).await?;
    let mut cfg = open_sale(100, 1, 1);
    cfg.hold_ms = 1_000;
    env.seed(&cfg).await?;
    let gw = env
        .gateway(&[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "200",
            "--hold-sweep-ms",
            "100",
            "--outbox-lease-ms",
            "100",
            "--sweep-interval-ms",
            "100",
        ])
        .await?;
    let worker = env.worker(&[]).await?;
    let order_id = buy(&http(), &env.orders_url(&gw), "unpaid", 1, None)
        .await?
        .accepted_id()?;
    env.wait_persisted(1, Duration::from_secs(30)).await?;
    let ledger = || flashsale_common::db::ledger_counts(&env.pool, &env.sale);

    group.signal_replica("STOP")?;
    let stopped = async {
        // The expiry's record, leased twice after it was written: two
        // sweeps found it unsent.
        let leases = Leases::new(&env, format!("{order_id}:2"));
        eventually(
            "the expired hold's record waits in the outbox through two sweeps",
            Duration::from_secs(20),
            || async { Ok(leases.count().await? >= 3) },
        )
        .await?;
        // Read before the replica is back: the sweeper sends it then.
        ledger().await.map_err(anyhow::Error::from)
    }
    .await;
    group.signal_replica("CONT")?;
    let while_stopped = stopped?;
    assert_eq!(
        (while_stopped.reserved_units, while_stopped.expired_units),
        (1, 0),
        "the expiry reached PostgreSQL while no replica held it"
    );
    assert_eq!(env.snapshot().await?.expired, 1, "Redis expired the hold");

    env.wait_ledger(
        "the expiry reaches PostgreSQL",
        Duration::from_secs(30),
        |l| l.expired_units == 1,
    )
    .await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}

/// A primary handed over on purpose (`SENTINEL FAILOVER`) keeps taking
/// writes until the sentinel makes it a replica, seconds later, and those
/// writes are then lost. Buyers keep coming all through it; with
/// `--redis-wait-replicas 1` no buyer gets 202 for a reservation that is
/// lost: every accepted order is stored, and PostgreSQL holds exactly the
/// units the surviving primary counts as sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_under_load_loses_no_accepted_order_and_oversells_nothing() -> anyhow::Result<()>
{
    let group = SentinelGroup::start().await?;
    let env = Env::on_redis("handover", &group.url()).await?;
    env.seed(&open_sale(200, 1, 1)).await?;
    let gw = env
        .gateway(&["--redis-wait-replicas", "1", "--outbox-lease-ms", "1000"])
        .await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let accepted_ids = |answers: &[flashsale_harness::Answer]| -> Vec<String> {
        answers
            .iter()
            .filter(|a| a.status == 202)
            .filter_map(|a| a.body["orderId"].as_str().map(str::to_owned))
            .collect()
    };

    let before = herd(
        &url,
        (0..50).map(|i| (format!("before-{i}"), 1, None)).collect(),
        25,
    )
    .await?;
    let mut accepted = accepted_ids(&before);
    assert_eq!(accepted.len(), 50, "{:?}", by_status(&before));

    // Buyers keep coming while the sentinel hands over and, later, turns
    // the old primary into a replica.
    let stop = Arc::new(AtomicBool::new(false));
    let buyers = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let wave = (0..10)
                    .map(|i| (format!("during-{n}-{i}"), 1, None))
                    .collect();
                answers.extend(herd(&url, wave, 10).await?);
                n += 1;
            }
            anyhow::Ok(answers)
        })
    };
    group.hand_over().await?;
    group
        .wait_failover(Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nsentinel log:\n{}", group.sentinel_log()))?;
    group.wait_demoted(Duration::from_secs(30)).await?;
    stop.store(true, Ordering::Release);
    let during = buyers.await??;
    let statuses = by_status(&during);
    assert!(
        statuses.keys().all(|s| [202, 409, 503].contains(s)),
        "{statuses:?}"
    );
    accepted.extend(accepted_ids(&during));

    // The old primary, now a replica, refuses writes in a way that sends a
    // connection to the sentinels, whether a command or a script (the
    // reservation) writes.
    let mut old = group.node(group.primary_port).await?;
    let plain: redis::RedisResult<()> = redis::cmd("SET")
        .arg("flashsale-test-write")
        .arg(1)
        .query_async(&mut old)
        .await;
    let scripted: redis::RedisResult<()> = redis::cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], '1')")
        .arg(1)
        .arg("flashsale-test-write")
        .query_async(&mut old)
        .await;
    for refused in [plain, scripted] {
        let e = refused.expect_err("a replica took a write");
        assert!(flashsale_store::sentinel::primary_lost(&e), "{e:?}");
    }

    // The rest of the stock sells on the new primary.
    let after = herd(
        &url,
        (0..300).map(|i| (format!("after-{i}"), 1, None)).collect(),
        50,
    )
    .await?;
    accepted.extend(accepted_ids(&after));

    // Orders answered 503 order_pending on the new primary are delivered
    // by the sweeper; then Redis and PostgreSQL agree unit for unit.
    eventually("an empty outbox", Duration::from_secs(30), || async {
        Ok(env.outbox_len().await.unwrap_or(1) == 0)
    })
    .await?;
    let snap = env.snapshot().await?;
    assert_eq!(snap.sold + snap.remaining, 200, "{snap:?}");
    env.wait_persisted(snap.sold, Duration::from_secs(60))
        .await?;
    let stored = env.stored_order_ids().await?;
    assert_eq!(
        i64::try_from(stored.len())?,
        snap.sold,
        "PostgreSQL and the surviving primary disagree: {snap:?} ({statuses:?} during the hand-over)"
    );
    let lost: Vec<_> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "accepted but never stored: {lost:?}");

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await?;
    Ok(())
}
