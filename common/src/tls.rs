//! TLS to the data stores. A `rediss://` or `amqps://` URL, or a PostgreSQL
//! URL with `sslmode`, turns TLS on; the server's certificate is checked
//! against the system's trusted roots, or against the CA certificates of
//! `--tls-ca-file` or `--tls-ca-pem` (for a private CA).
//!
//! For data stores that authenticate clients by certificate (mutual TLS),
//! `--tls-client-cert-file` and `--tls-client-key-file` (or their PEM
//! twins) give the certificate the components present; a store that wants
//! a certificate of its own gets it from `--redis-tls-client-cert-pem`
//! (and `--amqp-…`, `--database-…`) with its key.
//!
//! A binary loads them once at start ([`TlsArgs::load`]) and hands them to
//! every connection it opens, to any of the three stores (`redisconn`,
//! `amqp`, `db` take them as an argument). Only rustls's crypto provider is
//! the process's.

use anyhow::Context;
use clap::Args;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM file of the CA certificates that sign the data stores' server
    /// certificates, for rediss:// and amqps:// URLs and for PostgreSQL URLs
    /// with sslmode=verify-ca or verify-full (unless the URL names its own
    /// sslrootcert). Without it (or --tls-ca-pem), the system's trusted roots;
    /// with it, connections to Redis trust only these certificates.
    #[arg(long, env = crate::backend_keys::TLS_CA_FILE, conflicts_with = "tls_ca_pem")]
    pub tls_ca_file: Option<PathBuf>,
    /// The same CA certificates as PEM text, e.g. an environment variable
    /// filled from a Secret.
    #[arg(
        long,
        env = crate::backend_keys::TLS_CA_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub tls_ca_pem: Option<String>,
    /// PEM file of a client certificate (and its chain) to present to
    /// Redis, RabbitMQ and PostgreSQL (mutual TLS), for data stores that
    /// authenticate clients by certificate. Needs its key. A PostgreSQL URL
    /// that names its own sslcert keeps it.
    #[arg(
        long,
        env = crate::backend_keys::TLS_CLIENT_CERT_FILE,
        conflicts_with = "tls_client_cert_pem"
    )]
    pub tls_client_cert_file: Option<PathBuf>,
    /// The same client certificate as PEM text.
    #[arg(
        long,
        env = crate::backend_keys::TLS_CLIENT_CERT_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub tls_client_cert_pem: Option<String>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or
    /// SEC1).
    #[arg(
        long,
        env = crate::backend_keys::TLS_CLIENT_KEY_FILE,
        conflicts_with = "tls_client_key_pem"
    )]
    pub tls_client_key_file: Option<PathBuf>,
    /// The same private key as PEM text, e.g. an environment variable filled
    /// from a Secret.
    #[arg(
        long,
        env = crate::backend_keys::TLS_CLIENT_KEY_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub tls_client_key_pem: Option<String>,
    /// A client certificate (PEM text) for Redis only, in place of
    /// --tls-client-cert-*, for stores that each want a certificate of their
    /// own. Needs its key.
    #[arg(
        long,
        env = crate::backend_keys::REDIS_TLS_CLIENT_CERT_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub redis_tls_client_cert_pem: Option<String>,
    /// Its private key (PEM text).
    #[arg(
        long,
        env = crate::backend_keys::REDIS_TLS_CLIENT_KEY_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub redis_tls_client_key_pem: Option<String>,
    /// A client certificate (PEM text) for RabbitMQ only. Needs its key.
    #[arg(
        long,
        env = crate::backend_keys::AMQP_TLS_CLIENT_CERT_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub amqp_tls_client_cert_pem: Option<String>,
    /// Its private key (PEM text).
    #[arg(
        long,
        env = crate::backend_keys::AMQP_TLS_CLIENT_KEY_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub amqp_tls_client_key_pem: Option<String>,
    /// A client certificate (PEM text) for PostgreSQL only. Needs its key.
    #[arg(
        long,
        env = crate::backend_keys::DATABASE_TLS_CLIENT_CERT_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub database_tls_client_cert_pem: Option<String>,
    /// Its private key (PEM text).
    #[arg(
        long,
        env = crate::backend_keys::DATABASE_TLS_CLIENT_KEY_PEM, hide = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub database_tls_client_key_pem: Option<String>,
}

