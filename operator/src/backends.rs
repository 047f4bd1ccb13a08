//! Connections to the data stores of each sale: the operator's defaults, or
//! the URLs (and CA and client certificates, and the token that confirms
//! paid orders) in the Secret a FlashSale names in `spec.backends.secretName`. Clients are cached by URL, CA and client
//! certificate.

use crate::error::Error;
use flashsale_api::sale::FlashSale;
use flashsale_common::amqp::{self, QueueType};
use flashsale_common::backend_keys as keys;
use flashsale_common::config::redacted;
use flashsale_common::tls::{Store, Tls};
use flashsale_store::redisconn::RedisConn;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use lapin::Channel;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::sync::Mutex;

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct BackendUrls {
    pub redis_url: String,
    pub amqp_url: String,
    pub database_url: String,
    /// CA certificates (PEM) for TLS to these stores; `None`: the system's
    /// trusted roots.
    pub tls_ca_pem: Option<String>,
    /// A client certificate (PEM) to present to these stores, with its
    /// private key (mutual TLS).
    pub tls_client_cert_pem: Option<String>,
    pub tls_client_key_pem: Option<String>,
    /// The token the payment service presents to the sale's gateways to
    /// confirm paid orders (`CONFIRM_TOKEN`); `None`: confirms are open.
    pub confirm_token: Option<String>,
    /// Redis replicas that must acknowledge each reservation before the
    /// gateways publish its order (`REDIS_WAIT_REPLICAS`); `None`: no wait.
    pub redis_wait_replicas: Option<u32>,
    /// The key that signs the sale's waiting-room tickets and passes
    /// (`PASS_KEY`), made per sale.
    pub pass_key: Option<String>,
    /// A lottery's seed (`LOTTERY_SEED`, 32 bytes as hex), made per sale
    /// and revealed in the status once drawn.
    pub lottery_seed: Option<String>,
    /// Client certificates of one store each, by their keys
    /// (`REDIS_TLS_CLIENT_CERT_PEM`, `REDIS_TLS_CLIENT_KEY_PEM`, and the
    /// same for `AMQP_` and `DATABASE_`), in place of the one above.
    pub own_client_certs: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for BackendUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendUrls")
            .field("redis_url", &redacted(&self.redis_url))
            .field("amqp_url", &redacted(&self.amqp_url))
            .field("database_url", &redacted(&self.database_url))
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .field("tls_client_cert_pem", &self.tls_client_cert_pem.is_some())
            .field(
                "tls_client_key_pem",
                &self.tls_client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "confirm_token",
                &self.confirm_token.as_ref().map(|_| "<redacted>"),
            )
            .field("redis_wait_replicas", &self.redis_wait_replicas)
            .field("pass_key", &self.pass_key.as_ref().map(|_| "<redacted>"))
            .field(
                "lottery_seed",
                &self.lottery_seed.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "own_client_certs",
                &self.own_client_certs.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl BackendUrls {
    /// The operator's own: its URLs and the process's TLS settings.
    pub fn with_tls(redis_url: String, amqp_url: String, database_url: String, tls: &Tls) -> Self {
        BackendUrls {
            redis_url,
            amqp_url,
            database_url,
            tls_ca_pem: tls.ca.as_ref().map(|ca| ca.pem_text()),
            tls_client_cert_pem: tls.identity.as_ref().map(|id| id.cert_text()),
            tls_client_key_pem: tls.identity.as_ref().map(|id| id.key_text()),
            confirm_token: None,
            redis_wait_replicas: None,
            pass_key: None,
            lottery_seed: None,
            own_client_certs: tls
                .own_identities
                .iter()
                .flat_map(|(store, id)| {
                    let (cert, key) = store.identity_keys();
                    [
                        (cert.to_owned(), id.cert_text()),
                        (key.to_owned(), id.key_text()),
                    ]
                })
                .collect(),
        }
    }

    /// The same with `token` (blank: none) for confirming paid orders.
    pub fn with_confirm_token(mut self, token: Option<String>) -> Self {
        self.confirm_token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The same with `replicas` (0: none) to wait for before each order
    /// goes out.
    pub fn with_redis_wait_replicas(mut self, replicas: u32) -> Self {
        self.redis_wait_replicas = (replicas > 0).then_some(replicas);
        self
    }

    fn tls(&self) -> crate::error::Result<Tls> {
        let mut tls = Tls::from_pem(
            self.tls_ca_pem.as_deref(),
            self.tls_client_cert_pem.as_deref(),
            self.tls_client_key_pem.as_deref(),
            "the backends",
        )
        .map_err(Error::Config)?;
        for store in Store::ALL {
            let (cert, key) = store.identity_keys();
            tls = tls
                .with_store_identity(
                    store,
                    self.own_client_certs.get(cert).map(String::as_str),
                    self.own_client_certs.get(key).map(String::as_str),
                    "the backends",
                )
                .map_err(Error::Config)?;
        }
        Ok(tls)
    }

    /// The client certificate presented to `store`.
    fn client_cert_for(&self, store: Store) -> Option<String> {
        self.own_client_certs
            .get(store.identity_keys().0)
            .or(self.tls_client_cert_pem.as_ref())
            .cloned()
    }
}

/// A cache key: a URL, the CA certificates it is checked against and the
/// client certificate presented to it.
type Key = (String, Option<String>, Option<String>);

fn key(url: &str, urls: &BackendUrls, store: Store) -> Key {
    (
        url.to_owned(),
        urls.tls_ca_pem.clone(),
        urls.client_cert_for(store),
    )
}

pub struct Backends {
    pub defaults: BackendUrls,
    pub queue_type: QueueType,
    redis: Mutex<HashMap<Key, RedisConn>>,
    pg: Mutex<HashMap<Key, PgPool>>,
    amqp: Mutex<HashMap<Key, (lapin::Connection, Channel)>>,
}

impl Backends {
    pub fn new(defaults: BackendUrls, queue_type: QueueType) -> Self {
        Self {
            defaults,
            queue_type,
            redis: Mutex::default(),
            pg: Mutex::default(),
            amqp: Mutex::default(),
        }
    }

    /// The URLs for one sale.
    pub async fn urls(
        &self,
        client: Option<&Client>,
        sale: &FlashSale,
    ) -> crate::error::Result<BackendUrls> {
        let Some(b) = &sale.spec.backends else {
            return Ok(self.defaults.clone());
        };
        let Some(client) = client else {
            return Ok(self.defaults.clone());
        };
        let ns = sale.metadata.namespace.clone().unwrap_or_default();
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt(&b.secret_name)
            .await?
            .ok_or_else(|| {
                Error::config(format!(
                    "spec.backends.secretName: no Secret {ns}/{}",
                    b.secret_name
                ))
            })?;
        let data = secret.data.unwrap_or_default();
        let get = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let d = &self.defaults;
        let own_identity = data.contains_key(keys::TLS_CLIENT_CERT_PEM)
            || data.contains_key(keys::TLS_CLIENT_KEY_PEM);
        // A store's own certificate and its key come as a pair, from one
        // place, like the one for every store.
        let mut own_client_certs = std::collections::BTreeMap::new();
        for store in Store::ALL {
            let (cert, key) = store.identity_keys();
            let from_secret = data.contains_key(cert) || data.contains_key(key);
            for k in [cert, key] {
                let pem = if from_secret {
                    get(k)
                } else {
                    d.own_client_certs.get(k).cloned()
                };
                if let Some(pem) = pem {
                    own_client_certs.insert(k.to_owned(), pem);
                }
            }
        }
        Ok(BackendUrls {
            redis_url: get(keys::REDIS_URL).unwrap_or_else(|| d.redis_url.clone()),
            amqp_url: get(keys::AMQP_URL).unwrap_or_else(|| d.amqp_url.clone()),
            database_url: get(keys::DATABASE_URL).unwrap_or_else(|| d.database_url.clone()),
            tls_ca_pem: get(keys::TLS_CA_PEM).or_else(|| d.tls_ca_pem.clone()),
            // A certificate and its key come as a pair, from one place.
            tls_client_cert_pem: if own_identity {
                get(keys::TLS_CLIENT_CERT_PEM)
            } else {
                d.tls_client_cert_pem.clone()
            },
            tls_client_key_pem: if own_identity {
                get(keys::TLS_CLIENT_KEY_PEM)
            } else {
                d.tls_client_key_pem.clone()
            },
            own_client_certs,
            confirm_token: match get(keys::CONFIRM_TOKEN) {
                Some(text) => {
                    Some(flashsale_common::config::confirm_token(&text).map_err(|e| {
                        Error::config(format!("CONFIRM_TOKEN of Secret {ns}/{}: {e}", b.secret_name))
                    })?)
                    .filter(|t| !t.is_empty())
                }
                None => None,
            }
            .or_else(|| d.confirm_token.clone()),
            redis_wait_replicas: match get(keys::REDIS_WAIT_REPLICAS) {
                Some(text) => text.trim().parse::<u32>().map_err(|_| {
                    Error::config(format!(
                        "REDIS_WAIT_REPLICAS of Secret {ns}/{}: {:?} is not a number of replicas (0 or more)",
                        b.secret_name,
                        text.trim()
                    ))
                })
                .map(|n| (n > 0).then_some(n))?,
                None => d.redis_wait_replicas,
            },
            pass_key: d.pass_key.clone(),
            lottery_seed: d.lottery_seed.clone(),
        })
    }

    pub async fn redis(&self, urls: &BackendUrls) -> crate::error::Result<RedisConn> {
        let key = key(&urls.redis_url, urls, Store::Redis);
        let mut cache = self.redis.lock().await;
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let c = flashsale_store::redisconn::connect(&urls.redis_url, &urls.tls()?).await?;
        cache.insert(key, c.clone());
        Ok(c)
    }

    pub async fn pg(&self, urls: &BackendUrls) -> crate::error::Result<PgPool> {
        let key = key(&urls.database_url, urls, Store::Database);
        let mut cache = self.pg.lock().await;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let p = flashsale_common::db::connect_and_migrate(&urls.database_url, 2, &urls.tls()?)
            .await
            .map_err(Error::Postgres)?;
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// A channel for queue inspection, reopened when the old one broke.
    pub async fn amqp(&self, urls: &BackendUrls) -> crate::error::Result<Channel> {
        let key = key(&urls.amqp_url, urls, Store::Amqp);
        let mut cache = self.amqp.lock().await;
        if let Some((conn, ch)) = cache.get(&key)
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = amqp::connect(&urls.amqp_url, "flashsale-operator", &urls.tls()?).await?;
        let ch = conn.create_channel().await?;
        cache.insert(key, (conn, ch.clone()));
        Ok(ch)
    }
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    hex::encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

/// What [`ensure_admission_keys`] made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MadeKeys {
    pub pass_key: bool,
    pub lottery_seed: bool,
}

/// Gives a sale with a waiting room its pass key, and a lottery its seed:
/// the ones `kept` in its `<sale>-backends` Secret, else new ones (kept
/// there by this reconcile). A seed, once made, is never replaced: its
/// SHA-256 is the commitment in the status.
pub fn ensure_admission_keys(
    sale: &FlashSale,
    urls: &mut BackendUrls,
    kept_pass_key: Option<&str>,
    kept_seed: Option<&str>,
) -> MadeKeys {
    MadeKeys {
        pass_key: ensure_pass_key(sale, urls, kept_pass_key),
        lottery_seed: ensure_lottery_seed(sale, urls, kept_seed),
    }
}

/// The pass key of a sale with a waiting room; true when made just now.
pub fn ensure_pass_key(sale: &FlashSale, urls: &mut BackendUrls, kept: Option<&str>) -> bool {
    if urls.pass_key.is_some() || !sale.spec.admission.as_ref().is_some_and(|a| a.queued()) {
        return false;
    }
    let kept = kept.filter(|k| k.len() >= 32);
    urls.pass_key = Some(kept.map_or_else(|| random_hex(32), str::to_owned));
    kept.is_none()
}

/// A lottery's seed; true when made just now.
fn ensure_lottery_seed(sale: &FlashSale, urls: &mut BackendUrls, kept: Option<&str>) -> bool {
    let lottery = sale
        .spec
        .admission
        .as_ref()
        .is_some_and(|a| a.mode == flashsale_api::sale::AdmissionMode::Lottery);
    if urls.lottery_seed.is_some() || !lottery {
        return false;
    }
    let kept = kept.filter(|s| hex_seed(s).is_some());
    urls.lottery_seed = Some(kept.map_or_else(|| random_hex(32), str::to_owned));
    kept.is_none()
}

/// A seed's bytes, from its hex.
pub fn hex_seed(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.trim()).ok().filter(|b| !b.is_empty())
}

/// A sale with payment holds never takes confirms without a token: when
/// none is given (chart, the sale's own Secret), one is made for it and
/// kept in its `<sale>-backends` Secret, key `CONFIRM_TOKEN`, where the
/// payment service reads it (`kept`: the token that Secret holds).
/// Returns true when it was made just now.
pub fn ensure_confirm_token(sale: &FlashSale, urls: &mut BackendUrls, kept: Option<&str>) -> bool {
    if sale.spec.hold.seconds == 0
        || urls.confirm_token.is_some()
        || sale.metadata.deletion_timestamp.is_some()
    {
        return false;
    }
    let kept = kept
        .and_then(|t| flashsale_common::config::confirm_token(t).ok())
        .filter(|t| !t.is_empty());
    let made = kept.is_none();
    urls.confirm_token = Some(kept.unwrap_or_else(|| random_hex(24)));
    made
}
