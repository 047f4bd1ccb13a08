//! TLS to the data stores. A `rediss://` or `amqps://` URL, or a PostgreSQL
//! URL with `sslmode`, turns TLS on; the server's certificate is checked
//! against the system's trusted roots, or against the CA certificates of
//! `--tls-ca-file` or `--tls-ca-pem` (for a private CA).
//!
//! The CA certificates are a setting of the process, like the crypto
//! provider that rustls needs: every connection a binary opens, to any of
//! the three stores, goes through `redisconn`, `amqp` and `db`, which read
//! them here.

use anyhow::Context;
use clap::Args;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::{Arc, Once, RwLock};

#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM file of the CA certificates that sign the data stores' server
    /// certificates, for rediss:// and amqps:// URLs and for PostgreSQL URLs
    /// with sslmode=verify-ca or verify-full (unless the URL names its own
    /// sslrootcert). Without it (or --tls-ca-pem), the system's trusted roots;
    /// with it, connections to Redis trust only these certificates.
    #[arg(long, env = "TLS_CA_FILE", conflicts_with = "tls_ca_pem")]
    pub tls_ca_file: Option<PathBuf>,
    /// The same CA certificates as PEM text, e.g. an environment variable
    /// filled from a Secret.
    #[arg(long, env = "TLS_CA_PEM", hide_env_values = true)]
    pub tls_ca_pem: Option<String>,
}

impl TlsArgs {
    /// Makes the CA certificates given here the process's. Without any, an
    /// earlier setting stays (binaries call this once, at start-up).
    pub fn apply(&self) -> anyhow::Result<Option<Arc<Ca>>> {
        install_crypto_provider();
        let ca = match (&self.tls_ca_file, &self.tls_ca_pem) {
            (Some(path), _) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read the CA file {}", path.display()))?;
                Ca::new(pem, path.display().to_string())?
            }
            (None, Some(text)) if !text.trim().is_empty() => {
                Ca::new(text.clone().into_bytes(), "--tls-ca-pem".to_owned())?
            }
            _ => return Ok(ca()),
        };
        let ca = Arc::new(ca);
        *CA.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&ca));
        tracing::info!(source = %ca.source, certificates = ca.count, "trusting the CA certificates given for TLS to the data stores");
        Ok(Some(ca))
    }
}

/// CA certificates given in PEM.
#[derive(Debug)]
pub struct Ca {
    /// Where they came from, for messages.
    pub source: String,
    /// The PEM text, as the client libraries take it.
    pub pem: Vec<u8>,
    pub count: usize,
}

impl Ca {
    /// Checks that `pem` holds at least one certificate and nothing
    /// unreadable: a wrong file is an error at start-up, not a silent
    /// fallback to the system's roots.
    pub fn new(pem: Vec<u8>, source: String) -> anyhow::Result<Ca> {
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            cert.with_context(|| format!("the CA certificates in {source} are not valid PEM"))?;
            count += 1;
        }
        anyhow::ensure!(
            count > 0,
            "{source} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        );
        Ok(Ca { source, pem, count })
    }

    /// The PEM as text.
    pub fn pem_text(&self) -> String {
        String::from_utf8_lossy(&self.pem).into_owned()
    }
}

static CA: RwLock<Option<Arc<Ca>>> = RwLock::new(None);

/// The CA certificates set by [`TlsArgs::apply`], if any.
pub fn ca() -> Option<Arc<Ca>> {
    CA.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// rustls needs one process-wide crypto provider; ring is the one every
/// client library here is built with.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn a_certificate() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .pem()
    }

    #[test]
    fn ca_certificates_must_be_pem_certificates() {
        install_crypto_provider();
        let one = a_certificate();
        let two = format!("{one}{}", a_certificate());
        assert_eq!(
            Ca::new(one.into_bytes(), "one".into())
                .map(|c| c.count)
                .ok(),
            Some(1)
        );
        assert_eq!(
            Ca::new(two.into_bytes(), "two".into())
                .map(|c| c.count)
                .ok(),
            Some(2)
        );

        let none = Ca::new(b"/etc/ssl/ca.pem".to_vec(), "TLS_CA_PEM".into());
        let e = format!("{:#}", none.expect_err("refused"));
        assert!(e.contains("TLS_CA_PEM holds no certificate"), "{e}");
        let broken = b"-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n";
        let e = format!(
            "{:#}",
            Ca::new(broken.to_vec(), "x.pem".into()).expect_err("refused")
        );
        assert!(e.contains("x.pem are not valid PEM"), "{e}");
    }

    #[test]
    fn one_source_of_ca_certificates_at_a_time() {
        let both = Cli::try_parse_from(["t", "--tls-ca-file", "ca.pem", "--tls-ca-pem", "x"]);
        assert!(both.is_err());
        let none = Cli::try_parse_from(["t"]).map(|c| c.tls.tls_ca_file.is_none());
        assert_eq!(none.ok(), Some(true));
    }
}