/// The three data stores, for settings that may differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Store {
    Redis,
    Amqp,
    Database,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Redis, Store::Amqp, Store::Database];

    /// The prefix of its environment variables and Secret keys.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Store::Redis => "REDIS",
            Store::Amqp => "AMQP",
            Store::Database => "DATABASE",
        }
    }

    /// `<STORE>_TLS_CLIENT_CERT_PEM` and `<STORE>_TLS_CLIENT_KEY_PEM`.
    pub fn identity_keys(self) -> (&'static str, &'static str) {
        use crate::backend_keys as k;
        match self {
            Store::Redis => (k::REDIS_TLS_CLIENT_CERT_PEM, k::REDIS_TLS_CLIENT_KEY_PEM),
            Store::Amqp => (k::AMQP_TLS_CLIENT_CERT_PEM, k::AMQP_TLS_CLIENT_KEY_PEM),
            Store::Database => (
                k::DATABASE_TLS_CLIENT_CERT_PEM,
                k::DATABASE_TLS_CLIENT_KEY_PEM,
            ),
        }
    }
}

/// A PEM input given as a file or as text; `None` when neither (or only
/// blank text) is given.
fn pem_input(
    file: Option<&Path>,
    text: Option<&str>,
    flag: &str,
) -> anyhow::Result<Option<(Vec<u8>, String)>> {
    match (file, text) {
        (Some(path), _) => {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some((pem, path.display().to_string())))
        }
        (None, Some(text)) if !text.trim().is_empty() => {
            Ok(Some((text.as_bytes().to_vec(), flag.to_owned())))
        }
        _ => Ok(None),
    }
}

impl TlsArgs {
    /// Reads the CA certificates and client certificates given here; every
    /// connection a binary opens is handed the result.
    pub fn load(&self) -> anyhow::Result<Arc<Tls>> {
        install_crypto_provider();
        let ca = pem_input(
            self.tls_ca_file.as_deref(),
            self.tls_ca_pem.as_deref(),
            "--tls-ca-pem",
        )
        .context("the CA file")?
        .map(|(pem, source)| Ca::new(pem, source))
        .transpose()?;
        let cert = pem_input(
            self.tls_client_cert_file.as_deref(),
            self.tls_client_cert_pem.as_deref(),
            "--tls-client-cert-pem",
        )
        .context("the client certificate file")?;
        let key = pem_input(
            self.tls_client_key_file.as_deref(),
            self.tls_client_key_pem.as_deref(),
            "--tls-client-key-pem",
        )
        .context("the client key file")?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some((cert, source)), Some((key, key_source))) => Some(Identity::new(
                cert,
                key,
                format!("{source} and {key_source}"),
            )?),
            (Some(_), None) => anyhow::bail!(
                "a client certificate needs its private key (--tls-client-key-file or TLS_CLIENT_KEY_PEM)"
            ),
            (None, Some(_)) => anyhow::bail!(
                "a client key needs its certificate (--tls-client-cert-file or TLS_CLIENT_CERT_PEM)"
            ),
        };
        let mut own = BTreeMap::new();
        for (store, cert, key) in [
            (
                Store::Redis,
                &self.redis_tls_client_cert_pem,
                &self.redis_tls_client_key_pem,
            ),
            (
                Store::Amqp,
                &self.amqp_tls_client_cert_pem,
                &self.amqp_tls_client_key_pem,
            ),
            (
                Store::Database,
                &self.database_tls_client_cert_pem,
                &self.database_tls_client_key_pem,
            ),
        ] {
            if let Some(id) = store_identity(store, given(cert), given(key), "the flags")? {
                own.insert(store, id);
            }
        }
        if ca.is_none() && identity.is_none() && own.is_empty() {
            return Ok(Arc::default());
        }
        if let Some(ca) = &ca {
            tracing::info!(source = %ca.source, certificates = ca.count, "trusting the CA certificates given for TLS to the data stores");
        }
        if let Some(id) = &identity {
            tracing::info!(source = %id.source, "presenting a client certificate to the data stores");
        }
        for (store, id) in &own {
            tracing::info!(source = %id.source, ?store, "presenting a client certificate of its own to this store");
        }
        let tls = Arc::new(Tls {
            ca,
            identity,
            own_identities: own,
        });
        Ok(tls)
    }
}

