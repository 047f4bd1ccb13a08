//! Mutual TLS to all three data stores: each server (a proxy in front of
//! the real one) asks for a client certificate signed by the test CA. A
//! gateway and a worker that present none cannot start; given one as files
//! (`--tls-client-cert-file`, `--tls-client-key-file`) or as PEM text
//! (`TLS_CLIENT_CERT_PEM`, `TLS_CLIENT_KEY_PEM`), every order goes the
//! whole way.
//!
//! One test function: the TLS settings are a setting of the process.

use flashsale_harness::tlsproxy::{TempFile, TestPki, TlsStores};
use flashsale_harness::{Env, by_status, herd, http, open_sale};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_travel_over_mutual_tls_with_a_client_certificate() -> anyhow::Result<()> {
    let env = Env::new("mtls").await?;
    let stock = 10;
    env.seed(&open_sale(stock, 1, 1)).await?;
    let pki = TestPki::new()?;
    let stores = TlsStores::start(&pki, &env.db_url, true).await?;
    let ca = pki.write_ca()?;

    // Without a client certificate, neither starts, and nothing is sold.
    let mut cfg = env.gateway_config(&[]);
    cfg.redis.redis_url = stores.redis_url.clone();
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    match flashsale_gateway::Gateway::start(cfg).await {
        Ok(gw) => {
            gw.shutdown().await?;
            anyhow::bail!("the gateway started without a client certificate");
        }
        Err(e) => assert!(format!("{e:#}").contains("CertificateRequired"), "{e:#}"),
    }
    let mut cfg = env.worker_config(&[]);
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.database.database_url = stores.database_url.clone();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    match flashsale_worker::Worker::start(cfg).await {
        Ok(w) => {
            w.shutdown().await?;
            anyhow::bail!("the worker started without a client certificate");
        }
        Err(e) => assert!(format!("{e:#}").contains("CertificateRequired"), "{e:#}"),
    }
    for (name, proxy) in [("Redis", &stores.redis), ("PostgreSQL", &stores.pg)] {
        assert_eq!(
            proxy.handshakes(),
            0,
            "{name} accepted a client without a certificate"
        );
    }
    assert_eq!(env.snapshot().await?.remaining, stock, "nothing was sold");

    // The gateway with files, the worker with PEM text.
    let cert = TempFile::with_contents(pki.client_cert_pem.as_bytes())?;
    let key = TempFile::with_contents(pki.client_key_pem.as_bytes())?;
    let mut cfg = env.gateway_config(&[]);
    cfg.redis.redis_url = stores.redis_url.clone();
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.tls.tls_ca_file = Some(ca.path().to_owned());
    cfg.tls.tls_client_cert_file = Some(cert.path().to_owned());
    cfg.tls.tls_client_key_file = Some(key.path().to_owned());
    let gw = flashsale_gateway::Gateway::start(cfg).await?;
    let mut cfg = env.worker_config(&[]);
    cfg.amqp.amqp_url = stores.amqp_url.clone();
    cfg.database.database_url = stores.database_url.clone();
    cfg.tls.tls_ca_pem = Some(pki.ca_pem.clone());
    cfg.tls.tls_client_cert_pem = Some(pki.client_cert_pem.clone());
    cfg.tls.tls_client_key_pem = Some(pki.client_key_pem.clone());
    let worker = flashsale_worker::Worker::start(cfg).await?;
    let ready = http().get(format!("{}/readyz", gw.url())).send().await?;
    assert_eq!(ready.status(), 200, "{}", ready.text().await?);

    let purchases = (0..20).map(|i| (format!("u{i}"), 1, None)).collect();
    let answers = herd(&env.orders_url(&gw), purchases, 20).await?;
    let counts = by_status(&answers);
    assert_eq!(counts.get(&202), Some(&10), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&10), "{counts:?}");
    env.wait_persisted(stock, Duration::from_secs(30)).await?;
    assert_eq!(env.persisted_orders().await?, stock);
    for (name, proxy) in stores.each() {
        assert!(
            proxy.handshakes() > 0,
            "nothing reached {name} over mutual TLS"
        );
    }

    gw.shutdown().await?;
    worker.shutdown().await?;
    env.cleanup().await
}
