//! The one way every component connects to Redis: a connection whose
//! waits are bounded, to a single server or to a Redis Cluster.
//!
//! While Redis is unreachable, every call waits for the manager's
//! reconnection attempt. The client library's default (six retries with
//! exponential backoff, about 6 s plus a second per attempt) would hold a
//! buyer for ten seconds or more before the `503`; here a call fails
//! within about 0.1 s when the connection is refused and within about 2 s
//! when it hangs, and the next call tries again.
//!
//! A Redis Cluster needs no setting: the URL names any node (or a Service in
//! front of them), and a server that reports `cluster_enabled:1` is used as
//! a cluster from then on. Every key of a sale carries the sale's hash tag,
//! so each script call and command of a sale goes to the one node that
//! holds it.
//!
//! A `redis+sentinel://` URL names sentinels instead of a server: the
//! connection goes to the primary they name and follows it when they fail
//! over (see [`crate::sentinel`]).

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

use crate::sentinel::SentinelConn;

/// A connection to a single Redis server, a Redis Cluster or the primary
/// that Redis Sentinel names; cheap to clone, every clone shares the same
/// connections. The client beside a connection opens pub/sub connections.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager, redis::Client),
    Cluster(ClusterConnection, redis::Client),
    Sentinel(SentinelConn),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(..))
    }

    /// What the connection leads to, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisConn::Single(..) => "Redis",
            RedisConn::Cluster(..) => "Redis Cluster",
            RedisConn::Sentinel(_) => "Redis through Sentinel",
        }
    }

    /// Waits until `replicas` replicas acknowledged every write this
    /// connection made so far, or `timeout_ms` passed: Redis `WAIT`, on the
    /// node that holds `key` (in a cluster, where every node has replicas
    /// of its own). Returns how many replicas acknowledged.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        self.query_on_primary_of(key, wait).await
    }

    /// Runs `cmd`, which names no key, on the primary that holds `key`: in
    /// a cluster, the node of the key's slot; otherwise the one server.
    async fn query_on_primary_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match self {
            RedisConn::Cluster(c, _) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let reply = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
            _ => cmd.query_async(self).await,
        }
    }

    /// How the primary that holds `key` frees memory when full (`INFO
    /// memory`); `None` when it does not say (a server or an ACL that
    /// refuses `INFO`).
    pub async fn memory_policy(&mut self, key: &str) -> RedisResult<Option<MemoryPolicy>> {
        let mut info = redis::cmd("INFO");
        info.arg("memory");
        match self.query_on_primary_of::<String>(key, info).await {
            Ok(text) => Ok(MemoryPolicy::parse(&text)),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Refuses a Redis that may evict the keys of `sale` (see
    /// [`MemoryPolicy::evicts_sale_keys`]); the error says why and what to
    /// set. A Redis that does not tell its policy passes.
    pub async fn check_keeps_sale_keys(
        &mut self,
        sale: &flashsale_common::SaleRef,
    ) -> anyhow::Result<()> {
        let key = crate::keys::SaleKeys::new(sale).sale();
        match self.memory_policy(&key).await? {
            Some(policy) if policy.evicts_sale_keys() => Err(EvictingRedis(policy).into()),
            _ => Ok(()),
        }
    }

    /// Replicas attached to the primary (`connected_slaves` of `INFO
    /// replication`); `None` for a cluster, whose nodes are not asked one
    /// by one, and when the server does not say.
    pub async fn connected_replicas(&mut self) -> RedisResult<Option<u32>> {
        if self.is_cluster() {
            return Ok(None);
        }
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(self)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok()))
    }

    /// Whether the connection goes through Redis Sentinel.
    pub fn is_sentinel(&self) -> bool {
        matches!(self, RedisConn::Sentinel(_))
    }

    /// A pub/sub connection: to the server, to any node of a cluster (a
    /// cluster carries messages to every node), or to the primary the
    /// sentinels named last.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let client = match self {
            RedisConn::Single(_, client) | RedisConn::Cluster(_, client) => client.clone(),
            RedisConn::Sentinel(s) => s.primary_client(),
        };
        client.get_async_pubsub().await
    }
}

