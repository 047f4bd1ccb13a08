//! TLS to all three data stores: the gateway speaks `rediss://` and
//! `amqps://`, the worker `amqps://` and PostgreSQL with
//! `sslmode=verify-full`, each through a TLS-terminating proxy in front of
//! the real server, with a private CA given by `--tls-ca-file`. A server
//! certificate from another CA is refused with an error that says so, and a
//! CA file without a certificate stops the start.
//!
//! One test function: the CA certificates are a setting of the process.

use flashsale_harness::tlsproxy::{TempFile, TestPki, TlsStores};
use flashsale_harness::{Env, by_status, herd, http, open_sale};
use std::time::Duration;

fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}").to_lowercase()
}

/// Starts a gateway on `redis_url` trusting `ca`, which must fail; returns
/// why.
async fn gateway_refused(
    env: &Env,
    redis_url: &str,
    ca: &TempFile,
    what: &str,
) -> anyhow::Result<anyhow::Error> {
    let mut cfg = env.gateway_config(&[]);
    cfg.redis.redis_url = redis_url.to_owned();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    match flashsale_gateway::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway started with {what}")
        }
        Err(e) => Ok(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_travel_over_tls_to_redis_rabbitmq_and_postgresql() -> anyhow::Result<()> {
    let env = Env::new("tls").await?;
    let stock = 20;
    env.seed(&open_sale(stock, 1, 1)).await?;
    let pki = TestPki::new()?;
    let stores = TlsStores::start(&pki, &env.db_url, false).await?;

    // A CA file without a certificate: a clear error, not the system's roots.
    let empty = TempFile::with_contents(b"not a certificate\n")?;
    let e = gateway_refused(
        &env,
        &stores.redis_url,
        &empty,
        "a CA file without a certificate",
    )
    .await?;
    assert!(chain(&e).contains("holds no certificate"), "{e:#}");

    // Servers whose certificates another CA signed are refused.
    let stranger = TestPki::new()?.write_ca()?;
    let e = gateway_refused(&env, &stores.redis_url, &stranger, "Redis's unknown CA").await?;
    assert!(chain(&e).contains("cannot connect to redis"), "{e:#}");
    assert!(chain(&e).contains("certificate"), "{e:#}");
    let mut cfg = env.worker_config(&[]);
    cfg.database.database_url = stores.database_url.clone();
    let e = flashsale_worker::Worker::start(cfg)
        .await
        .err()
        .ok_or_else(|| {
            anyhow::anyhow!("PostgreSQL's certificate from an unknown CA was accepted")
        })?;
    assert!(chain(&e).contains("certificate"), "{e:#}");
    let e = flashsale_common::amqp::connect(
        &stores.amqp_url,
        "flashsale-harness-tls",
        &Default::default(),
    )
    .await
    .err()
    .ok_or_else(|| anyhow::anyhow!("RabbitMQ's certificate from an unknown CA was accepted"))?;
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(env.snapshot().await?.remaining, stock, "nothing was sold");

    // With the right CA, every order goes the whole way over TLS.
    let ca = pki.write_ca()?;
    let mut cfg = env.gateway_config(&[]);
    cfg.redis.redis_url = stores.redis_url.clone();
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    let gw = flashsale_gateway::Gateway::start(cfg).await?;
    let mut cfg = env.worker_config(&[]);
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.database.database_url = stores.database_url.clone();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    let worker = flashsale_worker::Worker::start(cfg).await?;
    let ready = http().get(format!("{}/readyz", gw.url())).send().await?;
    assert_eq!(ready.status(), 200, "{}", ready.text().await?);

    let purchases = (0..30).map(|i| (format!("u{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 30).await?;
    let counts = by_status(&answers);
    assert_eq!(counts.get(&202), Some(&20), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&10), "{counts:?}");
    env.wait_persisted(stock, Duration::from_secs(30)).await?;
    assert_eq!(env.persisted_orders().await?, stock);
    for (name, proxy) in stores.each() {
        assert!(proxy.handshakes() > 0, "nothing reached {name} over TLS");
    }

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
