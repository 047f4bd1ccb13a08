//! A sale that is not open refuses with 403 and changes nothing; an unknown
//! sale is 404; a paused sale resumes; the window opens on time.

use flashsale_harness::{Env, buy, http, now_ms, open_sale, redis_orders};
use flashsale_store::stock;

fn counters(s: &stock::StockSnapshot) -> (i64, i64, i64, i64, i64) {
    (s.stock, s.remaining, s.reserved, s.sold, s.seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_paused_unopened_and_unknown_sales_change_nothing() -> anyhow::Result<()> {
    let env = Env::new("window").await?;
    let client = http();
    let gw = env.gateway(&[]).await?;
    let url = env.orders_url(&gw);

    // Served but never seeded: unknown.
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("unknown_sale"))
    );
    // Not served by this gateway at all.
    let other = format!("{}/api/v1/sales/e2e/not-this-one/orders", gw.url());
    let a = buy(&client, &other, "u", 1, None).await?;
    assert_eq!(a.status, 404);
    let a = client
        .get(format!("{}/api/v1/sales/e2e/not-this-one", gw.url()))
        .send()
        .await?;
    assert_eq!(a.status(), 404);

    let mut cfg = open_sale(10, 1, 1);
    cfg.start_ms = now_ms() + 3_600_000;
    cfg.end_ms = now_ms() + 7_200_000;
    env.seed(&cfg).await?;
    let before = counters(&env.snapshot().await?);
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("sale_not_started"))
    );

    cfg.start_ms = now_ms() - 7_200_000;
    cfg.end_ms = now_ms() - 1_000;
    env.seed(&cfg).await?;
    let before_ended = counters(&env.snapshot().await?);
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("sale_ended"))
    );
    assert_eq!(counters(&env.snapshot().await?), before_ended);

    let mut open = open_sale(10, 1, 1);
    open.paused = true;
    env.seed(&open).await?;
    let before_paused = counters(&env.snapshot().await?);
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("sale_paused"))
    );
    assert_eq!(counters(&env.snapshot().await?), before_paused);
    let status: serde_json::Value = client.get(env.sale_url(&gw)).send().await?.json().await?;
    assert_eq!(status["phase"], "Paused");

    // Closed by the operator whatever the window says.
    open.paused = false;
    env.seed(&open).await?;
    let mut conn = env.redis.clone();
    assert!(stock::set_closed(&mut conn, &env.sale, true).await?);
    let before_closed = counters(&env.snapshot().await?);
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("sale_closed"))
    );
    assert_eq!(counters(&env.snapshot().await?), before_closed);
    assert_eq!(
        redis_orders(&env).await?,
        0,
        "a refused request wrote an order"
    );
    assert_ne!(
        before, before_closed,
        "the seeds above should have changed the sale"
    );

    // Reopened: the same buyer now gets a unit.
    stock::set_closed(&mut conn, &env.sale, false).await?;
    let a = buy(&client, &url, "u", 1, None).await?;
    assert_eq!(a.status, 202, "{:?}", a.body);
    let status: serde_json::Value = client.get(env.sale_url(&gw)).send().await?.json().await?;
    assert_eq!(
        (status["remaining"].as_i64(), status["sold"].as_i64()),
        (Some(9), Some(1))
    );
    assert_eq!(status["phase"], "Active");

    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_on_time_by_the_store_clock() -> anyhow::Result<()> {
    let env = Env::new("opening").await?;
    let mut cfg = open_sale(1_000, 1, 1);
    // Align with the Redis clock, not the test's.
    cfg.start_ms = now_ms() + 1_200;
    env.seed(&cfg).await?;
    let start_ms = cfg.start_ms;
    let gw = env.gateway(&[]).await?;
    let client = http();
    let url = env.orders_url(&gw);
    let mut refused = 0;
    let mut i = 0;
    let first = loop {
        i += 1;
        let a = buy(&client, &url, &format!("early-{i}"), 1, None).await?;
        match a.status {
            403 => {
                assert_eq!(a.body["error"]["code"], "sale_not_started");
                refused += 1;
            }
            202 => break a,
            other => anyhow::bail!("unexpected {other}: {:?}", a.body),
        }
        assert!(i < 100_000, "the sale never opened");
    };
    let snap = env.snapshot().await?;
    assert!(
        refused > 0,
        "the first attempt should have been before the opening"
    );
    assert_eq!(snap.sold, 1);
    let reserved_at = chrono_ms(first.body["reservedAt"].as_str().unwrap_or_default());
    assert!(
        reserved_at >= start_ms,
        "accepted at {reserved_at}, before opening at {start_ms}"
    );
    assert!(
        reserved_at < start_ms + 1_000,
        "opened late: {reserved_at} vs {start_ms}"
    );
    gw.shutdown().await?;
    env.cleanup().await
}

fn chrono_ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(0)
}

/// The reservation script refuses in the order `Phase::at` defines: for
/// every combination of closed, paused, window position and stock, what a
/// buyer is told matches the phase the status reports. (A paused sale
/// past its end is Ended for both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reservation_script_decides_the_phase_as_phase_at_does() -> anyhow::Result<()> {
    use flashsale_api::sale::{Moment, Phase};
    use flashsale_gateway::reserve::{Attempt, Reservation, reserve_batch};
    use flashsale_store::keys::SaleKeys;
    let env = Env::new("phase-order").await?;
    let keys = SaleKeys::new(&env.sale);
    let hour = 3_600_000;
    let mut n = 0;
    // The sale that sells (Active) last, so that every other case finds
    // the stock as seeded.
    for remaining in [0, 5] {
        for (start, end) in [(hour, 2 * hour), (-2 * hour, -hour), (-hour, hour)] {
            for paused in [false, true] {
                for closed in [false, true] {
                    let now = now_ms();
                    let mut cfg = open_sale(remaining, 1, 1);
                    (cfg.start_ms, cfg.end_ms, cfg.paused) = (now + start, now + end, paused);
                    stock::delete_sale(&mut env.redis.clone(), &env.sale).await?;
                    env.seed(&cfg).await?;
                    stock::set_closed(&mut env.redis.clone(), &env.sale, closed).await?;
                    let want = Phase::at(Moment {
                        now_ms: now,
                        start_ms: cfg.start_ms,
                        end_ms: cfg.end_ms,
                        paused,
                        closed,
                        remaining,
                    });
                    n += 1;
                    let order = uuid::Uuid::new_v4().to_string();
                    let user = format!("buyer-{n}");
                    let attempt = Attempt {
                        order_id: &order,
                        user: &user,
                        quantity: 1,
                        idempotency_key: None,
                        client: &user,
                        place: None,
                    };
                    let got = reserve_batch(
                        &mut env.redis.clone(),
                        &keys,
                        &env.sale,
                        std::slice::from_ref(&attempt),
                    )
                    .await?
                    .pop();
                    let told = match got {
                        Some(Reservation::NotOpen { reason, .. }) => match reason.as_str() {
                            "closed" | "ended" => Phase::Ended,
                            "paused" => Phase::Paused,
                            "not_started" => Phase::Scheduled,
                            other => anyhow::bail!("unknown refusal {other}"),
                        },
                        Some(Reservation::SoldOut { .. }) => Phase::SoldOut,
                        Some(Reservation::Accepted { .. }) => Phase::Active,
                        other => anyhow::bail!("unexpected {other:?}"),
                    };
                    assert_eq!(
                        told, want,
                        "closed={closed} paused={paused} window={start}..{end} remaining={remaining}"
                    );
                }
            }
        }
    }
    assert_eq!(n, 24);
    env.cleanup().await
}
