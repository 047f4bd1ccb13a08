//! Redis behind Sentinel: the primary is whichever server the sentinels
//! name, and it changes when they fail over.
//!
//! A `redis+sentinel://` URL names the sentinels and the service:
//!
//! ```text
//! redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_username=..&sentinel_password=..]
//! ```
//!
//! The user and password in front of the hosts are those of the Redis
//! servers; the sentinels get their own in the query (none by default).
//! The port defaults to 26379. `rediss+sentinel://` speaks TLS to the
//! sentinels and the servers alike, with the process's CA and client
//! certificate as for `rediss://`.
//!
//! [`SentinelConn`] sends every command to the primary the sentinels last
//! named. A command that finds it gone (the connection refused, dropped or
//! timed out) or demoted (`READONLY`) fails at once, as any Redis failure
//! does, and the sentinels are asked again in the background, by one task
//! at a time and at most every [`RETRY_AFTER`] while they name no reachable
//! primary: the calls after that go to the new primary. Nothing is retried
//! behind the caller's back, so a reservation script never runs twice.
//!
//! A primary handed over on purpose (`SENTINEL FAILOVER`) keeps answering,
//! and takes writes, until the sentinels reconfigure it as a replica, up to
//! ten seconds later; what it takes meanwhile is lost. So the sentinels are
//! also asked every [`WATCH_EVERY`] which primary they name, and a change is
//! followed without waiting for an error.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisResult, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use flashsale_common::sentinel_url::{Parts, is_sentinel_url};

/// The port sentinels listen on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 26379;

/// Longest wait for the sentinels to name a primary and for it to answer.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Shortest time between two questions to the sentinels that found no
/// reachable primary.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);

/// How often the sentinels are asked which primary they name.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub tls: bool,
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

fn invalid(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid Redis Sentinel URL",
        detail,
    ))
}

fn decoded(text: &str) -> RedisResult<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid("a user name or password is not UTF-8 once decoded".into()))
}

fn non_empty(text: &str) -> RedisResult<Option<String>> {
    if text.is_empty() {
        Ok(None)
    } else {
        decoded(text).map(Some)
    }
}

/// One `host[:port]` of the list (`[v6]:port` for an IPv6 address).
fn host_port(text: &str) -> RedisResult<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(format!("unclosed '[' in {text:?}")))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(invalid(format!("unexpected {after:?} after {host}"))),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("a sentinel without a host".into()));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(format!("{p:?} is not a port")))?,
    };
    Ok((host.to_owned(), port))
}