/// A Redis server's `maxmemory` and `maxmemory-policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Bytes Redis may use before it evicts or refuses writes; 0: no limit.
    pub maxmemory: u64,
    /// What Redis does when full: `noeviction`, `allkeys-lru`, `volatile-lru`, …
    pub policy: String,
}

impl MemoryPolicy {
    /// The `maxmemory` and `maxmemory_policy` fields of `INFO memory`.
    pub fn parse(info: &str) -> Option<MemoryPolicy> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Some(MemoryPolicy {
            maxmemory: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_owned(),
        })
    }

    /// Whether Redis, once full, may delete keys that have no expiry: the
    /// `allkeys-*` policies with a memory limit. A sale's keys have none:
    /// its stock, holds, idempotency keys and outbox could vanish, and the
    /// operator would seed the stock again. `noeviction` refuses writes
    /// instead (the gateway answers 503), and the `volatile-*` policies
    /// evict only keys with an expiry, of which a sale has only its
    /// rate-limit buckets.
    pub fn evicts_sale_keys(&self) -> bool {
        self.maxmemory > 0 && self.policy.starts_with("allkeys-")
    }

    /// Why a sale cannot run on this Redis, and what to change.
    pub fn refusal(&self) -> String {
        format!(
            "Redis may evict keys without an expiry (maxmemory {} bytes, maxmemory-policy {}): \
             a sale's stock, reservations and not yet published orders could vanish, so units \
             could be sold twice and accepted orders lost; set maxmemory-policy to noeviction \
             (or a volatile-* policy) in the server's configuration and with \
             CONFIG SET maxmemory-policy noeviction",
            self.maxmemory, self.policy
        )
    }
}

/// A Redis that may evict a sale's keys, refused for every sale.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.refusal())]
pub struct EvictingRedis(pub MemoryPolicy);

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_command(cmd),
            RedisConn::Cluster(c, _) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c, _) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c, _) => c.get_db(),
            RedisConn::Cluster(c, _) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Longest wait for a TCP connection and handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a reply once the command is sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(100))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// A client for `url`. A `rediss://` URL checks the server's certificate
/// against the given CA certificates (`--tls-ca-file`) when they are set,
/// and against the system's roots otherwise (redis-rs takes one or the
/// other, not both), and presents the client certificate for Redis, if any.
fn client_with_tls(url: &str, tls: &flashsale_common::tls::Tls) -> RedisResult<redis::Client> {
    flashsale_common::tls::install_crypto_provider();
    let identity = tls.identity_for(flashsale_common::tls::Store::Redis);
    if !url.starts_with("rediss://") || (tls.ca.is_none() && identity.is_none()) {
        return redis::Client::open(url);
    }
    redis::Client::build_with_tls(url, certificates(tls))
}

/// The process's CA and client certificate for Redis, when either is set.
pub(crate) fn custom_certificates(
    tls: &flashsale_common::tls::Tls,
) -> Option<redis::TlsCertificates> {
    (tls.ca.is_some()
        || tls
            .identity_for(flashsale_common::tls::Store::Redis)
            .is_some())
    .then(|| certificates(tls))
}

/// The process's CA and client certificate, as redis-rs takes them.
fn certificates(tls: &flashsale_common::tls::Tls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls
            .identity_for(flashsale_common::tls::Store::Redis)
            .map(|id| redis::ClientTlsConfig {
                client_cert: id.cert_pem.clone(),
                client_key: id.key_pem.clone(),
            }),
        root_cert: tls.ca.as_ref().map(|ca| ca.pem.clone()),
    }
}

/// Connects to `url` (the first connection must succeed) with the TLS
/// settings `tls`.
pub async fn connect(url: &str, tls: &flashsale_common::tls::Tls) -> RedisResult<RedisConn> {
    if crate::sentinel::is_sentinel_url(url) {
        flashsale_common::tls::install_crypto_provider();
        return Ok(RedisConn::Sentinel(
            SentinelConn::connect(url, tls, config()).await?,
        ));
    }
    connect_client(client_with_tls(url, tls)?, url, tls).await
}

