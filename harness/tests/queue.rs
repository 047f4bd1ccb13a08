//! The waiting room end to end, on the real Redis, RabbitMQ and PostgreSQL:
//! joins across two gateways keep the order they reached Redis in, passes
//! are checked, admission follows the stock, and a sold-out sale tells
//! every waiter at once.

use flashsale_api::sale::AdmissionMode;
use flashsale_gateway::admission::{self, Kind, Pass, Signer};
use flashsale_harness::{Env, eventually, http, now_ms, open_sale};
use flashsale_store::stock::{AdmissionConfig, SeedConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "a pass key of at least thirty-two bytes, for tests";

fn queued(stock: i64, per_second: u32, pass_ms: i64, bits: u8) -> SeedConfig {
    let mut cfg = open_sale(stock, 1, 1);
    cfg.admission = AdmissionConfig {
        mode: AdmissionMode::Fifo,
        open_ms: now_ms() - 3_600_000,
        per_second,
        pass_ms,
        challenge_bits: bits,
    };
    cfg
}

fn queue_url(env: &Env, gw: &flashsale_gateway::Gateway) -> String {
    format!("{}/queue", env.sale_url(gw))
}

/// Joins without a challenge; the ticket and the answer.
async fn join(client: &reqwest::Client, url: &str) -> anyhow::Result<(String, Value)> {
    let r = client.post(url).json(&json!({})).send().await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    anyhow::ensure!(status == 201, "join: {status} {body}");
    let ticket = body["ticket"].as_str().unwrap_or_default().to_owned();
    Ok((ticket, body))
}

async fn standing(client: &reqwest::Client, url: &str, ticket: &str) -> anyhow::Result<Value> {
    let r = client.get(format!("{url}/{ticket}")).send().await?;
    anyhow::ensure!(r.status().as_u16() == 200, "standing: {}", r.status());
    Ok(r.json().await?)
}

/// Polls `ticket`'s standing until it is admitted (at most 20 s).
async fn admitted(client: &reqwest::Client, url: &str, ticket: &str) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = standing(client, url, ticket).await?;
        if s["state"] == "admitted" {
            return Ok(s);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not admitted within 20 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn buy(
    client: &reqwest::Client,
    url: &str,
    pass: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = client.post(url).json(&json!({"quantity": 1}));
    if let Some(p) = pass {
        req = req.bearer_auth(p);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or_default()))
}

/// 5 000 buyers join through two gateways at once: each gets its own
/// place, the places are the order the joins reached Redis (the line's
/// list), and places are admitted in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_joins_on_two_gateways_are_admitted_in_arrival_order() -> anyhow::Result<()> {
    let env = Env::new("queue-fifo").await?;
    env.seed(&queued(5_000, 2_000, 600_000, 0)).await?;
    let gw1 = env.gateway(&["--pass-key", KEY]).await?;
    let gw2 = env.gateway(&["--pass-key", KEY]).await?;
    let urls = [queue_url(&env, &gw1), queue_url(&env, &gw2)];
    let client = http();
    let joins: Vec<anyhow::Result<(String, Value)>> = futures::stream::iter(0..5_000)
        .map(|i| {
            let (client, url) = (client.clone(), urls[i % 2].clone());
            async move { join(&client, &url).await }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut tickets = Vec::new();
    for j in joins {
        let (ticket, body) = j?;
        let place = body["place"].as_u64().unwrap_or_default();
        tickets.push((place, ticket));
    }
    tickets.sort();
    let places: Vec<u64> = tickets.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        places,
        (1..=5_000).collect::<Vec<u64>>(),
        "one place each, none twice"
    );

    // The line's list is the order the joins reached Redis.
    let signer = Signer::new(KEY.as_bytes());
    let mut conn = env.redis.clone();
    let line: Vec<String> = redis::cmd("LRANGE")
        .arg(flashsale_store::keys::SaleKeys::new(&env.sale).line())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    for (place, ticket) in &tickets {
        let t: admission::Ticket = signer
            .verify(Kind::Ticket, ticket)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(t.a, *place);
        assert_eq!(line.get(usize::try_from(*place)? - 1), Some(&t.i));
    }

    // Everyone is admitted (stock 5 000, 2 000 a second), in place order.
    let mut admitted_at = Vec::new();
    for (place, ticket) in &tickets {
        let url = &urls[usize::try_from(*place % 2)?];
        let body = admitted(&client, url, ticket).await?;
        admitted_at.push(body["passExpiresAtMs"].as_i64().unwrap_or_default() - 600_000);
    }
    assert!(
        admitted_at.windows(2).all(|w| w[0] <= w[1]),
        "admitted in the order of the places"
    );
    gw1.shutdown().await?;
    gw2.shutdown().await?;
    env.cleanup().await
}

/// A sale with a line takes no order without a valid pass of its own:
/// none, a forged one, one run out, one for another sale. Stock unchanged.
/// A challenge wrong, spent or stale is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_and_challenges_are_checked() -> anyhow::Result<()> {
    let env = Env::new("queue-pass").await?;
    env.seed(&queued(10, 100, 600_000, 8)).await?;
    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let (client, orders) = (http(), env.orders_url(&gw));
    let signer = Signer::new(KEY.as_bytes());
    let pass = |sale: &str, exp: i64| {
        signer.sign(
            Kind::Pass,
            &Pass {
                s: sale.to_owned(),
                sub: "mallory".into(),
                p: 1,
                exp,
            },
        )
    };
    let label = env.sale.to_string();
    let cases = [
        (None, 401, "pass_required"),
        (Some("not.a-pass".to_owned()), 403, "pass_invalid"),
        (
            Some(
                Signer::new(b"another key of at least thirty-two bytes").sign(
                    Kind::Pass,
                    &Pass {
                        s: label.clone(),
                        sub: "mallory".into(),
                        p: 1,
                        exp: now_ms() + 60_000,
                    },
                ),
            ),
            403,
            "pass_invalid",
        ),
        (Some(pass(&label, now_ms() - 1)), 403, "pass_expired"),
        (
            Some(pass("e2e/another-sale", now_ms() + 60_000)),
            403,
            "pass_for_another_sale",
        ),
    ];
    for (p, status, code) in &cases {
        let (got, body) = buy(&client, &orders, p.as_deref()).await?;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{body}"
        );
    }
    assert_eq!(env.snapshot().await?.remaining, 10, "stock unchanged");

    // Challenges: none, unsolved, solved (once), stale.
    let queue = queue_url(&env, &gw);
    let r = client.post(&queue).json(&json!({})).send().await?;
    assert_eq!(r.status().as_u16(), 403);
    let c: Value = client
        .get(format!("{queue}/challenge"))
        .send()
        .await?
        .json()
        .await?;
    let token = c["challenge"].as_str().unwrap_or_default().to_owned();
    assert_eq!(c["bits"], 8);
    let wrong = (0u64..)
        .map(|n| n.to_string())
        .find(|s| !admission::solves(&token, s, 8))
        .unwrap_or_default();
    let r = client
        .post(&queue)
        .json(&json!({"challenge": token, "solution": wrong}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let solution = admission::solve(&token, 8);
    let r = client
        .post(&queue)
        .json(&json!({"challenge": token, "solution": solution}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201, "a solved challenge joins");
    let again: Value = client
        .post(&queue)
        .json(&json!({"challenge": token, "solution": solution}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(again["error"]["code"], "challenge_spent");
    let stale = signer.sign(
        Kind::Challenge,
        &admission::Challenge {
            s: label.clone(),
            n: admission::random_id(),
            b: 8,
            exp: now_ms() - 1,
        },
    );
    let solution = admission::solve(&stale, 8);
    let r: Value = client
        .post(&queue)
        .json(&json!({"challenge": stale, "solution": solution}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["error"]["code"], "challenge_expired");
    gw.shutdown().await?;
    env.cleanup().await
}

/// Stock 100, 10 000 in line: passes never outnumber the units left, exactly
/// 100 sell, and once the last one sold every waiter reads `sold_out`
/// within a second. A pass left unused runs out and its place goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_follows_the_stock_and_sold_out_reaches_every_waiter() -> anyhow::Result<()> {
    let env = Env::new("queue-stock").await?;
    // Paused while the line fills: admission starts once all have joined,
    // however long the joins take on a loaded machine.
    let mut cfg = queued(100, 1_000, 8_000, 0);
    cfg.paused = true;
    env.seed(&cfg).await?;
    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let worker = env.worker(&[]).await?;
    let (client, queue, orders) = (http(), queue_url(&env, &gw), env.orders_url(&gw));
    let joins: Vec<anyhow::Result<(String, Value)>> = futures::stream::iter(0..10_000)
        .map(|_| {
            let (client, queue) = (client.clone(), queue.clone());
            async move { join(&client, &queue).await }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut placed = Vec::new();
    for j in joins {
        let (ticket, body) = j?;
        placed.push((body["place"].as_u64().unwrap_or_default(), ticket));
    }
    placed.sort();
    let tickets: Vec<String> = placed.into_iter().map(|(_, t)| t).collect();
    cfg.paused = false;
    env.seed(&cfg).await?;
    // The first 100 are admitted, no more: the units left cap the passes.
    let mut conn = env.redis.clone();
    eventually("100 admitted", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let sale = env.sale.clone();
        async move {
            let f = flashsale_store::queue::admit(&mut conn, &sale).await?;
            Ok(f.is_some_and(|f| f.frontier == 100))
        }
    })
    .await?;
    let f = flashsale_store::queue::admit(&mut conn, &env.sale)
        .await?
        .unwrap_or_default();
    assert_eq!(f.frontier, 100, "never more passes than units left");
    // 10 of the admitted never buy: their passes run out (8 s) and 10
    // more are let through, who buy.
    let mut sold = 0;
    let mut next = 0;
    let mut idle = Vec::new();
    while sold < 100 {
        let ticket = &tickets[next];
        let s = standing(&client, &queue, ticket).await?;
        match s["state"].as_str() {
            Some("admitted") if next < 10 => {
                idle.push(next);
                next += 1;
            }
            Some("admitted") => {
                let (status, body) = buy(&client, &orders, s["pass"].as_str()).await?;
                assert_eq!(status, 202, "{body}");
                sold += 1;
                next += 1;
            }
            Some("waiting") => tokio::time::sleep(Duration::from_millis(50)).await,
            other => anyhow::bail!("place {}: {other:?}: {s}", next + 1),
        }
    }
    let last_sale = std::time::Instant::now();
    assert_eq!(next, 110, "the 10 unused places went to the next 10");
    // Every other waiter reads sold_out within a second of the last sale.
    eventually("the waiters are told", Duration::from_secs(1), || {
        let (client, queue, t) = (client.clone(), queue.clone(), tickets[9_999].clone());
        async move { Ok(standing(&client, &queue, &t).await?["state"] == "sold_out") }
    })
    .await?;
    assert!(last_sale.elapsed() < Duration::from_secs(2));
    for i in idle {
        assert_eq!(
            standing(&client, &queue, &tickets[i]).await?["state"],
            "sold_out"
        );
    }
    for t in &tickets[110..] {
        assert_eq!(standing(&client, &queue, t).await?["state"], "sold_out");
    }
    let snap = env.snapshot().await?;
    assert_eq!(
        (snap.sold, snap.remaining),
        (100, 0),
        "exactly the stock sold"
    );
    env.wait_persisted(100, Duration::from_secs(30)).await?;
    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// A lottery: who joined before the start is admitted in the drawn order
/// (as the seed and the tickets give it), later arrivals behind them in
/// arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lottery_admits_in_the_drawn_order_then_in_arrival_order() -> anyhow::Result<()> {
    let env = Env::new("queue-lottery").await?;
    let start = now_ms() + 4_000;
    let mut cfg = queued(1_000, 1_000, 600_000, 0);
    cfg.admission.mode = AdmissionMode::Lottery;
    cfg.start_ms = start;
    env.seed(&cfg).await?;
    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let (client, queue) = (http(), queue_url(&env, &gw));
    let mut early = Vec::new();
    for _ in 0..200 {
        let (ticket, body) = join(&client, &queue).await?;
        assert_eq!(body["place"], Value::Null, "no place before the draw");
        early.push(ticket);
    }
    anyhow::ensure!(
        now_ms() < start,
        "the joins took past the start; the test needs a longer lead"
    );
    let seed = b"the seed of this test's lottery";
    let mut conn = env.redis.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match flashsale_store::queue::draw(&mut conn, &env.sale, seed).await? {
            flashsale_store::queue::Draw::Made(n) => {
                assert_eq!(n, 200);
                break;
            }
            flashsale_store::queue::Draw::Early => {
                anyhow::ensure!(std::time::Instant::now() < deadline, "never past the start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => anyhow::bail!("{done:?}"),
        }
    }
    let mut late = Vec::new();
    for _ in 0..20 {
        late.push(join(&client, &queue).await?.0);
    }
    let signer = Signer::new(KEY.as_bytes());
    let ids = flashsale_store::queue::tickets(&mut conn, &env.sale, 200).await?;
    let positions =
        flashsale_store::queue::positions(&flashsale_store::queue::draw_order(seed, &ids));
    let mut order = Vec::new();
    for ticket in early.iter().chain(&late) {
        let t: admission::Ticket = signer
            .verify(Kind::Ticket, ticket)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let body = admitted(&client, &queue, ticket).await?;
        let place = body["place"].as_u64().unwrap_or_default();
        let expected = if t.a <= 200 {
            positions[usize::try_from(t.a)?]
        } else {
            t.a
        };
        assert_eq!(place, expected, "arrival {}", t.a);
        order.push((place, body["passExpiresAtMs"].as_i64().unwrap_or_default()));
    }
    order.sort();
    assert_eq!(
        order.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=220).collect::<Vec<u64>>()
    );
    assert!(
        order.windows(2).all(|w| w[0].1 <= w[1].1),
        "admitted in the order of the places"
    );
    gw.shutdown().await?;
    env.cleanup().await
}

/// A gateway stopped and another started: every ticket keeps its place and
/// its state, joining again with a held ticket gives it back, and nobody is
/// admitted twice (places are Redis's, tickets and passes are signed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_every_place() -> anyhow::Result<()> {
    let env = Env::new("queue-restart").await?;
    env.seed(&queued(5, 1_000, 600_000, 0)).await?;
    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let client = http();
    let mut before = Vec::new();
    for _ in 0..50 {
        let (ticket, _) = join(&client, &queue_url(&env, &gw)).await?;
        before.push(ticket);
    }
    let queue = queue_url(&env, &gw);
    eventually("5 admitted", Duration::from_secs(10), || {
        let (client, queue, t) = (client.clone(), queue.clone(), before[4].clone());
        async move { Ok(standing(&client, &queue, &t).await?["state"] == "admitted") }
    })
    .await?;
    let mut states = Vec::new();
    for t in &before {
        let s = standing(&client, &queue, t).await?;
        states.push((s["place"].clone(), s["state"].clone(), s["pass"].clone()));
    }
    gw.shutdown().await?;

    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let queue = queue_url(&env, &gw);
    eventually(
        "the new gateway learned the line",
        Duration::from_secs(10),
        || {
            let (client, queue, t) = (client.clone(), queue.clone(), before[4].clone());
            async move { Ok(standing(&client, &queue, &t).await?["state"] == "admitted") }
        },
    )
    .await?;
    for (t, was) in before.iter().zip(&states) {
        let s = standing(&client, &queue, t).await?;
        assert_eq!(
            &(s["place"].clone(), s["state"].clone(), s["pass"].clone()),
            was
        );
        let again: Value = client
            .post(&queue)
            .json(&json!({"ticket": t}))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(
            again["ticket"].as_str(),
            Some(t.as_str()),
            "the same ticket back"
        );
    }
    let f = flashsale_store::queue::counts(&mut env.redis.clone(), &env.sale).await?;
    assert_eq!(
        (f.joined, f.admitted),
        (50, 5),
        "no place added, none admitted twice"
    );
    gw.shutdown().await?;
    env.cleanup().await
}

/// Units on hold keep waiters waiting, not sold out; when the holds run
/// out unpaid the units come back and admission resumes: they sell to the
/// next in line. A pause stops admission, a restock lets more through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_units_restocks_and_pauses_move_the_line() -> anyhow::Result<()> {
    let env = Env::new("queue-holds").await?;
    let mut cfg = queued(3, 1_000, 600_000, 0);
    cfg.hold_ms = 1_500;
    env.seed(&cfg).await?;
    let gw = env
        .gateway(&["--pass-key", KEY, "--hold-sweep-ms", "50"])
        .await?;
    let (client, queue, orders) = (http(), queue_url(&env, &gw), env.orders_url(&gw));
    let mut tickets = Vec::new();
    for _ in 0..10 {
        tickets.push(join(&client, &queue).await?.0);
    }
    // The first three hold the three units, unpaid.
    for ticket in &tickets[..3] {
        let s = admitted(&client, &queue, ticket).await?;
        let (status, body) = buy(&client, &orders, s["pass"].as_str()).await?;
        assert_eq!(status, 202, "{body}");
    }
    let s = standing(&client, &queue, &tickets[3]).await?;
    assert_eq!(s["state"], "waiting", "units on hold may come back: {s}");
    // The holds run out: the units come back and the next three buy.
    for ticket in &tickets[3..6] {
        let s = admitted(&client, &queue, ticket).await?;
        let (status, body) = buy(&client, &orders, s["pass"].as_str()).await?;
        assert_eq!(status, 202, "{body}");
    }
    // Paused: no one more is admitted, even with a restock.
    let mut paused = cfg.clone();
    paused.paused = true;
    paused.stock = 6;
    env.seed(&paused).await?;
    let mut conn = env.redis.clone();
    let before = flashsale_store::queue::admit(&mut conn, &env.sale)
        .await?
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = flashsale_store::queue::admit(&mut conn, &env.sale)
        .await?
        .unwrap_or_default();
    assert_eq!(
        after.frontier, before.frontier,
        "a paused sale admits no one"
    );
    // Reopened with the restock: three more are let through.
    paused.paused = false;
    env.seed(&paused).await?;
    eventually(
        "the restock lets three more through",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            let sale = env.sale.clone();
            async move {
                Ok(flashsale_store::queue::admit(&mut conn, &sale)
                    .await?
                    .is_some_and(|f| f.frontier == before.frontier + 3))
            }
        },
    )
    .await?;
    gw.shutdown().await?;
    env.cleanup().await
}

/// Behind a proxy that signs buyers in, a buyer has one place: joining
/// again gives the same ticket back; the pass is theirs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_buyer_has_one_place_and_a_pass_of_their_own() -> anyhow::Result<()> {
    let env = Env::new("queue-user").await?;
    env.seed(&queued(10, 1_000, 600_000, 0)).await?;
    let gw = env
        .gateway(&["--pass-key", KEY, "--user-header", "X-Authenticated-User"])
        .await?;
    let (client, queue, orders) = (http(), queue_url(&env, &gw), env.orders_url(&gw));
    let join_as = |user: &'static str| {
        let (client, queue) = (client.clone(), queue.clone());
        async move {
            let r = client
                .post(&queue)
                .header("X-Authenticated-User", user)
                .json(&json!({}))
                .send()
                .await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?))
        }
    };
    let (first, ann) = join_as("ann").await?;
    let (again, ann2) = join_as("Ann ").await?;
    let (_, bob) = join_as("bob").await?;
    assert_eq!((first, again), (201, 200));
    assert_eq!(ann["ticket"], ann2["ticket"], "the same place back");
    assert_eq!(
        (ann["place"].as_u64(), bob["place"].as_u64()),
        (Some(1), Some(2))
    );
    let ticket = ann["ticket"].as_str().unwrap_or_default().to_owned();
    let s = admitted(&client, &queue, &ticket).await?;
    let pass = s["pass"].as_str().unwrap_or_default();
    let as_bob = client
        .post(&orders)
        .header("X-Authenticated-User", "bob")
        .bearer_auth(pass)
        .json(&json!({"quantity": 1}))
        .send()
        .await?;
    assert_eq!(as_bob.status().as_u16(), 403, "ann's pass is not bob's");
    let as_ann = client
        .post(&orders)
        .header("X-Authenticated-User", "ann")
        .bearer_auth(pass)
        .json(&json!({"quantity": 1}))
        .send()
        .await?;
    assert_eq!(as_ann.status().as_u16(), 202);
    assert_eq!(env.snapshot().await?.remaining, 9);
    gw.shutdown().await?;
    env.cleanup().await
}

