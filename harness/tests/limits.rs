//! Per-user limits and idempotency under real concurrency.

use flashsale_harness::{
    Env, buy, by_status, eventually, herd, http, metric, open_sale, redis_orders,
};
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

/// One script call deciding several attempts decides each as if it came
/// alone, in order: later attempts see what earlier ones took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_its_attempts_in_order() -> anyhow::Result<()> {
    use flashsale_gateway::reserve::{Attempt, Reservation, reserve_batch};
    let env = Env::new("batch").await?;
    env.seed(&open_sale(3, 2, 2)).await?;
    let ids: Vec<String> = (0..7).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let a = |i: usize, user: &'static str, quantity: u32, key: Option<&'static str>| Attempt {
        order_id: &ids[i],
        user,
        quantity,
        idempotency_key: key,
        client: user,
        place: None,
    };
    let attempts = [
        a(0, "a", 2, Some("k1")),
        a(1, "a", 1, Some("k1")),
        a(2, "a", 2, Some("k1")),
        a(3, "a", 1, None),
        a(4, "b", 2, None),
        a(5, "b", 1, None),
        a(6, "c", 1, None),
    ];
    let keys = flashsale_store::keys::SaleKeys::new(&env.sale);
    let mut conn = env.redis.clone();
    let r = reserve_batch(&mut conn, &keys, &env.sale, &attempts).await?;
    assert_eq!(r.len(), 7);
    let Reservation::Accepted { record: first } = &r[0] else {
        panic!("the first attempt takes 2 of 3: {:?}", r[0]);
    };
    assert_eq!(
        r[1],
        Reservation::IdempotencyMismatch {
            order_id: ids[0].clone()
        },
        "same key, other quantity"
    );
    assert_eq!(
        r[2],
        Reservation::Replay {
            record: first.clone(),
            pending: true
        },
        "same key, same body: the first answer again"
    );
    assert_eq!(r[3], Reservation::UserLimit { limit: 2, held: 2 });
    assert_eq!(r[4], Reservation::SoldOut { remaining: 1 });
    assert!(matches!(r[5], Reservation::Accepted { .. }), "{:?}", r[5]);
    assert_eq!(r[6], Reservation::SoldOut { remaining: 0 });

    let snap = env.snapshot().await?;
    assert_eq!((snap.remaining, snap.sold), (0, 3));
    assert_eq!(redis_orders(&env).await?, 2);

    // The call's writes are all in place: what each user holds, the key,
    // and one outbox member per accepted order.
    let held: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.users())
        .query_async(&mut conn)
        .await?;
    assert_eq!(held.len(), 2, "only the buyers who got units: {held:?}");
    assert_eq!((held["a"], held["b"]), (2, 1));
    let outbox: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.outbox())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let mut expected = vec![format!("{}:1", ids[0]), format!("{}:1", ids[5])];
    let mut outbox_sorted = outbox.clone();
    outbox_sorted.sort();
    expected.sort();
    assert_eq!(outbox_sorted, expected);
    for rec in [first, &redis_record(&env, &ids[5]).await?] {
        let parsed: flashsale_common::order::OrderRecord = serde_json::from_str(rec)?;
        assert_eq!(
            parsed.status,
            flashsale_common::order::OrderStatus::Confirmed
        );
        assert!(parsed.reserved_at_ms > 0 && parsed.hold_expires_at_ms.is_none());
    }

    // A later call replays the key from what the first call stored.
    let later = [a(2, "a", 2, Some("k1")), a(6, "c", 1, None)];
    let r = reserve_batch(&mut conn, &keys, &env.sale, &later).await?;
    assert_eq!(
        r[0],
        Reservation::Replay {
            record: first.clone(),
            pending: true
        }
    );
    assert_eq!(r[1], Reservation::SoldOut { remaining: 0 });
    env.cleanup().await
}

async fn redis_record(env: &Env, order_id: &str) -> anyhow::Result<String> {
    let mut conn = env.redis.clone();
    let keys = flashsale_store::keys::SaleKeys::new(&env.sale);
    Ok(redis::cmd("HGET")
        .arg(keys.orders())
        .arg(order_id)
        .query_async(&mut conn)
        .await?)
}

/// With `--user-header`, the buyer is who the proxy in front signed in: a
/// bot cannot get past the per-user limit by naming other users in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_buyer_cannot_pass_the_limit_under_other_names() -> anyhow::Result<()> {
    let env = Env::new("signedin").await?;
    env.seed(&open_sale(1_000, 2, 1)).await?;
    let gw = env
        .gateway(&["--user-header", "X-Authenticated-User"])
        .await?;
    let url = env.orders_url(&gw);
    let client = http();
    let post = |signed_in: Option<&'static str>, body: serde_json::Value| {
        let mut req = client.post(&url).json(&body);
        if let Some(user) = signed_in {
            req = req.header("X-Authenticated-User", user);
        }
        async move {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            anyhow::Ok((status, body))
        }
    };

    // Not signed in: refused before anything is reserved.
    let (status, body) = post(None, serde_json::json!({"user": "alice", "quantity": 1})).await?;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(body["error"]["field"], "x-authenticated-user");

    // 50 parallel attempts of one signed-in bot, each naming another user
    // in the body: all refused, naming the field.
    let attempts = (0..50).map(|i| {
        post(
            Some("bot"),
            serde_json::json!({"user": format!("bot-{i}"), "quantity": 1}),
        )
    });
    let answers = futures::future::try_join_all(attempts).await?;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 422 && b["error"]["field"] == "user"),
        "{answers:?}"
    );
    let snap = env.snapshot().await?;
    assert_eq!((snap.sold, snap.remaining), (0, 1_000), "nothing reserved");

    // The same 50 without a user in the body: the signed-in buyer's limit of
    // two holds.
    let attempts = (0..50).map(|_| post(Some("bot"), serde_json::json!({"quantity": 1})));
    let answers = futures::future::try_join_all(attempts).await?;
    let accepted: Vec<_> = answers.iter().filter(|(s, _)| *s == 202).collect();
    assert_eq!(accepted.len(), 2, "{answers:?}");
    assert!(
        accepted.iter().all(|(_, b)| b["user"] == "bot"),
        "{accepted:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s != 202)
            .all(|(s, b)| *s == 409 && b["error"]["code"] == "user_limit_reached"),
        "{answers:?}"
    );
    // Naming oneself in the body is the same as leaving it out.
    let (status, body) = post(
        Some("carol"),
        serde_json::json!({"user": "carol", "quantity": 1}),
    )
    .await?;
    assert_eq!(
        (status, &body["user"]),
        (202, &serde_json::json!("carol")),
        "{body}"
    );
    let snap = env.snapshot().await?;
    assert_eq!((snap.sold, snap.remaining), (3, 997));

    gw.shutdown().await?;
    env.cleanup().await
}