/// What TLS to the data stores uses beyond the URLs: CA certificates to
/// check the servers with and a client certificate to present.
#[derive(Debug, Default)]
pub struct Tls {
    pub ca: Option<Ca>,
    /// The client certificate for every store without one of its own.
    pub identity: Option<Identity>,
    /// Client certificates for one store each.
    pub own_identities: BTreeMap<Store, Identity>,
}

/// A PEM text that is there and not blank.
fn given(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.trim().is_empty())
}

/// A store's own client certificate from its two PEM texts: both or
/// neither.
fn store_identity(
    store: Store,
    cert: Option<&str>,
    key: Option<&str>,
    what: &str,
) -> anyhow::Result<Option<Identity>> {
    let (cert_key, key_key) = store.identity_keys();
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Identity::new(
            cert.as_bytes().to_vec(),
            key.as_bytes().to_vec(),
            format!("{what} {cert_key} and {key_key}"),
        )
        .map(Some),
        _ => anyhow::bail!(
            "{what}: {cert_key} and {key_key} go together, one without the other is of no use"
        ),
    }
}

impl Tls {
    /// The client certificate to present to `store`: its own, else the
    /// one for every store.
    pub fn identity_for(&self, store: Store) -> Option<&Identity> {
        self.own_identities.get(&store).or(self.identity.as_ref())
    }

    /// With `store`'s own client certificate from PEM texts (both or
    /// neither); `what` names them in errors.
    pub fn with_store_identity(
        mut self,
        store: Store,
        cert: Option<&str>,
        key: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Tls> {
        if let Some(id) = store_identity(store, cert, key, what)? {
            self.own_identities.insert(store, id);
        }
        Ok(self)
    }

    /// From PEM texts, e.g. the keys of a Secret; `what` names them in
    /// errors.
    pub fn from_pem(
        ca: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Tls> {
        let ca = ca
            .map(|pem| Ca::new(pem.as_bytes().to_vec(), format!("{what} TLS_CA_PEM")))
            .transpose()?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Identity::new(
                cert.as_bytes().to_vec(),
                key.as_bytes().to_vec(),
                format!("{what} TLS_CLIENT_CERT_PEM and TLS_CLIENT_KEY_PEM"),
            )?),
            _ => anyhow::bail!(
                "{what}: TLS_CLIENT_CERT_PEM and TLS_CLIENT_KEY_PEM go together, one without the other is of no use"
            ),
        };
        Ok(Tls {
            ca,
            identity,
            own_identities: BTreeMap::new(),
        })
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
        let count = certificates(&pem, &source, "the CA certificates")?;
        Ok(Ca { source, pem, count })
    }

    /// The PEM as text.
    pub fn pem_text(&self) -> String {
        String::from_utf8_lossy(&self.pem).into_owned()
    }
}

/// How many certificates `pem` holds; an error if none or one is broken.
fn certificates(pem: &[u8], source: &str, what: &str) -> anyhow::Result<usize> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.with_context(|| format!("{what} in {source} are not valid PEM"))?;
        count += 1;
    }
    anyhow::ensure!(
        count > 0,
        "{source} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
    );
    Ok(count)
}

