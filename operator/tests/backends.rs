//! A sale's own Secret (`spec.backends.secretName`) can point the operator
//! at data stores behind TLS with a private CA of their own (`TLS_CA_PEM`)
//! and a client certificate they require (`TLS_CLIENT_CERT_PEM`,
//! `TLS_CLIENT_KEY_PEM`): the operator reaches them with those, while its
//! defaults have none.
//! The stores are the real servers behind TLS-terminating proxies; the
//! Kubernetes API is mocked at the HTTP level and serves the Secret.

use flashsale_api::sale::FlashSale;
use flashsale_common::amqp::QueueType;
use flashsale_harness::tlsproxy::{TestPki, TlsStores};
use flashsale_harness::{Env, amqp_url, redis_url};
use flashsale_operator::backends::{BackendUrls, Backends};
use http::{Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use std::collections::BTreeMap;

/// A fake API server that answers every GET with `secret`.
fn serving(secret: Secret) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            let body = serde_json::to_vec(&secret).unwrap_or_default();
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap_or_else(|_| Response::new(Body::empty()));
            send.send_response(resp);
        }
    });
    Client::new(service, "default")
}

fn secret(entries: &[(&str, &str)]) -> Secret {
    let data: BTreeMap<String, ByteString> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let mut s = Secret::default();
    s.metadata.name = Some("stores".into());
    s.metadata.namespace = Some("e2e".into());
    s.data = Some(data);
    s
}

fn sale() -> anyhow::Result<FlashSale> {
    let yaml = r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {name: tls, namespace: e2e}
spec:
  product: {sku: SKU-1, name: Thing, price: "9.99", currency: EUR}
  stock: 10
  window: {start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}
  backends: {secretName: stores}
"#;
    Ok(FlashSale::from_yaml_documents(yaml)?.remove(0))
}

/// The Secret's entries for the stores behind the proxies.
fn entries(stores: &TlsStores) -> Vec<(&'static str, &str)> {
    vec![
        ("REDIS_URL", stores.redis_url.as_str()),
        ("AMQP_URL", stores.amqp_url.as_str()),
        ("DATABASE_URL", stores.database_url.as_str()),
    ]
}

/// Reaches all three stores with `urls` and checks that each proxy saw a
/// handshake.
async fn reach_all(
    backends: &Backends,
    urls: &BackendUrls,
    stores: &TlsStores,
) -> anyhow::Result<()> {
    let mut conn = backends.redis(urls).await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    let pool = backends.pg(urls).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    backends.amqp(urls).await?;
    for (name, proxy) in stores.each() {
        assert!(proxy.handshakes() > 0, "nothing reached {name} over TLS");
    }
    pool.close().await;
    Ok(())
}

