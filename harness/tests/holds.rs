//! Payment holds: unpaid reservations expire and return to stock exactly
//! once; a confirm racing an expiry has exactly one winner.

use flashsale_common::db::ledger_counts;
use flashsale_harness::{Env, by_status, eventually, herd, http, now_ms, open_sale};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// The hold of the first test: what 1 000 purchases and 600 confirms take on
/// a loaded 2-core machine (about 2 s), three times over.
const HOLD_MS: i64 = 6_000;

fn holding(stock: i64, hold_ms: i64) -> flashsale_store::stock::SeedConfig {
    let mut cfg = open_sale(stock, 1, 1);
    cfg.hold_ms = hold_ms;
    cfg
}

/// Confirms as a payment service would: a `503` (the gateway's Redis call
/// timed out, as it may on a loaded machine) is retried, which confirming
/// allows since it is idempotent. Any other answer is returned.
async fn confirm(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    for _ in 0..20 {
        let r = client.post(url).send().await?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        if status != 503 {
            return Ok((status, body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{url}: still 503 after 20 attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_paid_four_hundred_expire_and_return_to_stock() -> anyhow::Result<()> {
    let env = Env::new("holds").await?;
    let stock = 2_000;
    // Holds last long enough for 600 confirms on a loaded 2-core machine.
    env.seed(&holding(stock, HOLD_MS)).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);

    let purchases = (0..1_000).map(|i| (format!("h{i}"), 1, None)).collect();
    let answers = herd(&url, purchases, 200).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&1_000));
    assert!(
        answers
            .iter()
            .all(|a| a.body["status"] == "reserved" && a.body["holdExpiresAt"].is_string())
    );
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.reserved, snap.remaining, snap.sold),
        (1_000, stock - 1_000, 0)
    );

    // Pay for the 600 most recent holds (the most time left), in parallel.
    let mut orders: Vec<(String, String, String)> = answers
        .iter()
        .map(|a| {
            (
                a.body["reservedAt"].as_str().unwrap_or_default().to_owned(),
                a.body["orderId"].as_str().unwrap_or_default().to_owned(),
                a.body["user"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    orders.sort();
    let (to_expire, to_pay) = orders.split_at(400);
    let client = http();
    let confirms = futures::stream::iter(to_pay.iter().map(|(_, id, _)| {
        let client = client.clone();
        let u = format!("{url}/{id}/confirm");
        async move { confirm(&client, &u).await }
    }))
    .buffer_unordered(100)
    .collect::<Vec<_>>()
    .await;
    for c in confirms {
        let (status, body) = c?;
        assert_eq!(status, 200, "confirm in time: {body}");
        assert_eq!(body["status"], "confirmed");
    }
    // Confirming again is idempotent.
    let again = confirm(&client, &format!("{url}/{}/confirm", to_pay[0].1)).await?;
    assert_eq!(
        (again.0, again.1["status"].as_str()),
        (200, Some("confirmed"))
    );

    eventually(
        "every unpaid hold expired",
        Duration::from_secs(15),
        || async { Ok(env.snapshot().await?.reserved == 0) },
    )
    .await?;
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.sold, snap.expired, snap.remaining),
        (600, 400, stock - 600)
    );

    // An expired order stays expired, and its user may buy again.
    let (_, id, user) = &to_expire[0];
    let late = confirm(&client, &format!("{url}/{id}/confirm")).await?;
    assert_eq!(
        (late.0, late.1["error"]["code"].as_str()),
        (409, Some("hold_expired"))
    );
    let rebuy = flashsale_harness::buy(&client, &url, user, 1, None).await?;
    assert_eq!(
        rebuy.status, 202,
        "the per-user count is given back: {}",
        rebuy.body
    );
    let unknown = confirm(&client, &format!("{url}/{}/confirm", uuid::Uuid::new_v4())).await?;
    assert_eq!(unknown.0, 404);

    eventually(
        "the ledger shows 600 confirmed and 400 expired",
        Duration::from_secs(30),
        || async {
            let l = ledger_counts(&env.pool, &env.sale).await?;
            Ok(l.confirmed_units == 600 && l.expired_units == 400)
        },
    )
    .await?;
    // Every revision (reserved, then confirmed or expired) was confirmed by
    // RabbitMQ and acknowledged: nothing is left to publish again.
    eventually(
        "the outbox is empty once every revision is confirmed",
        Duration::from_secs(10),
        || async { Ok(env.outbox_len().await? == 0) },
    )
    .await?;

    // Once the sale is deleted, a confirm answers 410.
    let mut conn = env.redis.clone();
    flashsale_store::stock::delete_sale(&mut conn, &env.sale).await?;
    let gone = confirm(&client, &format!("{url}/{}/confirm", to_pay[1].1)).await?;
    assert_eq!(
        (gone.0, gone.1["error"]["code"].as_str()),
        (410, Some("sale_gone"))
    );
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_racing_expiry_has_exactly_one_winner() -> anyhow::Result<()> {
    let env = Env::new("holdrace").await?;
    let stock = 500;
    env.seed(&holding(stock, 1_000)).await?;
    // Two gateways expiring holds every 5 ms, buyers confirming around the deadline.
    let gw = env.gateway(&["--hold-sweep-ms", "5"]).await?;
    let gw2 = env.gateway(&["--hold-sweep-ms", "5"]).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let purchases = (0..500).map(|i| (format!("r{i}"), 1, None)).collect();
    let answers = herd(&url, purchases, 100).await?;
    assert_eq!(by_status(&answers).get(&202), Some(&500));

    let client = http();
    let mut tasks = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let id = a.body["orderId"].as_str().unwrap_or_default().to_owned();
        let deadline = a.body["holdExpiresAt"]
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_millisecond());
        // Aim each confirm within ±25 ms of its deadline, alternating gateways.
        let offset = (i as i64 % 51) - 25;
        let at = deadline + offset;
        let base = if i % 2 == 0 {
            env.orders_url(&gw)
        } else {
            env.orders_url(&gw2)
        };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let wait = u64::try_from(at - now_ms()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let r = confirm(&client, &format!("{base}/{id}/confirm")).await?;
            anyhow::Ok((id, r.0))
        }));
    }
    let mut outcome: HashMap<String, u16> = HashMap::new();
    for t in tasks {
        let (id, status) = t.await??;
        assert!(status == 200 || status == 409, "confirm answered {status}");
        outcome.insert(id, status);
    }
    let paid = outcome.values().filter(|s| **s == 200).count() as i64;
    let lapsed = outcome.values().filter(|s| **s == 409).count() as i64;
    assert!(
        paid > 0 && lapsed > 0,
        "the race should go both ways: {paid} paid, {lapsed} lapsed"
    );

    eventually("all holds settled", Duration::from_secs(10), || async {
        Ok(env.snapshot().await?.reserved == 0)
    })
    .await?;
    let snap = env.snapshot().await?;
    assert_eq!(snap.sold, paid, "sold must equal the confirms that won");
    assert_eq!(
        snap.expired, lapsed,
        "each lapsed hold restocked exactly once"
    );
    assert_eq!(snap.remaining, stock - paid, "no double restock");

    // The ledger agrees order by order.
    eventually("the ledger settled", Duration::from_secs(30), || async {
        let l = ledger_counts(&env.pool, &env.sale).await?;
        Ok(l.confirmed_units == paid && l.expired_units == lapsed)
    })
    .await?;
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT order_id::text, status FROM orders")
        .fetch_all(&env.pool)
        .await?;
    for (id, status) in rows {
        let want = if outcome.get(&id) == Some(&200) {
            "confirmed"
        } else {
            "expired"
        };
        assert_eq!(status, want, "order {id}");
    }
    gw.shutdown().await?;
    gw2.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// With `--confirm-token`, only the payment service confirms: a confirm