impl SentinelUrl {
    pub fn parse(url: &str) -> RedisResult<SentinelUrl> {
        let Some(Parts {
            scheme,
            userinfo,
            hosts,
            path,
            query,
        }) = Parts::of(url)
        else {
            return Err(invalid(
                "the scheme must be redis+sentinel:// or rediss+sentinel://".into(),
            ));
        };
        let tls = scheme == "rediss+sentinel";
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (non_empty(user)?, non_empty(pass)?),
                None => (non_empty(u)?, None),
            },
        };
        let sentinels = hosts
            .split(',')
            .map(host_port)
            .collect::<RedisResult<Vec<_>>>()?;
        let mut segments = path.unwrap_or("").split('/');
        let service = segments
            .next()
            .map(decoded)
            .transpose()?
            .unwrap_or_default();
        if service.is_empty() {
            return Err(invalid(
                "the path must name the service the sentinels monitor, e.g. /mymaster".into(),
            ));
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| invalid(format!("{db:?} is not a database number")))?,
        };
        if let Some(extra) = segments.find(|s| !s.is_empty()) {
            return Err(invalid(format!(
                "unexpected {extra:?} after the database number"
            )));
        }
        let mut parsed = SentinelUrl {
            tls,
            sentinels,
            service,
            db,
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = Some(value.into_owned()).filter(|v| !v.is_empty());
            match key.as_ref() {
                "sentinel_username" => parsed.sentinel_username = value,
                "sentinel_password" => parsed.sentinel_password = value,
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?} (known: sentinel_username, sentinel_password)"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// A client that asks these sentinels for the primary.
    fn client(&self, tls: &flashsale_common::tls::Tls) -> RedisResult<SentinelClient> {
        let addrs = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut b = SentinelClientBuilder::new(addrs, &self.service, SentinelServerType::Master)?
            .set_client_to_redis_db(self.db);
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &self.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        if self.tls {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = crate::redisconn::custom_certificates(tls) {
                b = b
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        b.build()
    }
}

/// The primary in use and how many times it changed.
struct Primary {
    generation: u64,
    client: redis::Client,
    conn: ConnectionManager,
}

impl Primary {
    /// Host and port, as the sentinels name it.
    fn addr(&self) -> Option<(String, u16)> {
        match self.client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        }
    }
}

/// The sentinels, and when they last failed to name a reachable primary.
struct Asking {
    sentinels: SentinelClient,
    failed_at: Option<std::time::Instant>,
}

struct Inner {
    url: String,
    service: String,
    asking: tokio::sync::Mutex<Asking>,
    primary: RwLock<Arc<Primary>>,
    config: ConnectionManagerConfig,
}

/// A connection to the primary of a Sentinel-managed Redis that follows
/// failovers; cheap to clone, every clone shares the same connection.
#[derive(Clone)]
pub struct SentinelConn(Arc<Inner>);

/// Asks the sentinels for the primary and connects to it, within
/// [`RESOLVE_TIMEOUT`].
async fn resolve(
    sentinels: &mut SentinelClient,
    config: &ConnectionManagerConfig,
) -> RedisResult<(redis::Client, ConnectionManager)> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, async {
        let client = sentinels.async_get_client().await?;
        let conn = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        Ok::<_, RedisError>((client, conn))
    })
    .await;
    match found {
        Ok(found) => found,
        Err(_) => Err(RedisError::from((
            ErrorKind::Io,
            "no primary found",
            format!("the sentinels did not name a reachable primary within {RESOLVE_TIMEOUT:?}"),
        ))),
    }
}

/// An error that may mean the primary moved: the connection failed, or the
/// server refused a write as a replica (`READONLY`, from a command or from
/// inside a script).
pub fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        )
        || e.to_string().contains("READONLY")
}

impl SentinelConn {
    /// Connects to the primary the sentinels of `url` name now.
    pub async fn connect(
        url: &str,
        tls: &flashsale_common::tls::Tls,
        config: ConnectionManagerConfig,
    ) -> RedisResult<SentinelConn> {
        let parsed = SentinelUrl::parse(url)?;
        let mut sentinels = parsed.client(tls)?;
        let (client, conn) = resolve(&mut sentinels, &config).await?;
        tracing::info!(
            service = %parsed.service,
            primary = %client.get_connection_info().addr(),
            "the sentinels name the Redis primary"
        );
        let conn = SentinelConn(Arc::new(Inner {
            url: flashsale_common::config::redacted(url),
            service: parsed.service.clone(),
            asking: tokio::sync::Mutex::new(Asking {
                sentinels,
                failed_at: None,
            }),
            primary: RwLock::new(Arc::new(Primary {
                generation: 0,
                client,
                conn,
            })),
            config,
        }));
        tokio::spawn(watch(Arc::downgrade(&conn.0)));
        Ok(conn)
    }

    fn primary(&self) -> Arc<Primary> {
        match self.0.primary.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A client of the current primary (for pub/sub).
    pub fn primary_client(&self) -> redis::Client {
        self.primary().client.clone()
    }

    /// Asks the sentinels again after the primary of generation `seen`
    /// failed, unless it was replaced already, another call is asking, or
    /// the last answer found no reachable primary less than
    /// [`RETRY_AFTER`] ago. Failures are logged; a later failed call asks
    /// again.
    pub async fn follow(&self, seen: u64) {
        let Ok(mut asking) = self.0.asking.try_lock() else {
            return;
        };
        if self.primary().generation != seen
            || asking.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return;
        }
        let found = resolve(&mut asking.sentinels, &self.0.config).await;
        asking.failed_at = found.is_err().then(std::time::Instant::now);
        match found {
            Ok((client, conn)) => {
                let addr = client.get_connection_info().addr().to_string();
                let next = Arc::new(Primary {
                    generation: seen + 1,
                    client,
                    conn,
                });
                match self.0.primary.write() {
                    Ok(mut p) => *p = next,
                    Err(poisoned) => *poisoned.into_inner() = next,
                }
                tracing::warn!(url = %self.0.url, primary = %addr, "following the Redis primary the sentinels name");
            }
            Err(e) => {
                tracing::warn!(url = %self.0.url, error = %e, "the sentinels name no reachable primary yet");
            }
        }
    }