/// A client certificate (with its chain) and its private key, in PEM.
pub struct Identity {
    /// Where they came from, for messages.
    pub source: String,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("source", &self.source)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Checks that the certificate PEM holds a certificate and the key PEM
    /// a private key, so that a wrong file stops the start with a clear
    /// error instead of failing each handshake.
    pub fn new(cert_pem: Vec<u8>, key_pem: Vec<u8>, source: String) -> anyhow::Result<Identity> {
        certificates(&cert_pem, &source, "the client certificates")?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow::anyhow!(
                "{source}: no private key in the key PEM ({e}; expected \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")"
            )
        })?;
        Ok(Identity {
            source,
            cert_pem,
            key_pem,
        })
    }

    pub fn cert_text(&self) -> String {
        String::from_utf8_lossy(&self.cert_pem).into_owned()
    }

    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key_pem).into_owned()
    }
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
    fn a_client_certificate_needs_its_key_and_both_must_read() {
        install_crypto_provider();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["flashsale".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate")
            .pem();
        let key = key.serialize_pem();
        let ok = Tls::from_pem(None, Some(&cert), Some(&key), "Secret s");
        let id = ok
            .expect("a certificate with its key")
            .identity
            .expect("identity");
        assert!(
            !format!("{id:?}").contains("PRIVATE KEY"),
            "the key is redacted"
        );

        let e = Tls::from_pem(None, Some(&cert), None, "Secret s").expect_err("no key");
        assert!(format!("{e:#}").contains("go together"), "{e:#}");
        let e = Tls::from_pem(None, Some(&cert), Some(&cert), "Secret s").expect_err("no key");
        assert!(format!("{e:#}").contains("no private key"), "{e:#}");
        let e = Tls::from_pem(None, Some(&key), Some(&key), "Secret s").expect_err("no cert");
        assert!(format!("{e:#}").contains("holds no certificate"), "{e:#}");

        let only_cert = Cli::try_parse_from(["t", "--tls-client-cert-pem", &cert])
            .expect("parses")
            .tls
            .load();
        let e = format!("{:#}", only_cert.expect_err("refused"));
        assert!(e.contains("needs its private key"), "{e}");
        let only_key = Cli::try_parse_from(["t", "--tls-client-key-pem", &key])
            .expect("parses")
            .tls
            .load();
        let e = format!("{:#}", only_key.expect_err("refused"));
        assert!(e.contains("needs its certificate"), "{e}");
    }

    #[test]
    fn a_store_with_a_certificate_of_its_own_gets_it_and_the_others_the_shared_one() {
        install_crypto_provider();
        let pair = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("certificate")
                .pem();
            (cert, key.serialize_pem())
        };
        let (shared, shared_key) = pair("shared");
        let (redis, redis_key) = pair("redis");
        let cli = Cli::try_parse_from([
            "t",
            "--tls-client-cert-pem",
            &shared,
            "--tls-client-key-pem",
            &shared_key,
            "--redis-tls-client-cert-pem",
            &redis,
            "--redis-tls-client-key-pem",
            &redis_key,
        ])
        .expect("parses");
        let tls = cli.tls.load().expect("applies");
        let cert_of = |store| tls.identity_for(store).map(Identity::cert_text);
        assert_eq!(cert_of(Store::Redis), Some(redis.clone()));
        assert_eq!(cert_of(Store::Amqp), Some(shared.clone()));
        assert_eq!(cert_of(Store::Database), Some(shared));

        let half = Cli::try_parse_from(["t", "--database-tls-client-cert-pem", &redis])
            .expect("parses")
            .tls
            .load();
        let e = format!("{:#}", half.expect_err("a certificate without its key"));
        assert!(e.contains("DATABASE_TLS_CLIENT_KEY_PEM"), "{e}");
    }

    #[test]
    fn one_source_of_ca_certificates_at_a_time() {
        let both = Cli::try_parse_from(["t", "--tls-ca-file", "ca.pem", "--tls-ca-pem", "x"]);
        assert!(both.is_err());
        let none = Cli::try_parse_from(["t"]).map(|c| c.tls.tls_ca_file.is_none());
        assert_eq!(none.ok(), Some(true));
    }
}
