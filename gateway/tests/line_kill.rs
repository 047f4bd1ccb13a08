//! The waiting room across a gateway killed with SIGKILL: nothing of the
//! line lives in the process (places and admission steps are in Redis,
//! tickets and passes are signed), so a gateway started after it answers
//! every ticket the same, and nobody gains a place or a second admission.

use flashsale_api::sale::AdmissionMode;
use flashsale_harness::{Env, eventually, http, now_ms, open_sale, spawn_binary};
use flashsale_store::stock::AdmissionConfig;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "a pass key of at least thirty-two bytes, for tests";

async fn start(env: &Env) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut args = env.gateway_args();
    args.extend(["--pass-key".to_owned(), KEY.to_owned()]);
    let (child, base) = spawn_binary(env!("CARGO_BIN_EXE_flashsale-gateway"), &args).await?;
    let queue = format!(
        "{base}/api/v1/sales/{}/{}/queue",
        env.sale.namespace, env.sale.name
    );
    Ok((child, queue))
}

async fn standing(client: &reqwest::Client, queue: &str, ticket: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(format!("{queue}/{ticket}"))
        .send()
        .await?
        .json()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_line_loses_no_place_and_admits_no_one_twice() -> anyhow::Result<()> {
    let env = Env::new("line-kill").await?;
    let mut cfg = open_sale(5, 1, 1);
    cfg.admission = AdmissionConfig {
        mode: AdmissionMode::Fifo,
        open_ms: now_ms() - 60_000,
        per_second: 1_000,
        pass_ms: 600_000,
        challenge_bits: 0,
    };
    env.seed(&cfg).await?;
    let (mut gateway, queue) = start(&env).await?;
    let client = http();
    let mut tickets = Vec::new();
    for _ in 0..30 {
        let r: Value = client
            .post(&queue)
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?;
        tickets.push(r["ticket"].as_str().unwrap_or_default().to_owned());
    }
    eventually("5 admitted", Duration::from_secs(10), || {
        let (client, queue, t) = (client.clone(), queue.clone(), tickets[4].clone());
        async move { Ok(standing(&client, &queue, &t).await?["state"] == "admitted") }
    })
    .await?;
    let mut before = Vec::new();
    for t in &tickets {
        before.push(standing(&client, &queue, t).await?);
    }
    gateway.start_kill()?;
    tokio::time::timeout(Duration::from_secs(30), gateway.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the gateway survived SIGKILL for 30 s"))??;

    let (_gateway, queue) = start(&env).await?;
    eventually(
        "the new gateway learned the line",
        Duration::from_secs(10),
        || {
            let (client, queue, t) = (client.clone(), queue.clone(), tickets[4].clone());
            async move { Ok(standing(&client, &queue, &t).await?["state"] == "admitted") }
        },
    )
    .await?;
    for (t, was) in tickets.iter().zip(&before) {
        let now = standing(&client, &queue, t).await?;
        for field in ["state", "place", "pass"] {
            assert_eq!(now[field], was[field], "{field} of {t}");
        }
    }
    let counts = flashsale_store::queue::counts(&mut env.redis.clone(), &env.sale).await?;
    assert_eq!(
        (counts.joined, counts.admitted),
        (30, 5),
        "no place added, none admitted twice"
    );
    env.cleanup().await
}
