//! The gateway's operational endpoints on a port of their own
//! (`--ops-listen`), as the operator runs it: buyers' port serves the API
//! only, the other /healthz, /readyz and /metrics only.

use flashsale_harness::{Env, buy, eventually, http, open_sale};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = http().get(url).send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_can_live_apart_from_the_buyers_port() -> anyhow::Result<()> {
    let env = Env::new("ops").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&["--ops-listen", "127.0.0.1:0"]).await?;
    assert_ne!(gw.url(), gw.ops_url());
    let client = http();
    let bought = buy(&client, &env.orders_url(&gw), "ann", 1, None).await?;
    assert_eq!(bought.status, 202, "{}", bought.body);

    // Buyers' port: the API, and a JSON 404 for the operational paths.
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (status, body) = get(&format!("{}{path}", gw.url())).await?;
        assert_eq!(status, 404, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(json["error"]["code"], "not_found", "{path}: {body}");
    }
    // The operational port: the endpoints, counting what the API did.
    let (status, metrics) = get(&format!("{}/metrics", gw.ops_url())).await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("flashsale_gateway_orders_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        get(&format!("{}/readyz", gw.ops_url())).await?,
        (200, "ready\n".to_owned())
    );
    assert_eq!(get(&format!("{}/healthz", gw.ops_url())).await?.0, 200);
    // ... and nothing of the API.
    let (status, _) = get(&format!("{}/api/v1/sales/e2e/x", gw.ops_url())).await?;
    assert_eq!(status, 404);

    let ops = gw.ops_url();
    gw.shutdown().await?;
    assert!(
        http().get(format!("{ops}/healthz")).send().await.is_err(),
        "the operational port closes with the gateway"
    );
    env.cleanup().await
}

/// A stopping gateway says so on its operational port while it finishes
/// the requests it took, and those still get their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_is_unready_while_it_finishes_what_it_took() -> anyhow::Result<()> {
    let env = Env::new("ops-stop").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&["--ops-listen", "127.0.0.1:0"]).await?;
    let ops = gw.ops_url();
    assert_eq!(get(&format!("{ops}/readyz")).await?.0, 200);

    // A purchase whose body is still on its way. The `100 Continue` the
    // gateway sends when it starts reading the body proves the request is
    // in its hands.
    let body = br#"{"user":"slow","quantity":1}"#;
    let path = format!(
        "/api/v1/sales/{}/{}/orders",
        env.sale.namespace, env.sale.name
    );
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut interim))
        .await
        .map_err(|_| anyhow::anyhow!("no 100 Continue within 10 s"))??;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );

    let stopping = tokio::spawn(gw.shutdown());
    eventually(
        "unready while stopping",
        Duration::from_secs(10),
        || async {
            let (status, text) = get(&format!("{ops}/readyz")).await?;
            Ok(status == 503 && text.contains("shutting down"))
        },
    )
    .await?;

    // The request in flight is still answered.
    conn.write_all(body).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    stopping.await??;
    assert_eq!(env.snapshot().await?.sold, 1);
    env.cleanup().await
}
