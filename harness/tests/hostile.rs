//! Hostile clients against a real gateway: connections that never send a
//! request, send their headers a byte at a time or never finish their
//! body, more connections than the gateway may hold, and a flood of
//! live-stock streams. A normal buyer always gets an answer, and each
//! hostile connection is answered or closed within the gateway's deadlines.

use flashsale_harness::{Env, buy, http, open_sale};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the gateway sends until it closes the connection, within
/// `limit`; None when it is still open then.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off_and_buyers_still_served() -> anyhow::Result<()> {
    let env = Env::new("slowloris").await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let addr = gw.addr();
    let path = format!("/api/v1/sales/{}/orders", env.sale);

    let started = Instant::now();
    let mut silent = Vec::new();
    let mut slow_headers = Vec::new();
    let mut slow_bodies = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await?);
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("POST {path} HTTP/1.1\r\nhost: gw\r\nx-slow: ").as_bytes())
            .await?;
        slow_headers.push(s);
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{{\"user\":"
            )
            .as_bytes(),
        )
        .await?;
        slow_bodies.push(s);
    }

    // A kept-alive connection that made one request and then went quiet.
    let mut idle = TcpStream::connect(addr).await?;
    idle.write_all(
        format!(
            "GET /api/v1/sales/{} HTTP/1.1\r\nhost: gw\r\n\r\n",
            env.sale
        )
        .as_bytes(),
    )
    .await?;
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await?;
    anyhow::ensure!(
        &first == b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&first)
    );

    // Meanwhile a buyer is served at once.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        buy(&http(), &env.orders_url(&gw), "patient", 1, None),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a buyer got no answer within 5 s"))??;
    anyhow::ensure!(answer.status == 202, "{} {}", answer.status, answer.body);

    // Headers that never end and silence are cut off after the header
    // deadline; a body that never ends gets 408 after the body deadline.
    let deadline = Duration::from_secs(20);
    for mut s in silent.into_iter().chain(slow_headers).chain([idle]) {
        until_closed(&mut s, deadline).await.ok_or_else(|| {
            anyhow::anyhow!("a stalled connection is still open after {deadline:?}")
        })?;
    }
    for mut s in slow_bodies {
        let reply = until_closed(&mut s, deadline)
            .await
            .ok_or_else(|| anyhow::anyhow!("a stalled body is still open after {deadline:?}"))?;
        anyhow::ensure!(
            reply.starts_with("HTTP/1.1 408") && reply.contains("\"request_timeout\""),
            "{reply}"
        );
    }
    let took = started.elapsed();
    anyhow::ensure!(
        took >= Duration::from_secs(9),
        "cut off after {took:?}, before the 10 s deadlines"
    );
    assert_eq!(
        env.snapshot().await?.sold,
        1,
        "the stalled requests took nothing"
    );
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_caps_a_gateway_answers_503_with_retry_after() -> anyhow::Result<()> {
    let env = Env::new("caps").await?;
    env.seed(&open_sale(100, 1, 1)).await?;
    let gw = env
        .gateway(&["--max-connections", "8", "--max-streams", "3"])
        .await?;
    let client = http();

    // Live-stock streams: three served, the fourth refused with JSON.
    let events = format!("{}/events", env.sale_url(&gw));
    let mut streams = Vec::new();
    for _ in 0..3 {
        let resp = client.get(&events).send().await?;
        anyhow::ensure!(resp.status() == 200, "stream: {}", resp.status());
        streams.push(resp);
    }
    let refused = client.get(&events).send().await?;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "over_capacity", "{body}");
    drop(streams);

    // Connections: the gateway holds 8; a ninth is answered 503 at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(gw.addr()).await?);
    }
    let mut ninth = TcpStream::connect(gw.addr()).await?;
    let reply = until_closed(&mut ninth, Duration::from_secs(5))
        .await
        .ok_or_else(|| anyhow::anyhow!("the ninth connection got no answer"))?;
    anyhow::ensure!(
        reply.starts_with("HTTP/1.1 503") && reply.contains("retry-after: 1"),
        "{reply}"
    );
    drop(held);
    // Once they are gone, buyers get in again.
    flashsale_harness::eventually("a buyer gets in again", Duration::from_secs(10), || async {
        Ok(buy(&client, &env.orders_url(&gw), "later", 1, None)
            .await
            .is_ok_and(|a| a.status == 202))
    })
    .await?;
    gw.shutdown().await?;
    env.cleanup().await
}