/// The first connection for the `--redis-url` of a binary, with errors
/// that name the flag and the URL (its password hidden).
pub async fn open(url: &str, tls: &flashsale_common::tls::Tls) -> anyhow::Result<RedisConn> {
    use anyhow::Context as _;
    connect(url, tls).await.with_context(|| {
        format!(
            "cannot connect to Redis at {} (--redis-url)",
            flashsale_common::config::redacted(url)
        )
    })
}

/// Connects to `url` and checks that it answers `PING` (readiness probes).
pub async fn ping(url: &str, tls: &flashsale_common::tls::Tls) -> RedisResult<()> {
    let mut conn = connect(url, tls).await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

/// Connects with an already opened client for `url`: to the server alone,
/// or, when it reports that it is a Redis Cluster node, to the cluster.
async fn connect_client(
    client: redis::Client,
    url: &str,
    tls: &flashsale_common::tls::Tls,
) -> RedisResult<RedisConn> {
    let mut single = client.get_connection_manager_with_config(config()).await?;
    let info: RedisResult<String> = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut single)
        .await;
    let cluster = match info {
        Ok(info) => info.lines().any(|l| l.trim() == "cluster_enabled:1"),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
            return Err(e);
        }
        // A server that refuses INFO (an ACL, a managed service) is used
        // as a single server.
        Err(_) => false,
    };
    if !cluster {
        return Ok(RedisConn::Single(single, client));
    }
    let mut builder = redis::cluster::ClusterClient::builder([url])
        .retries(1)
        .min_retry_wait(100)
        .max_retry_wait(100)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT);
    if url.starts_with("rediss://")
        && let Some(certs) = custom_certificates(tls)
    {
        builder = builder.certs(certs);
    }
    let cluster = builder.build()?.get_async_connection().await?;
    Ok(RedisConn::Cluster(cluster, client))
}

#[cfg(test)]
mod tests {
    use super::MemoryPolicy;

    fn info(maxmemory: &str, policy: &str) -> String {
        format!(
            "# Memory\r\nused_memory:1024\r\nmaxmemory:{maxmemory}\r\n\
             maxmemory_human:{maxmemory}B\r\nmaxmemory_policy:{policy}\r\n"
        )
    }

    #[test]
    fn reads_the_limit_and_the_policy() {
        assert_eq!(
            MemoryPolicy::parse(&info("104857600", "allkeys-lru")),
            Some(MemoryPolicy {
                maxmemory: 104_857_600,
                policy: "allkeys-lru".to_owned()
            })
        );
        assert_eq!(MemoryPolicy::parse("# Memory\r\nused_memory:1\r\n"), None);
        assert_eq!(MemoryPolicy::parse(&info("lots", "noeviction")), None);
    }

    #[test]
    fn only_a_limit_with_an_allkeys_policy_evicts_a_sale() {
        let evicts = |max: &str, policy: &str| {
            MemoryPolicy::parse(&info(max, policy))
                .map(|p| p.evicts_sale_keys())
                .unwrap_or_default()
        };
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(evicts("1000000", policy), "{policy}");
            assert!(!evicts("0", policy), "{policy} without a limit");
        }
        for policy in ["noeviction", "volatile-lru", "volatile-lfu", "volatile-ttl"] {
            assert!(!evicts("1000000", policy), "{policy}");
        }
    }

    #[test]
    fn the_refusal_names_the_policy_and_the_fix() {
        let text = MemoryPolicy {
            maxmemory: 5,
            policy: "allkeys-lfu".to_owned(),
        }
        .refusal();
        assert!(text.contains("maxmemory-policy allkeys-lfu"), "{text}");
        assert!(
            text.contains("CONFIG SET maxmemory-policy noeviction"),
            "{text}"
        );
    }
}
