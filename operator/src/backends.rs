//! Connections to the data stores of each sale: the operator's defaults, or
//! the URLs in the Secret a FlashSale names in `spec.backends.secretName`.
//! Clients are cached by URL.

use flashsale_common::amqp::{self, QueueType};
use flashsale_common::sale::FlashSale;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use lapin::Channel;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use std::collections::HashMap;
use tokio::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUrls {
    pub redis_url: String,
    pub amqp_url: String,
    pub database_url: String,
}

pub struct Backends {
    pub defaults: BackendUrls,
    pub queue_type: QueueType,
    redis: Mutex<HashMap<String, ConnectionManager>>,
    pg: Mutex<HashMap<String, PgPool>>,
    amqp: Mutex<HashMap<String, (lapin::Connection, Channel)>>,
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
    ) -> anyhow::Result<BackendUrls> {
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
                anyhow::anyhow!("spec.backends.secretName: no Secret {ns}/{}", b.secret_name)
            })?;
        let data = secret.data.unwrap_or_default();
        let get = |key: &str, default: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .unwrap_or_else(|| default.to_owned())
        };
        Ok(BackendUrls {
            redis_url: get("REDIS_URL", &self.defaults.redis_url),
            amqp_url: get("AMQP_URL", &self.defaults.amqp_url),
            database_url: get("DATABASE_URL", &self.defaults.database_url),
        })
    }

    pub async fn redis(&self, url: &str) -> anyhow::Result<ConnectionManager> {
        let mut cache = self.redis.lock().await;
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let c = flashsale_common::redisconn::connect(url).await?;
        cache.insert(url.to_owned(), c.clone());
        Ok(c)
    }

    pub async fn pg(&self, url: &str) -> anyhow::Result<PgPool> {
        let mut cache = self.pg.lock().await;
        if let Some(p) = cache.get(url) {
            return Ok(p.clone());
        }
        let p = flashsale_common::db::connect_and_migrate(url, 2).await?;
        cache.insert(url.to_owned(), p.clone());
        Ok(p)
    }

    /// A channel for queue inspection, reopened when the old one broke.
    pub async fn amqp(&self, url: &str) -> anyhow::Result<Channel> {
        let mut cache = self.amqp.lock().await;
        if let Some((conn, ch)) = cache.get(url)
            && conn.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = amqp::connect(url, "flashsale-operator").await?;
        let ch = conn.create_channel().await?;
        cache.insert(url.to_owned(), (conn, ch.clone()));
        Ok(ch)
    }
}