/// With a line, an order is read with its buyer's pass or ticket, and by
/// no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_read_with_its_buyers_pass_or_ticket() -> anyhow::Result<()> {
    let env = Env::new("queue-read").await?;
    env.seed(&queued(10, 1_000, 600_000, 0)).await?;
    let gw = env.gateway(&["--pass-key", KEY]).await?;
    let (client, queue, orders) = (http(), queue_url(&env, &gw), env.orders_url(&gw));
    let mut bought = Vec::new();
    for _ in 0..2 {
        let (ticket, _) = join(&client, &queue).await?;
        let s = admitted(&client, &queue, &ticket).await?;
        let pass = s["pass"].as_str().unwrap_or_default().to_owned();
        let (status, body) = buy(&client, &orders, Some(&pass)).await?;
        assert_eq!(status, 202, "{body}");
        bought.push((
            ticket,
            pass,
            body["orderId"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let read = |token: Option<String>, order: String| {
        let (client, orders) = (client.clone(), orders.clone());
        async move {
            let mut req = client.get(format!("{orders}/{order}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            anyhow::Ok(req.send().await?.status().as_u16())
        }
    };
    let (ticket, pass, order) = bought[0].clone();
    assert_eq!(read(None, order.clone()).await?, 404, "no token, no order");
    assert_eq!(read(Some(pass), order.clone()).await?, 200, "its pass");
    assert_eq!(read(Some(ticket), order.clone()).await?, 200, "its ticket");
    assert_eq!(
        read(Some(bought[1].1.clone()), order.clone()).await?,
        404,
        "another buyer's pass"
    );
    assert_eq!(
        read(Some(bought[1].0.clone()), order).await?,
        404,
        "another buyer's ticket"
    );
    gw.shutdown().await?;
    env.cleanup().await
}
