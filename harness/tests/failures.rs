//! Failure drills: a worker that dies mid-batch, a poison message, an
//! order whose takers keep dying, RabbitMQ unreachable when an order was
//! reserved, a RabbitMQ that takes connections but never answers, and
//! PostgreSQL unreachable under a worker.

use flashsale_common::amqp;
use flashsale_harness::proxy::{Mode, TcpProxy, authority};
use flashsale_harness::{Env, amqp_url, buy, by_status, eventually, herd, http, metric, open_sale};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_batch_stores_every_order_exactly_once() -> anyhow::Result<()> {
    let env = Env::new("crash").await?;
    env.seed(&open_sale(5_000, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    // Orders pile up in the queue while no worker runs.
    let purchases = (0..1_000).map(|i| (format!("b{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 100).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&1_000));

    // This worker commits three batches and drops its connection before
    // acknowledging the third: those messages come back.
    let mut crashing = env
        .worker(&[
            "--batch-size",
            "100",
            "--batch-timeout-ms",
            "200",
            "--crash-after-batches",
            "3",
        ])
        .await?;
    let crashed = tokio::time::timeout(Duration::from_secs(30), crashing.wait()).await?;
    assert!(crashed.is_err(), "the worker should have crashed");
    let committed = env.persisted_orders().await?;
    assert!(committed > 0 && committed < 1_000, "committed {committed}");

    let worker = env.worker(&["--batch-size", "100"]).await?;
    env.wait_persisted(1_000, Duration::from_secs(60)).await?;
    let worker_url = format!("http://{}", worker.addr());
    eventually(
        "the redelivered batch was seen as duplicates",
        Duration::from_secs(10),
        || async { Ok(metric(&worker_url, "flashsale_worker_duplicates_total").await? >= 1.0) },
    )
    .await?;
    assert!(metric(&worker_url, "flashsale_worker_redeliveries_total").await? >= 1.0);
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!((ledger.orders, ledger.units), (1_000, 1_000));
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// One unit for each user, one after the other; each must be accepted.
async fn buy_each(
    client: &reqwest::Client,
    url: &str,
    users: impl IntoIterator<Item = String>,
) -> anyhow::Result<()> {
    for user in users {
        let answer = buy(client, url, &user, 1, None).await?;
        anyhow::ensure!(answer.status == 202, "{user}: {}", answer.body);
    }
    Ok(())
}

/// The reason header of every message in a dead-letter queue; the
/// messages stay in the queue.
async fn dead_letter_reasons(ch: &lapin::Channel, dead: &str) -> anyhow::Result<Vec<String>> {
    let mut reasons = Vec::new();
    let mut last_tag = None;
    while let Some(msg) = ch
        .basic_get(dead.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        last_tag = Some(msg.delivery.delivery_tag);
        let headers = msg
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let reason = headers
            .inner()
            .get(amqp::REASON_HEADER)
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        reasons.push(reason);
    }
    if let Some(tag) = last_tag {
        ch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await?;
        // The queue takes them back on its own time: wait until it counts
        // them again, so that a redrive right after finds them.
        let n = u32::try_from(reasons.len())?;
        eventually(
            "the dead letters read are back in their queue",
            Duration::from_secs(10),
            || async { Ok(flashsale_harness::queue_messages(dead).await? == Some(n)) },
        )
        .await?;
    }
    Ok(reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_queue() -> anyhow::Result<()> {
    let env = Env::new("poison").await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);
    buy_each(&client, &url, (0..5).map(|i| format!("before-{i}"))).await?;
    let conn = amqp::connect(&amqp_url(), "e2e-poison", &Default::default()).await?;
    let ch = conn.create_channel().await?;
    // An order of this sale that parses, but whose user PostgreSQL's text
    // type cannot hold: stored, it would fail its batch at every redelivery.
    let nul_user = format!(
        r#"{{"v":1,"orderId":"{}","namespace":"{}","name":"{}","user":"a\u0000b","quantity":1,"status":"confirmed","reservedAtMs":{}}}"#,
        uuid::Uuid::new_v4(),
        env.sale.namespace,
        env.sale.name,
        flashsale_harness::now_ms()
    );
    for body in [
        &b"{not json"[..],
        br#"{"v":99,"orderId":"x"}"#,
        "\u{1F4A5}".as_bytes(),
        nul_user.as_bytes(),
    ] {
        ch.basic_publish(
            "".into(),
            amqp::orders_queue(&env.sale).into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await?;
    }
    buy_each(&client, &url, (0..5).map(|i| format!("after-{i}"))).await?;
    let worker = env.worker(&[]).await?;
    env.wait_persisted(10, Duration::from_secs(30)).await?;
    let dead = amqp::dead_letter_queue(&env.sale);
    eventually("four dead letters", Duration::from_secs(10), || async {
        Ok(env.queue_depth(&dead).await? == 4)
    })
    .await?;
    let reasons = dead_letter_reasons(&ch, &dead).await?;
    assert_eq!(reasons.len(), 4);
    for expected in ["unsupported message version 99", "NUL character"] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason says {expected:?}: {reasons:?}"
        );
    }
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    assert_eq!(env.queue_depth(&amqp::orders_queue(&env.sale)).await?, 0);
    assert_eq!(env.persisted_orders().await?, 10);
    let _ = conn.close(200, "done".into()).await;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// An order that keeps coming back unacknowledged (every worker that took
/// it stopped or lost its connection before storing it, as in a crash
/// loop) is moved to the dead-letter queue after 15 deliveries, before
/// RabbitMQ 4's delivery limit (20) would drop it; a redrive stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_handed_out_again_and_again_is_kept_not_dropped() -> anyhow::Result<()> {
    let env = Env::new("handedout").await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);
    buy_each(&client, &url, ["first".to_owned()]).await?;
    let orders = amqp::orders_queue(&env.sale);

    // Fifteen takers that die holding it: each closes its connection with
    // the order unacknowledged, and the queue counts one more delivery.
    for round in 1..=15 {
        let conn = amqp::connect(&amqp_url(), "e2e-taker", &Default::default()).await?;
        let ch = conn.create_channel().await?;
        let started = std::time::Instant::now();
        let msg = loop {
            // The order comes back once the queue has processed the last
            // taker's close: poll for it, within a bound.
            if let Some(msg) = ch
                .basic_get(orders.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            {
                break msg;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: the order did not come back within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(amqp::delivery_count(&msg.delivery.properties), round - 1);
        conn.close(200, "gone".into()).await?;
    }
    buy_each(&client, &url, ["second".to_owned(), "third".to_owned()]).await?;

    let worker = env.worker(&[]).await?;
    env.wait_persisted(2, Duration::from_secs(30)).await?;
    let dead = amqp::dead_letter_queue(&env.sale);
    eventually(
        "the order in the dead-letter queue",
        Duration::from_secs(10),
        || async { Ok(env.queue_depth(&dead).await? == 1) },
    )
    .await?;
    let conn = amqp::connect(&amqp_url(), "e2e-handedout", &Default::default()).await?;
    let reasons = dead_letter_reasons(&conn.create_channel().await?, &dead).await?;
    assert!(
        reasons.len() == 1
            && reasons[0].contains("handed out 15 times before without being stored"),
        "{reasons:?}"
    );

    // Back on the orders queue it starts afresh, and is stored.
    let moved = amqp::redrive(&conn, &env.sale, amqp::QueueType::Quorum, None).await?;
    assert_eq!((moved.moved, moved.left), (1, 0));
    env.wait_persisted(3, Duration::from_secs(30)).await?;
    assert_eq!(env.queue_depth(&dead).await?, 0);
    assert_eq!(env.persisted_orders().await?, 3);
    amqp::close_quietly(&conn, "done").await;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// An order the gateway accepted but PostgreSQL refuses (here by a
/// constraint the database's owner added to the ledger) goes to the
/// dead-letter queue with the database's reason; the orders of its batch
/// are stored, the queue does not stall on it, and a redrive stores it once
/// the constraint is gone. A refusal of every order alike (a column the
/// worker does not fill) keeps the orders in the queue instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_postgresql_refuses_go_to_the_dead_letter_queue() -> anyhow::Result<()> {
    let env = Env::new("refused").await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    sqlx::query(
        "ALTER TABLE orders ADD CONSTRAINT no_blocked_users CHECK (user_id NOT LIKE 'blocked-%')",
    )
    .execute(&env.pool)
    .await?;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);
    let users: Vec<String> = (0..12)
        .map(|i| match i {
            3 | 8 => format!("blocked-{i}"),
            _ => format!("buyer-{i}"),
        })
        .collect();
    buy_each(&client, &url, users.iter().cloned()).await?;
    // One batch holds all twelve orders, the refused ones among them.
    let worker = env.worker(&["--batch-size", "100"]).await?;
    env.wait_persisted(10, Duration::from_secs(30)).await?;
    let dead = amqp::dead_letter_queue(&env.sale);
    eventually("two dead letters", Duration::from_secs(10), || async {
        Ok(env.queue_depth(&dead).await? == 2)
    })
    .await?;
    let conn = amqp::connect(&amqp_url(), "e2e-refused", &Default::default()).await?;
    let ch = conn.create_channel().await?;
    let reasons = dead_letter_reasons(&ch, &dead).await?;
    assert_eq!(reasons.len(), 2);
    for r in &reasons {
        assert!(
            r.contains("PostgreSQL refused the order") && r.contains("no_blocked_users"),
            "{r}"
        );
    }
    let stored: std::collections::BTreeSet<String> = sqlx::query_scalar(
        "SELECT user_id FROM orders WHERE sale_namespace = $1 AND sale_name = $2",
    )
    .bind(&env.sale.namespace)
    .bind(&env.sale.name)
    .fetch_all(&env.pool)
    .await?
    .into_iter()
    .collect();
    let expected: std::collections::BTreeSet<String> = users
        .iter()
        .filter(|u| u.starts_with("buyer-"))
        .cloned()
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(env.queue_depth(&amqp::orders_queue(&env.sale)).await?, 0);
    let worker_url = format!("http://{}", worker.addr());
    assert_eq!(
        metric(&worker_url, "flashsale_worker_dead_letters_total").await?,
        2.0
    );
    assert_eq!(
        metric(&worker_url, "flashsale_worker_duplicates_total").await?,
        0.0
    );

    // The cause fixed, a redrive puts the two back and the worker stores them.
    sqlx::query("ALTER TABLE orders DROP CONSTRAINT no_blocked_users")
        .execute(&env.pool)
        .await?;
    let done = amqp::redrive(&conn, &env.sale, amqp::QueueType::Quorum, None).await?;
    assert_eq!((done.moved, done.left), (2, 0));
    env.wait_persisted(12, Duration::from_secs(30)).await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!((ledger.orders, ledger.units), (12, 12));
    assert_eq!(env.queue_depth(&dead).await?, 0);

    // A column the worker does not fill refuses every order alike: that is
    // the schema's fault, so the orders wait in the queue, not in the
    // dead-letter queue, until the column goes.
    sqlx::query("ALTER TABLE orders ADD COLUMN channel text NOT NULL DEFAULT 'web'")
        .execute(&env.pool)
        .await?;
    sqlx::query("ALTER TABLE orders ALTER COLUMN channel DROP DEFAULT")
        .execute(&env.pool)
        .await?;
    let errors_before = metric(&worker_url, "flashsale_worker_store_errors_total").await?;
    buy_each(&client, &url, (12..15).map(|i| format!("buyer-{i}"))).await?;
    eventually("a batch was refused", Duration::from_secs(30), || async {
        Ok(metric(&worker_url, "flashsale_worker_store_errors_total").await? > errors_before)
    })
    .await?;
    assert_eq!(env.queue_depth(&dead).await?, 0, "nothing dead-lettered");
    assert_eq!(env.persisted_orders().await?, 12);
    sqlx::query("ALTER TABLE orders DROP COLUMN channel")
        .execute(&env.pool)
        .await?;
    env.wait_persisted(15, Duration::from_secs(30)).await?;
    assert_eq!(env.queue_depth(&dead).await?, 0);
    let _ = conn.close(200, "done".into()).await;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_order_stays_in_the_outbox_and_is_delivered_later() -> anyhow::Result<()> {
    let env = Env::new("outbox").await?;
    env.seed(&open_sale(10, 2, 2)).await?;
    let client = http();
    // A gateway whose RabbitMQ is unreachable.
    let mut cfg = env.gateway_config(&["--publish-timeout-ms", "500"]);
    cfg.amqp.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let broken = flashsale_gateway::Gateway::start(cfg).await?;
    let ready = client
        .get(format!("{}/readyz", broken.url()))
        .send()
        .await?;
    assert_eq!(ready.status(), 503, "not ready without RabbitMQ");
    let a = buy(&client, &env.orders_url(&broken), "ann", 2, Some("pay-1")).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (503, Some("order_pending")),
        "{}",
        a.body
    );
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    let order_id = a.body["error"]["orderId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!order_id.is_empty());
    // Counted, not lost: the units are taken and the order waits in the outbox.
    assert_eq!(env.snapshot().await?.remaining, 8);
    broken.shutdown().await?;

    // A healthy gateway re-publishes what waited past its lease.
    let gw = env
        .gateway(&["--outbox-lease-ms", "0", "--sweep-interval-ms", "3600000"])
        .await?;
    let worker = env.worker(&[]).await?;
    let published = gw.sweep_outbox().await?;
    assert_eq!(published, 1);
    env.wait_persisted(1, Duration::from_secs(30)).await?;
    let stored: (String, i32) = sqlx::query_as("SELECT order_id::text, quantity FROM orders")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(stored, (order_id.clone(), 2));

    // The buyer's retry with the same key gets the order, not a second one.
    let retry = buy(&client, &env.orders_url(&gw), "ann", 2, Some("pay-1")).await?;
    assert_eq!(
        (retry.status, retry.body["orderId"].as_str()),
        (202, Some(order_id.as_str()))
    );
    let order: serde_json::Value = client
        .get(format!("{}/{order_id}", env.orders_url(&gw)))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(order["published"], true);
    assert_eq!(env.snapshot().await?.remaining, 8);
    assert_eq!(
        gw.sweep_outbox().await?,
        0,
        "the outbox is empty once confirmed"
    );
    assert_eq!(env.persisted_orders().await?, 1);
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// RabbitMQ away during a sale leaves a backlog in the outbox; once it is
/// back, one sweep publishes all of it (in concurrent batches), each order
/// once, not 200 orders a sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_the_outbox_goes_out_in_one_sweep() -> anyhow::Result<()> {
    let env = Env::new("backlog").await?;
    env.seed(&open_sale(1000, 1, 1)).await?;
    let mut cfg = env.gateway_config(&["--publish-timeout-ms", "500"]);
    cfg.amqp.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let broken = flashsale_gateway::Gateway::start(cfg).await?;
    let buyers = 650;
    let purchases = (0..buyers).map(|i| (format!("b{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&broken), purchases, 50).await?;
    assert_eq!(
        by_status(&answers),
        [(503, buyers)].into_iter().collect(),
        "every purchase is pending"
    );
    broken.shutdown().await?;
    assert_eq!(env.outbox_len().await?, 650);

    let gw = env
        .gateway(&["--outbox-lease-ms", "0", "--sweep-interval-ms", "3600000"])
        .await?;
    let worker = env.worker(&[]).await?;
    assert_eq!(gw.sweep_outbox().await?, buyers, "all of it in one sweep");
    env.wait_persisted(650, Duration::from_secs(60)).await?;
    eventually("the outbox emptied", Duration::from_secs(10), || async {
        Ok(env.outbox_len().await? == 0)
    })
    .await?;
    let snapshot = env.snapshot().await?;
    assert_eq!((snapshot.remaining, snapshot.sold), (350, 650));
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// A RabbitMQ that takes the TCP connection and never speaks AMQP (a hung
/// broker, a stuck proxy in between): the gateway still starts, says it is
/// not ready, and a purchase gets its `503` instead of hanging with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_that_never_answers_costs_a_503_not_a_hang() -> anyhow::Result<()> {
    let env = Env::new("hung").await?;
    env.seed(&open_sale(10, 2, 2)).await?;
    // The kernel completes the TCP handshake into this listener's backlog;
    // nothing ever reads or answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut cfg = env.gateway_config(&["--publish-timeout-ms", "500"]);
    cfg.amqp.amqp_url = format!("amqp://guest:guest@{}/%2f", hole.local_addr()?);
    let limit = Duration::from_secs(10);
    let late = |what: &str| anyhow::anyhow!("{what} took over {limit:?} with RabbitMQ hung");
    let gw = tokio::time::timeout(limit, flashsale_gateway::Gateway::start(cfg))
        .await
        .map_err(|_| late("starting the gateway"))??;
    let client = http();
    let ready = tokio::time::timeout(limit, client.get(format!("{}/readyz", gw.url())).send())
        .await
        .map_err(|_| late("/readyz"))??;
    assert_eq!(
        ready.status(),
        503,
        "not ready while RabbitMQ does not answer"
    );
    let a = tokio::time::timeout(
        limit,
        buy(&client, &env.orders_url(&gw), "ann", 2, Some("hung-1")),
    )
    .await
    .map_err(|_| late("a purchase"))??;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (503, Some("order_pending")),
        "{}",
        a.body
    );
    // Counted and waiting in the outbox, as when RabbitMQ refuses.
    assert_eq!(env.snapshot().await?.remaining, 8);
    tokio::time::timeout(limit, gw.shutdown())
        .await
        .map_err(|_| late("stopping the gateway"))??;
    drop(hole);
    env.cleanup().await
}

/// PostgreSQL unreachable under a running worker (cut through a proxy): the
/// worker keeps the batch in hand and tries again, says it is not ready,
/// buyers are not affected, and once PostgreSQL is back every order is
/// stored exactly once without a message going back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_keeps_the_orders_in_the_queue_until_it_is_back() -> anyhow::Result<()> {
    let env = Env::new("pgdown").await?;
    env.seed(&open_sale(1_000, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let proxy = TcpProxy::start(authority(&env.db_url, 5432)?).await?;
    let mut cfg = env.worker_config(&[]);
    cfg.database.database_url = proxy.url(&env.db_url)?;
    let worker = flashsale_worker::Worker::start(cfg).await?;
    let ready_url = format!("http://{}/readyz", worker.addr());
    let client = http();
    let ready = |want: u16| {
        let probe = client.get(&ready_url).send();
        async move { Ok(probe.await?.status() == want) }
    };

    let orders_url = env.orders_url(&gw);
    let buy_many = |from: usize, n: usize| {
        let purchases = (from..from + n)
            .map(|i| (format!("b{i}"), 1, None))
            .collect();
        herd(&orders_url, purchases, 50)
    };
    let first = buy_many(0, 100).await?;
    assert_eq!(by_status(&first).get(&202), Some(&100));
    env.wait_persisted(100, Duration::from_secs(30)).await?;

    proxy.set(Mode::Refuse);
    let second = buy_many(100, 200).await?;
    assert_eq!(
        by_status(&second).get(&202),
        Some(&200),
        "buyers do not depend on PostgreSQL"
    );
    eventually(
        "the worker reports not ready",
        Duration::from_secs(30),
        || ready(503),
    )
    .await?;
    let metrics = format!("http://{}", worker.addr());
    eventually("a batch was refused", Duration::from_secs(30), || async {
        Ok(metric(&metrics, "flashsale_worker_store_errors_total").await? >= 1.0)
    })
    .await?;
    assert_eq!(
        env.persisted_orders().await?,
        100,
        "nothing stored while cut off"
    );

    proxy.set(Mode::Pass);
    env.wait_persisted(300, Duration::from_secs(60)).await?;
    eventually("the worker is ready again", Duration::from_secs(30), || {
        ready(200)
    })
    .await?;
    let ledger = flashsale_common::db::ledger_counts(&env.pool, &env.sale).await?;
    assert_eq!((ledger.orders, ledger.units), (300, 300));
    assert_eq!(env.queue_depth(&amqp::orders_queue(&env.sale)).await?, 0);
    // The worker kept the batch it could not store and tried again: no
    // message went back to the queue, so none used up a delivery of the
    // limit RabbitMQ 4 puts on quorum queues.
    assert_eq!(
        metric(&metrics, "flashsale_worker_redeliveries_total").await?,
        0.0,
        "a batch went back to the queue"
    );
    gw.shutdown().await?;
    worker.shutdown().await?;
    drop(proxy);
    env.cleanup().await
}
