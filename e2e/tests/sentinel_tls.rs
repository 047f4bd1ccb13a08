//! Redis behind Sentinel over TLS (`rediss+sentinel://`): the sentinel and
//! both servers listen in TLS only, so every command the gateway sends,
//! to the sentinel or to a server, goes encrypted and checked against the
//! CA of `--tls-ca-file`. A sale whose primary crashes goes on selling on
//! the promoted replica, reached over TLS as well; a CA that did not sign
//! the servers' certificate stops the gateway's start with an error that
//! says so.
//!
//! One test function: the CA certificates are a setting of the process.

use flashsale_common::redisconn::RedisConn;
use flashsale_common::tls::Tls;
use flashsale_e2e::sentinel::{SentinelGroup, crash_mid_sale};
use flashsale_e2e::tlsproxy::TestPki;
use flashsale_e2e::{Env, http, open_sale, restock_reaches};
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
    let tls = Tls::from_pem(Some(&pki.ca_pem), None, None, "the test's")?;
    let env = Env::on_redis_with_tls("sentinel-tls", &sentinel_url, &tls).await?;
    assert!(
        matches!(env.redis, RedisConn::Sentinel(_)),
        "{sentinel_url} was not taken for Sentinel"
    );
    env.seed(&open_sale(100, 1, 1)).await?;

    // A CA that did not sign the servers' certificate: no start.
    let stranger = TestPki::new()?.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(stranger.path().to_owned());
    match flashsale_gateway::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway started with a CA that signed none of the servers")
        }
        Err(e) => {
            // Said once: redis-rs repeats its source's text in its own.
            let text = flashsale_common::ops::describe(&e).to_lowercase();
            assert!(
                text.contains("cannot connect to redis")
                    && text.matches("certificate").count() == 1,
                "{text}"
            );
        }
    }
    assert_eq!(env.snapshot().await?.remaining, 100, "nothing was sold");

    let ca = pki.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
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