    fn after<T>(&self, seen: u64, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result
            && primary_lost(e)
        {
            let this = self.clone();
            tokio::spawn(async move { this.follow(seen).await });
        }
        result
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            let primary = self.primary();
            let mut conn = primary.conn.clone();
            let result = conn.req_packed_command(cmd).await;
            self.after(primary.generation, result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let primary = self.primary();
            let mut conn = primary.conn.clone();
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            self.after(primary.generation, result)
        })
    }

    fn get_db(&self) -> i64 {
        self.primary().conn.get_db()
    }
}

/// Asks the sentinels every [`WATCH_EVERY`] which primary they name, and
/// follows a change; ends when the last [`SentinelConn`] is dropped.
async fn watch(inner: std::sync::Weak<Inner>) {
    let mut asker: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let conn = SentinelConn(inner);
        if asker.is_none() {
            let client = match conn.0.asking.try_lock() {
                Ok(mut asking) => asking.sentinels.async_get_sentinel_client().await,
                Err(_) => continue,
            };
            asker = match client {
                Ok(c) => {
                    tokio::time::timeout(RESOLVE_TIMEOUT, c.get_multiplexed_async_connection())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                Err(_) => None,
            };
        }
        let Some(sentinel) = asker.as_mut() else {
            continue;
        };
        let named = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&conn.0.service)
                .query_async::<Option<(String, u16)>>(sentinel),
        )
        .await;
        match named {
            Ok(Ok(Some(named))) => {
                let primary = conn.primary();
                if primary.addr().is_some_and(|current| current != named) {
                    tracing::info!(url = %conn.0.url, primary = %format!("{}:{}", named.0, named.1), "the sentinels name another Redis primary");
                    conn.follow(primary.generation).await;
                }
            }
            // No answer: ask another sentinel next time.
            _ => asker = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_sentinels_service_database_and_credentials() {
        let u = SentinelUrl::parse(
            "redis+sentinel://app:p%40ss@s1,s2:26380,[::1]:5000/mymaster/2?sentinel_password=sp",
        )
        .expect("valid");
        assert!(!u.tls);
        assert_eq!(
            u.sentinels,
            vec![
                ("s1".to_owned(), DEFAULT_PORT),
                ("s2".to_owned(), 26380),
                ("::1".to_owned(), 5000)
            ]
        );
        assert_eq!(u.service, "mymaster");
        assert_eq!(u.db, 2);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.sentinel_username, None);
        assert_eq!(u.sentinel_password.as_deref(), Some("sp"));

        let plain = SentinelUrl::parse("rediss+sentinel://:pw@sentinel/fs").expect("valid");
        assert!(plain.tls);
        assert_eq!(
            (plain.db, plain.username, plain.password.as_deref()),
            (0, None, Some("pw"))
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis://host/mymaster", "scheme"),
            ("redis+sentinel://host", "service"),
            ("redis+sentinel://host/", "service"),
            ("redis+sentinel://host:0/m", "port"),
            ("redis+sentinel://host:x/m", "port"),
            ("redis+sentinel://,host/m", "host"),
            ("redis+sentinel://[::1/m", "unclosed"),
            ("redis+sentinel://host/m/x", "database"),
            ("redis+sentinel://host/m/1/2", "after the database"),
            ("redis+sentinel://host/m?password=x", "unknown parameter"),
        ] {
            let err = SentinelUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