/// without the token, or with another, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_takes_the_payment_services_token() -> anyhow::Result<()> {
    let env = Env::new("holds-token").await?;
    env.seed(&holding(10, 60_000)).await?;
    let gw = env
        .gateway(&["--confirm-token", "pay-service-7f3a9c"])
        .await?;
    let url = env.orders_url(&gw);
    let client = http();
    let order = flashsale_harness::buy(&client, &url, "payer", 1, None).await?;
    assert_eq!(order.status, 202, "{:?}", order.body);
    let id = order.body["orderId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let confirm_url = format!("{url}/{id}/confirm");

    for auth in [
        None,
        Some("Bearer pay-service-7f3a9"),
        Some("pay-service-7f3a9c"),
    ] {
        let mut req = client.post(&confirm_url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"flashsale\"")
        );
        let body: serde_json::Value = r.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert_eq!(body["error"]["field"], "Authorization", "{body}");
    }
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.reserved, snap.sold),
        (1, 0),
        "refused confirms change nothing"
    );
    let read: serde_json::Value = client
        .get(format!("{url}/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(read["status"], "reserved", "{read}");

    let r = client
        .post(&confirm_url)
        .header("Authorization", "Bearer pay-service-7f3a9c")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["status"], "confirmed", "{body}");
    let snap = env.snapshot().await?;
    assert_eq!((snap.reserved, snap.sold), (0, 1));

    gw.shutdown().await?;
    env.cleanup().await
}
