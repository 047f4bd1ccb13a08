//! A client certificate of its own for one store: Redis (behind a proxy)
//! trusts only clients of a second CA, RabbitMQ and PostgreSQL those of the
//! first. The gateway presents the first CA's certificate everywhere except
//! to Redis, which gets its own (`REDIS_TLS_CLIENT_CERT_PEM`,
//! `REDIS_TLS_CLIENT_KEY_PEM`); without that one it cannot start.
//!
//! One test function: the TLS settings are a setting of the process.

use flashsale_harness::proxy::authority;
use flashsale_harness::tlsproxy::{Handshake, TestPki, TlsProxy, on_localhost};
use flashsale_harness::{Env, amqp_url, by_status, herd, open_sale, redis_url};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_may_get_a_client_certificate_of_its_own() -> anyhow::Result<()> {
    let env = Env::new("mtls-own").await?;
    let stock = 10;
    env.seed(&open_sale(stock, 1, 1)).await?;
    let (shared, redis_pki) = (TestPki::new()?, TestPki::new()?);
    let redis = TlsProxy::start_mutual(
        authority(&redis_url(), 6379)?,
        &redis_pki,
        Handshake::Immediate,
    )
    .await?;
    let amqp = TlsProxy::start_mutual(authority(&amqp_url(), 5672)?, &shared, Handshake::Immediate)
        .await?;
    let pg =
        TlsProxy::start_mutual(authority(&env.db_url, 5432)?, &shared, Handshake::Postgres).await?;
    let redis_url = format!("rediss://localhost:{}", redis.port());
    let amqp_url = on_localhost(&amqp_url(), "amqps", amqp.port(), "")?;
    let database_url = on_localhost(&env.db_url, "postgres", pg.port(), "?sslmode=verify-full")?;
    // Both CAs signed servers here; one bundle trusts them all.
    let cas = format!("{}{}", shared.ca_pem, redis_pki.ca_pem);

    let gateway = |own_redis_cert: bool| {
        let mut cfg = env.gateway_config(&[]);
        cfg.redis.redis_url = redis_url.clone();
        cfg.amqp.amqp_url = amqp_url.clone();
        cfg.tls.tls_ca_pem = Some(cas.clone());
        cfg.tls.tls_client_cert_pem = Some(shared.client_cert_pem.clone());
        cfg.tls.tls_client_key_pem = Some(shared.client_key_pem.clone());
        if own_redis_cert {
            cfg.tls.redis_tls_client_cert_pem = Some(redis_pki.client_cert_pem.clone());
            cfg.tls.redis_tls_client_key_pem = Some(redis_pki.client_key_pem.clone());
        }
        cfg
    };

    // The certificate for every store is refused by Redis.
    match flashsale_gateway::Gateway::start(gateway(false)).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway reached Redis with the other CA's certificate");
        }
        Err(e) => assert!(format!("{e:#}").contains("Redis"), "{e:#}"),
    }
    assert_eq!(
        redis.handshakes(),
        0,
        "Redis accepted the other CA's client"
    );

    // With its own certificate for Redis, the gateway reaches all of them.
    let gw = flashsale_gateway::Gateway::start(gateway(true)).await?;
    let mut cfg = env.worker_config(&[]);
    cfg.amqp.amqp_url = amqp_url.clone();
    cfg.database.database_url = database_url.clone();
    cfg.tls.tls_ca_pem = Some(cas.clone());
    cfg.tls.tls_client_cert_pem = Some(shared.client_cert_pem.clone());
    cfg.tls.tls_client_key_pem = Some(shared.client_key_pem.clone());
    let worker = flashsale_worker::Worker::start(cfg).await?;

    let purchases = (0..20).map(|i| (format!("u{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 20).await?;
    let counts = by_status(&answers);
    assert_eq!(counts.get(&202), Some(&10), "{counts:?}");
    env.wait_persisted(stock, Duration::from_secs(30)).await?;
    for (name, proxy) in [("Redis", &redis), ("RabbitMQ", &amqp), ("PostgreSQL", &pg)] {
        assert!(
            proxy.handshakes() > 0,
            "nothing reached {name} over mutual TLS"
        );
    }

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
