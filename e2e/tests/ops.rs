//! The gateway's operational endpoints on a port of their own
//! (`--ops-listen`), as the operator runs it: buyers' port serves the API
//! only, the other /healthz, /readyz and /metrics only.

use flashsale_e2e::{Env, buy, http, open_sale};

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
