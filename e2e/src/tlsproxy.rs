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

/// A private CA and a server certificate it signed for `localhost` and
/// 127.0.0.1.
pub struct TestPki {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
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
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        Ok(TestPki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
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
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = TlsAcceptor::from(Arc::clone(&pki.server));
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