fn defaults(env: &Env) -> BackendUrls {
    BackendUrls {
        redis_url: redis_url(),
        amqp_url: amqp_url(),
        database_url: env.db_url.clone(),
        ..BackendUrls::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_own_secret_brings_its_own_ca() -> anyhow::Result<()> {
    let env = Env::new("opstls").await?;
    let pki = TestPki::new()?;
    let stores = TlsStores::start(&pki, &env.db_url, false).await?;
    let defaults = defaults(&env);
    let sale = sale()?;

    // Without the sale's CA, the private certificates are refused.
    let plain = entries(&stores);
    let backends = Backends::new(defaults.clone(), QueueType::Quorum);
    let urls = backends.urls(Some(&serving(secret(&plain))), &sale).await?;
    assert_eq!(urls.tls_ca_pem, None);
    let refused = backends
        .redis(&urls)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a certificate from an unknown CA was accepted"))?;
    assert!(
        format!("{refused:#}").contains("certificate"),
        "{refused:#}"
    );

    // With TLS_CA_PEM in the Secret, all three stores are reached.
    let mut with_ca = plain.clone();
    with_ca.push(("TLS_CA_PEM", pki.ca_pem.as_str()));
    let backends = Backends::new(defaults, QueueType::Quorum);
    let urls = backends
        .urls(Some(&serving(secret(&with_ca))), &sale)
        .await?;
    assert_eq!(urls.tls_ca_pem.as_deref(), Some(pki.ca_pem.as_str()));
    reach_all(&backends, &urls, &stores).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_own_secret_brings_its_client_certificate() -> anyhow::Result<()> {
    let env = Env::new("opsmtls").await?;
    let pki = TestPki::new()?;
    let stores = TlsStores::start(&pki, &env.db_url, true).await?;
    let sale = sale()?;
    let mut entries = entries(&stores);
    entries.push(("TLS_CA_PEM", pki.ca_pem.as_str()));

    // The CA alone: the stores refuse a client without a certificate.
    let backends = Backends::new(defaults(&env), QueueType::Quorum);
    let urls = backends
        .urls(Some(&serving(secret(&entries))), &sale)
        .await?;
    assert!(
        backends.redis(&urls).await.is_err(),
        "Redis took no certificate"
    );
    assert!(
        backends.pg(&urls).await.is_err(),
        "PostgreSQL took no certificate"
    );
    assert!(
        backends.amqp(&urls).await.is_err(),
        "RabbitMQ took no certificate"
    );
    for (name, proxy) in stores.each() {
        assert_eq!(
            proxy.handshakes(),
            0,
            "{name} accepted a client without a certificate"
        );
    }

    // A certificate without its key: a clear error, nothing tried.
    let mut half = entries.clone();
    half.push(("TLS_CLIENT_CERT_PEM", pki.client_cert_pem.as_str()));
    let urls = backends.urls(Some(&serving(secret(&half))), &sale).await?;
    let e = backends
        .redis(&urls)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a certificate without its key was used"))?;
    assert!(format!("{e:#}").contains("go together"), "{e:#}");

    // Certificate and key: all three stores are reached.
    let mut whole = half.clone();
    whole.push(("TLS_CLIENT_KEY_PEM", pki.client_key_pem.as_str()));
    let urls = backends.urls(Some(&serving(secret(&whole))), &sale).await?;
    assert!(
        !format!("{urls:?}").contains("PRIVATE KEY"),
        "the key is not logged"
    );
    reach_all(&backends, &urls, &stores).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_own_secret_may_bring_its_confirm_token() -> anyhow::Result<()> {
    let defaults = BackendUrls {
        redis_url: redis_url(),
        amqp_url: amqp_url(),
        ..BackendUrls::default()
    }
    .with_confirm_token(Some("operator-default-0123".into()));
    let backends = Backends::new(defaults, QueueType::Quorum);
    let sale = sale()?;
    for (entries, want) in [
        (
            vec![("CONFIRM_TOKEN", "shop-own-0123456789")],
            "shop-own-0123456789",
        ),
        (vec![], "operator-default-0123"),
        (vec![("CONFIRM_TOKEN", "  ")], "operator-default-0123"),
    ] {
        let urls = backends
            .urls(Some(&serving(secret(&entries))), &sale)
            .await?;
        assert_eq!(urls.confirm_token.as_deref(), Some(want), "{entries:?}");
        assert!(
            !format!("{urls:?}").contains(want),
            "the token never shows in debug output"
        );
    }
    assert_eq!(
        BackendUrls::default()
            .with_confirm_token(Some(String::new()))
            .confirm_token,
        None
    );
    // A token the gateways would refuse is refused here, naming the Secret
    // but not the token.
    let err = backends
        .urls(
            Some(&serving(secret(&[("CONFIRM_TOKEN", "s3cret")]))),
            &sale,
        )
        .await
        .expect_err("a six-character token");
    let text = format!("{err:#}");
    assert!(
        text.contains("CONFIRM_TOKEN of Secret e2e/stores"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_own_secret_may_set_the_replicas_to_wait_for() -> anyhow::Result<()> {
    let defaults = BackendUrls {
        redis_url: redis_url(),
        amqp_url: amqp_url(),
        ..BackendUrls::default()
    }
    .with_redis_wait_replicas(1);
    let backends = Backends::new(defaults, QueueType::Quorum);
    let sale = sale()?;
    for (entries, want) in [
        (vec![("REDIS_WAIT_REPLICAS", " 2 ")], Some(2)),
        (vec![("REDIS_WAIT_REPLICAS", "0")], None),
        (vec![], Some(1)),
    ] {
        let urls = backends
            .urls(Some(&serving(secret(&entries))), &sale)
            .await?;
        assert_eq!(urls.redis_wait_replicas, want, "{entries:?}");
    }
    let err = backends
        .urls(
            Some(&serving(secret(&[("REDIS_WAIT_REPLICAS", "two")]))),
            &sale,
        )
        .await
        .expect_err("not a number");
    let text = format!("{err:#}");
    assert!(
        text.contains("REDIS_WAIT_REPLICAS of Secret e2e/stores"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_own_secret_may_give_one_store_a_client_certificate() -> anyhow::Result<()> {
    let mut defaults = BackendUrls {
        redis_url: redis_url(),
        amqp_url: amqp_url(),
        ..BackendUrls::default()
    };
    for key in ["AMQP_TLS_CLIENT_CERT_PEM", "AMQP_TLS_CLIENT_KEY_PEM"] {
        defaults
            .own_client_certs
            .insert(key.to_owned(), format!("operator {key}"));
    }
    let backends = Backends::new(defaults, QueueType::Quorum);
    let sale = sale()?;
    let urls = backends
        .urls(
            Some(&serving(secret(&[
                ("REDIS_TLS_CLIENT_CERT_PEM", "sale cert"),
                ("REDIS_TLS_CLIENT_KEY_PEM", "sale key"),
            ]))),
            &sale,
        )
        .await?;
    let got = |key: &str| urls.own_client_certs.get(key).map(String::as_str);
    assert_eq!(got("REDIS_TLS_CLIENT_CERT_PEM"), Some("sale cert"));
    assert_eq!(
        got("AMQP_TLS_CLIENT_KEY_PEM"),
        Some("operator AMQP_TLS_CLIENT_KEY_PEM"),
        "the operator's for the stores the Secret says nothing of"
    );
    assert_eq!(got("DATABASE_TLS_CLIENT_CERT_PEM"), None);
    assert!(!format!("{urls:?}").contains("sale key"), "{urls:?}");

    // Half a pair in the Secret replaces the operator's pair for that store
    // and is then refused for want of its other half.
    let urls = backends
        .urls(
            Some(&serving(secret(&[(
                "AMQP_TLS_CLIENT_CERT_PEM",
                "sale cert",
            )]))),
            &sale,
        )
        .await?;
    assert_eq!(urls.own_client_certs.get("AMQP_TLS_CLIENT_KEY_PEM"), None);
    let err = backends.amqp(&urls).await.expect_err("half a pair");
    assert!(format!("{err:#}").contains("go together"), "{err:#}");
    Ok(())
}
