//! Who a buyer is, and what one buyer may learn of another: idempotency
//! keys are each buyer's own, a buyer's name means the same buyer however
//! it is written, a request naming two signed-in buyers is refused, an
//! order is read only by its buyer, and only JSON bodies are taken.

use flashsale_harness::{Env, buy, http, open_sale};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_buyer_reusing_a_key_gets_an_order_of_their_own() -> anyhow::Result<()> {
    let env = Env::new("idem-scope").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let (client, url) = (http(), env.orders_url(&gw));
    let ann = buy(&client, &url, "ann", 1, Some("shared-key"))
        .await?
        .accepted_id()?;
    let bob = buy(&client, &url, "bob", 1, Some("shared-key")).await?;
    let bob_id = bob.accepted_id()?;
    assert_ne!(ann, bob_id, "bob must not be handed ann's order");
    assert!(!bob.body.to_string().contains(&ann), "{}", bob.body);
    // The same key from the same buyer is still a replay.
    assert_eq!(
        buy(&client, &url, "ann", 1, Some("shared-key"))
            .await?
            .accepted_id()?,
        ann
    );
    assert_eq!(env.snapshot().await?.sold, 2);
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_is_one_buyer_however_the_name_is_written() -> anyhow::Result<()> {
    let env = Env::new("names").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let (client, url) = (http(), env.orders_url(&gw));
    let first = buy(&client, &url, "eve", 1, None).await?;
    assert_eq!(first.body["user"], "eve", "{}", first.body);
    for again in ["Eve", " eve", "EVE", "ｅｖｅ"] {
        let a = buy(&client, &url, again, 1, None).await?;
        assert_eq!(
            (a.status, a.body["error"]["code"].as_str()),
            (409, Some("user_limit_reached")),
            "{again:?}: {}",
            a.body
        );
    }
    for refused in ["e\u{200B}ve", "\u{0435}ve"] {
        let a = buy(&client, &url, refused, 1, None).await?;
        assert_eq!(
            (a.status, a.body["error"]["field"].as_str()),
            (422, Some("user")),
            "{refused:?}"
        );
    }
    assert_eq!(env.snapshot().await?.sold, 1, "one buyer, one unit");
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_read_only_by_its_buyer_and_two_buyers_in_one_request_are_refused()
-> anyhow::Result<()> {
    let env = Env::new("signed-in").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env
        .gateway(&["--user-header", "x-authenticated-user"])
        .await?;
    let (client, url) = (http(), env.orders_url(&gw));
    let post = |who: Vec<&'static str>| {
        let mut req = client.post(&url).json(&json!({"quantity": 1}));
        for w in who {
            req = req.header("x-authenticated-user", w);
        }
        req.send()
    };
    let resp = post(vec!["ann"]).await?;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await?;
    let id = body["orderId"].as_str().unwrap_or_default().to_owned();

    let two = post(vec!["mallory", "ann"]).await?;
    assert_eq!(two.status().as_u16(), 400, "two buyers in one request");
    let err: Value = two.json().await?;
    assert_eq!(err["error"]["field"], "x-authenticated-user", "{err}");
    assert_eq!(
        env.snapshot().await?.sold,
        1,
        "the refused request took nothing"
    );

    let read = |who: &'static str| {
        client
            .get(format!("{url}/{id}"))
            .header("x-authenticated-user", who)
            .send()
    };
    let mine = read("ann").await?;
    assert_eq!(mine.status().as_u16(), 200);
    let theirs = read("mallory").await?;
    assert_eq!(
        theirs.status().as_u16(),
        404,
        "another buyer learns nothing"
    );
    let body: Value = theirs.json().await?;
    assert_eq!(body["error"]["code"], "unknown_order", "{body}");
    gw.shutdown().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_is_taken_and_every_refusal_is_json() -> anyhow::Result<()> {
    let env = Env::new("media").await?;
    env.seed(&open_sale(10, 1, 1)).await?;
    let gw = env.gateway(&[]).await?;
    let (client, url) = (http(), env.orders_url(&gw));
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let resp = client
            .post(&url)
            .header("content-type", content_type)
            .body(r#"{"user":"ann","quantity":1}"#)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 415, "{content_type}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
    }
    let resp = client.delete(&url).send().await?;
    assert_eq!(resp.status().as_u16(), 405);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let resp = client
        .post(&url)
        .json(&json!({"user": "ann", "quantity": 1}))
        .header("x-padding", "p".repeat(20 * 1024))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 431);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    assert_eq!(env.snapshot().await?.sold, 0);
    gw.shutdown().await?;
    env.cleanup().await
}
