//! Bad input gets a 4xx JSON error naming the field and changes nothing.

use flashsale_e2e::{Env, http, open_sale, redis_orders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named() -> anyhow::Result<()> {
    let env = Env::new("input").await?;
    env.seed(&open_sale(100, 2, 2)).await?;
    let gw = env.gateway(&[]).await?;
    let url = env.orders_url(&gw);
    let client = http();
    let before = env.snapshot().await?;

    let huge = format!(r#"{{"user":"{}","quantity":1}}"#, "x".repeat(1 << 20));
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
        ("1 MiB body", huge.into_bytes(), 413, "body"),
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
