//! Redis behind Sentinel over mutual TLS (`rediss+sentinel://`): the
//! sentinel and both servers listen in TLS only and take only clients
//! with a certificate of the test's CA, so every command the gateway
//! sends, to the sentinel or to a server, goes encrypted, checked against
//! the CA of `--tls-ca-file`, and with the client certificate. A sale whose
//! primary crashes goes on selling on the promoted replica, reached the
//! same way. A CA that did not sign the servers' certificate, or no client
//! certificate, stops the gateway's start with an error that says so.
//!
//! One test function: the TLS settings are a setting of the process.

use flashsale_common::tls::Tls;
use flashsale_harness::sentinel::{SentinelGroup, crash_mid_sale};
use flashsale_harness::tlsproxy::TestPki;
use flashsale_harness::{Env, http, open_sale, restock_reaches};
use flashsale_store::redisconn::RedisConn;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_behind_sentinel_over_tls_survives_a_failover() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let mut group = SentinelGroup::start_tls(&pki).await?;
    let sentinel_url = group.url();
    assert!(
        sentinel_url.starts_with("rediss+sentinel://"),
        "{sentinel_url}"
    );
    let tls = Tls::from_pem(
        Some(&pki.ca_pem),
        Some(&pki.client_cert_pem),
        Some(&pki.client_key_pem),
        "the test's",
    )?;
    let env =
        Env::on_redis_with_tls("sentinel-tls", &sentinel_url, std::sync::Arc::new(tls)).await?;
    assert!(
        matches!(env.redis, RedisConn::Sentinel(_)),
        "{sentinel_url} was not taken for Sentinel"
    );
    env.seed(&open_sale(100, 1, 1)).await?;

    // A CA that did not sign the servers' certificate: no start.
    let stranger = TestPki::new()?.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(stranger.path().to_owned());
    cfg.tls.tls_client_cert_pem = Some(pki.client_cert_pem.clone());
    cfg.tls.tls_client_key_pem = Some(pki.client_key_pem.clone());
    let text = refused(cfg, "with a CA that signed none of the servers").await?;
    // Said once: redis-rs repeats its source's text in its own.
    assert_eq!(text.matches("certificate").count(), 1, "{text}");

    // The right CA, but no client certificate: no start either.
    let ca = pki.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    let text = refused(cfg, "without a client certificate").await?;
    assert!(text.contains("certificaterequired"), "{text}");
    assert_eq!(env.snapshot().await?.remaining, 100, "nothing was sold");

    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    cfg.tls.tls_client_cert_pem = Some(pki.client_cert_pem.clone());
    cfg.tls.tls_client_key_pem = Some(pki.client_key_pem.clone());
    let gw = flashsale_gateway::Gateway::start(cfg).await?;
    let worker = env.worker(&[]).await?;
    let url = env.orders_url(&gw);
    let ready = http().get(format!("{}/readyz", gw.url())).send().await?;
    assert_eq!(ready.status(), 200, "{}", ready.text().await?);

    // Half the stock sells, the primary crashes, and once the sentinel has
    // promoted the replica the same gateway sells the rest there, over TLS.
    crash_mid_sale(&mut group, &env, &url, 100).await?;

    // A restock on the new primary reaches the gateway through its
    // subscription, over TLS as well.
    env.seed(&open_sale(105, 1, 1)).await?;
    restock_reaches(&url, Duration::from_secs(15)).await?;

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}

/// Starts a gateway with `cfg`, which must fail to reach Redis; returns
/// the error as the gateway logs it, in lower case.
async fn refused(cfg: flashsale_gateway::Config, what: &str) -> anyhow::Result<String> {
    match flashsale_gateway::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway started {what}")
        }
        Err(e) => {
            let text = flashsale_common::ops::describe(&e).to_lowercase();
            assert!(text.contains("cannot connect to redis"), "{what}: {text}");
            Ok(text)
        }
    }
}
