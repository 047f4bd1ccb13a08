//! What the Lua scripts write, read back by the Rust types that define it:
//! order records by `OrderRecord`, outbox members by `outbox_member`, stock
//! events by `StockEvent`. The formats live once, in `lua/formats.lua`; this
//! runs each script that writes one against the real Redis and parses what
//! it wrote.

use flashsale_common::order::{OrderRecord, OrderStatus, outbox_member};
use flashsale_gateway::reserve::{Attempt, Reservation, reserve_batch};
use flashsale_harness::{Env, now_ms, open_sale};
use flashsale_store::keys::SaleKeys;
use flashsale_store::scripts;
use flashsale_store::stock::{self, StockEvent};
use futures::StreamExt;
use redis::AsyncCommands;
use std::time::Duration;

fn record(r: &Reservation) -> anyhow::Result<OrderRecord> {
    match r {
        Reservation::Accepted { record } | Reservation::Replay { record, .. } => {
            Ok(OrderRecord::from_message(record.as_bytes())?)
        }
        other => anyhow::bail!("expected an order, got {other:?}"),
    }
}

#[tokio::test]
async fn every_script_writes_what_the_rust_types_read() -> anyhow::Result<()> {
    let env = Env::new("formats").await?;
    let keys = SaleKeys::new(&env.sale);
    let mut pubsub = env.redis.pubsub().await?;
    pubsub.subscribe(keys.events()).await?;
    let mut events = pubsub.into_on_message();

    let mut cfg = open_sale(10, 5, 5);
    cfg.hold_ms = 60_000;
    env.seed(&cfg).await?;
    let mut conn = env.redis.clone();

    // A name JSON must escape, and one far from ASCII.
    let users = ["ann \"the\" \\ buyer\n", "ünïcødé 买家"];
    let attempts: Vec<Attempt> = [("a", users[0], 2), ("b", users[1], 1)]
        .iter()
        .map(|&(key, user, quantity)| Attempt {
            order_id: if key == "a" {
                "0193a1b2-c3d4-7e5f-8a9b-000000000001"
            } else {
                "0193a1b2-c3d4-7e5f-8a9b-000000000002"
            },
            user,
            quantity,
            idempotency_key: Some(key),
            client: user,
            place: None,
        })
        .collect();
    let before = now_ms();
    let replies = reserve_batch(&mut conn, &keys, &env.sale, &attempts).await?;
    let after = now_ms();
    for (reply, a) in replies.iter().zip(&attempts) {
        let rec = record(reply)?;
        assert_eq!(rec.order_id.to_string(), a.order_id);
        assert_eq!(rec.user, a.user);
        assert_eq!(rec.quantity, a.quantity);
        assert_eq!((rec.v, rec.rev), (1, 1));
        assert_eq!(
            (rec.namespace.as_str(), rec.name.as_str()),
            (env.sale.namespace.as_str(), env.sale.name.as_str())
        );
        assert_eq!(rec.status, OrderStatus::Reserved);
        assert!((before - 1_000..=after + 1_000).contains(&rec.reserved_at_ms));
        assert_eq!(rec.hold_expires_at_ms, Some(rec.reserved_at_ms + 60_000));
        let stored: String = conn.hget(keys.orders(), a.order_id).await?;
        assert_eq!(OrderRecord::from_message(stored.as_bytes())?, rec);
    }
    let members: Vec<String> = conn.zrange(keys.outbox(), 0, -1).await?;
    let mut expected: Vec<String> = attempts
        .iter()
        .map(|a| outbox_member(a.order_id, 1))
        .collect();
    expected.sort();
    let mut got = members.clone();
    got.sort();
    assert_eq!(got, expected, "outbox members");

    // A replay reads the revision back from the record and finds its member.
    let replay = reserve_batch(&mut conn, &keys, &env.sale, &attempts[..1]).await?;
    assert!(
        matches!(&replay[0], Reservation::Replay { pending: true, .. }),
        "{replay:?}"
    );

    // Settling writes revision 2 under its own member.
    let settled: Vec<String> = scripts::SETTLE
        .key(keys.sale())
        .key(keys.users())
        .key(keys.orders())
        .key(keys.outbox())
        .key(keys.holds())
        .arg(attempts[0].order_id)
        .arg("confirm")
        .arg(keys.events())
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(settled.first().map(String::as_str), Some("confirmed"));
    let confirmed = OrderRecord::from_message(settled.get(1).map_or(&b""[..], |s| s.as_bytes()))?;
    assert_eq!(
        (confirmed.rev, confirmed.status),
        (2, OrderStatus::Confirmed)
    );
    assert_eq!(confirmed.user, users[0]);
    let score: Option<f64> = conn
        .zscore(keys.outbox(), outbox_member(attempts[0].order_id, 2))
        .await?;
    assert!(score.is_some(), "revision 2 is in the outbox");
    let replay = reserve_batch(&mut conn, &keys, &env.sale, &attempts[..1]).await?;
    assert!(
        matches!(&replay[0], Reservation::Replay { pending: true, .. }),
        "the replay finds revision 2: {replay:?}"
    );

    // The sweeper hands back records it leased from outbox members.
    let swept: Vec<String> = scripts::SWEEP
        .key(keys.outbox())
        .key(keys.orders())
        .arg(0)
        .arg(10)
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(swept.len(), 2);
    for r in &swept {
        OrderRecord::from_message(r.as_bytes())?;
    }

    // Without a hold the record carries no deadline.
    cfg.hold_ms = 0;
    env.seed(&cfg).await?;
    let plain = Attempt {
        order_id: "0193a1b2-c3d4-7e5f-8a9b-000000000003",
        user: "carl",
        quantity: 1,
        idempotency_key: None,
        client: "carl",
        place: None,
    };
    let reply = reserve_batch(&mut conn, &keys, &env.sale, std::slice::from_ref(&plain)).await?;
    let rec = record(&reply[0])?;
    assert_eq!(
        (rec.status, rec.hold_expires_at_ms),
        (OrderStatus::Confirmed, None)
    );

    assert!(stock::set_closed(&mut conn, &env.sale, true).await?);

    // Seed (created, then updated), settle and close each published an
    // event; every one parses, in order, and the last one is the stock now.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .map_err(|_| anyhow::anyhow!("only {} stock events after 5 s: {seen:?}", seen.len()))?
            .ok_or_else(|| anyhow::anyhow!("the subscription ended"))?;
        let payload: String = msg.get_payload()?;
        seen.push(
            StockEvent::parse(&payload)
                .ok_or_else(|| anyhow::anyhow!("not a stock event: {payload:?}"))?,
        );
    }
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "{seen:?}");
    assert_eq!(
        seen[0],
        StockEvent {
            seq: 1,
            remaining: 10
        }
    );
    assert_eq!(
        seen.last().map(|e| e.remaining),
        Some(env.snapshot().await?.remaining)
    );
    env.cleanup().await
}

#[test]
fn a_stock_event_is_two_integers() {
    assert_eq!(
        StockEvent::parse("7 3"),
        Some(StockEvent {
            seq: 7,
            remaining: 3
        })
    );
    for bad in ["", "7", "7 x", "x 3", "7 3 1", "7  3"] {
        assert_eq!(StockEvent::parse(bad), None, "{bad:?}");
    }
}
