//! TLS in front of the real servers, for tests: a private CA made on the
//! fly, and a proxy that terminates TLS and forwards the plain bytes. The
//! components' TLS paths then run against the real Redis, RabbitMQ and
//! PostgreSQL, which stay as they are for the other tests.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A private CA, a server certificate it signed for `localhost` and
/// 127.0.0.1, and a client certificate it signed, for mutual TLS.
pub struct TestPki {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// The server certificate and its key, for servers that speak TLS
    /// themselves.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    server: Arc<rustls::ServerConfig>,
    /// The same server, asking for a client certificate from this CA.
    mutual: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new() -> anyhow::Result<TestPki> {
        flashsale_common::tls::install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "FlashSale test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer)?;
        let chain = vec![cert.der().clone()];
        let server_key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), server_key())?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let mutual = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, server_key())?;
        let client_key = rcgen::KeyPair::generate()?;
        let mut client = rcgen::CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flashsale");
        client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer)?;
        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server: Arc::new(server),
            mutual: Arc::new(mutual),
        })
    }

    /// Writes the CA certificate to a fresh file, removed when dropped.
    pub fn write_ca(&self) -> anyhow::Result<TempFile> {
        TempFile::with_contents(self.ca_pem.as_bytes())
    }
}

/// A file in the temporary directory, removed when dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn with_contents(contents: &[u8]) -> anyhow::Result<TempFile> {
        let path = std::env::temp_dir().join(format!(
            "flashsale-test-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, contents)?;
        Ok(TempFile(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How a client starts TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// With the first byte (Redis, AMQP).
    Immediate,
    /// After PostgreSQL's `SSLRequest`, answered with `S`.
    Postgres,
}

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Terminates TLS on a free port of 127.0.0.1 and forwards to `upstream`.
pub struct TlsProxy {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(
        upstream: (String, u16),
        pki: &TestPki,
        handshake: Handshake,
    ) -> anyhow::Result<TlsProxy> {
        Self::listen(upstream, Arc::clone(&pki.server), handshake).await
    }

    /// Like [`TlsProxy::start`], but a client must present a certificate
    /// that the test CA signed (mutual TLS).
    pub async fn start_mutual(
        upstream: (String, u16),
        pki: &TestPki,
        handshake: Handshake,
    ) -> anyhow::Result<TlsProxy> {
        Self::listen(upstream, Arc::clone(&pki.mutual), handshake).await
    }

    async fn listen(
        upstream: (String, u16),
        config: Arc<rustls::ServerConfig>,
        handshake: Handshake,
    ) -> anyhow::Result<TlsProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let handshakes = Arc::clone(&handshakes);
            async move {
                // Dropped with the accept loop: aborting it ends every
                // connection too.
                let mut conns = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                    let handshakes = Arc::clone(&handshakes);
                    conns.spawn(async move {
                        let _ = relay(client, upstream, acceptor, handshake, &handshakes).await;
                    });
                }
            }
        });
        Ok(TlsProxy {
            port,
            handshakes,
            accept,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: (String, u16),
    acceptor: TlsAcceptor,
    handshake: Handshake,
    handshakes: &AtomicUsize,
) -> anyhow::Result<()> {
    if handshake == Handshake::Postgres {
        let mut request = [0u8; 8];
        client.read_exact(&mut request).await?;
        anyhow::ensure!(request == SSL_REQUEST, "expected an SSLRequest");
        client.write_all(b"S").await?;
    }
    let mut tls = acceptor.accept(client).await?;
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect((upstream.0.as_str(), upstream.1)).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}

/// `url` with its host and port replaced by `localhost:port` (the name in
/// the test certificate), under `scheme`, with `query` appended.
pub fn on_localhost(url: &str, scheme: &str, port: u16, query: &str) -> anyhow::Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("not a URL: {url}"))?;
    let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = auth
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    Ok(format!("{scheme}://{user}localhost:{port}/{path}{query}"))
}

/// TLS proxies in front of all three local servers, and the URLs that
/// reach them over TLS (PostgreSQL with `sslmode=verify-full`).
pub struct TlsStores {
    pub redis: TlsProxy,
    pub amqp: TlsProxy,
    pub pg: TlsProxy,
    pub redis_url: String,
    pub amqp_url: String,
    pub database_url: String,
}

impl TlsStores {
    /// `mutual`: the proxies ask for a client certificate of the test CA.
    /// `database_url` is the test's own database on the local server.
    pub async fn start(pki: &TestPki, database_url: &str, mutual: bool) -> anyhow::Result<Self> {
        use crate::proxy::authority;
        let start = |upstream, handshake| async move {
            if mutual {
                TlsProxy::start_mutual(upstream, pki, handshake).await
            } else {
                TlsProxy::start(upstream, pki, handshake).await
            }
        };
        let redis = start(authority(&crate::redis_url(), 6379)?, Handshake::Immediate).await?;
        let amqp = start(authority(&crate::amqp_url(), 5672)?, Handshake::Immediate).await?;
        let pg = start(authority(database_url, 5432)?, Handshake::Postgres).await?;
        Ok(TlsStores {
            redis_url: format!("rediss://localhost:{}", redis.port()),
            amqp_url: on_localhost(&crate::amqp_url(), "amqps", amqp.port(), "")?,
            database_url: on_localhost(
                database_url,
                "postgres",
                pg.port(),
                "?sslmode=verify-full",
            )?,
            redis,
            amqp,
            pg,
        })
    }

    /// Each proxy, by the name of the store behind it.
    pub fn each(&self) -> [(&'static str, &TlsProxy); 3] {
        [
            ("Redis", &self.redis),
            ("RabbitMQ", &self.amqp),
            ("PostgreSQL", &self.pg),
        ]
    }
}
