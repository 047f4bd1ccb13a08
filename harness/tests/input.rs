//! Bad input gets a 4xx JSON error naming the field and changes nothing.

use flashsale_harness::{Env, http, open_sale, redis_orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named() -> anyhow::Result<()> {
    let env = Env::new("input").await?;
    env.seed(&open_sale(100, 2, 2)).await?;
    let gw = env.gateway(&[]).await?;
    let url = env.orders_url(&gw);
    let client = http();
    let before = env.snapshot().await?;

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("missing user", br#"{"quantity":1}"#.to_vec(), 422, "user"),
        (
            "missing quantity",
            br#"{"user":"a"}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "extra field",
            br#"{"user":"a","quantity":1,"coupon":"x"}"#.to_vec(),
            422,
            "coupon",
        ),
        (
            "user not a string",
            br#"{"user":7,"quantity":1}"#.to_vec(),
            422,
            "user",
        ),
        (
            "quantity a string",
            br#"{"user":"a","quantity":"1"}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "quantity 0",
            br#"{"user":"a","quantity":0}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "quantity negative",
            br#"{"user":"a","quantity":-1}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "quantity above per-order limit",
            br#"{"user":"a","quantity":3}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "quantity above u32",
            br#"{"user":"a","quantity":4294967296}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "quantity fractional",
            br#"{"user":"a","quantity":1.5}"#.to_vec(),
            422,
            "quantity",
        ),
        (
            "invalid JSON",
            br#"{"user":"a","quantity":"#.to_vec(),
            400,
            "quantity",
        ),
        ("broken JSON", br#"{"user" "a"}"#.to_vec(), 400, "body"),
        ("not an object", br#"["a",1]"#.to_vec(), 422, "body"),
        ("empty body", Vec::new(), 400, "body"),
        (
            "non-UTF-8",
            b"{\"user\":\"\xc3\x28\",\"quantity\":1}".to_vec(),
            400,
            "user",
        ),
        (
            "empty user",
            br#"{"user":"","quantity":1}"#.to_vec(),
            422,
            "user",
        ),
        (
            "blank user",
            br#"{"user":"   ","quantity":1}"#.to_vec(),
            422,
            "user",
        ),
        (
            "control chars in user",
            br#"{"user":"a\u0000b","quantity":1}"#.to_vec(),
            422,
            "user",
        ),
    ];
    for (what, body, status, field) in cases {
        let resp = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let got = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        assert_eq!(got, status, "{what}: {json}");
        assert_eq!(json["error"]["field"], field, "{what}: {json}");
        assert!(
            json["error"]["code"].is_string() && json["error"]["message"].is_string(),
            "{what}: {json}"
        );
    }

    // Bodies over the limit (16 KiB by default), spoken over a raw socket so
    // that the client finishes its part before it reads the answer.
    let path = url.trim_start_matches(&gw.url()).to_owned();
    let declared = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        1 << 20
    );
    let answer = raw_exchange(gw.addr(), declared.as_bytes()).await?;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a declared 1 MiB body is refused before it is sent, without 100 Continue: {answer}"
    );
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    let big = format!(r#"{{"user":"{}","quantity":1}}"#, "x".repeat(20_000));
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let answer = raw_exchange(gw.addr(), chunked.as_bytes()).await?;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit is refused: {answer}"
    );
    assert!(answer.contains(r#""field":"body""#), "{answer}");

    let bad_key = client
        .post(&url)
        .header("Idempotency-Key", "has space")
        .json(&serde_json::json!({"user": "a", "quantity": 1}))
        .send()
        .await?;
    assert_eq!(bad_key.status(), 400);
    let json: serde_json::Value = bad_key.json().await?;
    assert_eq!(json["error"]["field"], "Idempotency-Key");

    let after = env.snapshot().await?;
    assert_eq!(
        (after.remaining, after.sold, after.seq),
        (before.remaining, before.sold, before.seq)
    );
    assert_eq!(redis_orders(&env).await?, 0);

    // Unknown routes and order ids are JSON too, and the process is alive.
    let r = client.get(format!("{}/nope", gw.url())).send().await?;
    assert_eq!(r.status(), 404);
    let r = client.get(format!("{url}/not-a-uuid")).send().await?;
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = r.json().await?;
    assert_eq!(j["error"]["field"], "orderId");
    let ok = client
        .post(&url)
        .json(&serde_json::json!({"user": "a", "quantity": 2}))
        .send()
        .await?;
    assert_eq!(ok.status(), 202);
    gw.shutdown().await?;
    env.cleanup().await
}

/// Writes `request` on a fresh connection, then reads one whole response
/// (head and `content-length` body), within five seconds.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await?;
        sock.write_all(request).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return anyhow::Ok(String::from_utf8_lossy(&got).into_owned());
                }
            }
            let n = sock.read(&mut buf).await?;
            anyhow::ensure!(
                n > 0,
                "connection closed after {} bytes: {}",
                got.len(),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no whole response within 5 s"))?
}
