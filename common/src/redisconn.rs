//! The one way every component connects to Redis: a connection manager
//! whose waits are bounded.
//!
//! While Redis is unreachable, every call waits for the manager's
//! reconnection attempt. The client library's default (six retries with
//! exponential backoff, about 6 s plus a second per attempt) would hold a
//! buyer for ten seconds or more before the `503`; here a call fails
//! within about 0.1 s when the connection is refused and within about 2 s
//! when it hangs, and the next call tries again.

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

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
/// against the process's CA certificates (`--tls-ca-file`) when they are
/// set, and against the system's roots otherwise (redis-rs takes one or the
/// other, not both), and presents the process's client certificate, if any.
pub fn client(url: &str) -> RedisResult<redis::Client> {
    client_with_tls(url, &crate::tls::settings())
}

/// [`client`] with the given TLS settings instead of the process's.
pub fn client_with_tls(url: &str, tls: &crate::tls::Tls) -> RedisResult<redis::Client> {
    crate::tls::install_crypto_provider();
    if !url.starts_with("rediss://") || (tls.ca.is_none() && tls.identity.is_none()) {
        return redis::Client::open(url);
    }
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: tls.identity.as_ref().map(|id| redis::ClientTlsConfig {
                client_cert: id.cert_pem.clone(),
                client_key: id.key_pem.clone(),
            }),
            root_cert: tls.ca.as_ref().map(|ca| ca.pem.clone()),
        },
    )
}

/// Connects to `url` (the first connection must succeed).
pub async fn connect(url: &str) -> RedisResult<ConnectionManager> {
    connect_client(client(url)?).await
}

/// The client and a first connection for the `--redis-url` of a binary,
/// with errors that name the flag and the URL (its password hidden).
pub async fn open(url: &str) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    use anyhow::Context as _;
    let client = client(url).context("invalid --redis-url")?;
    let conn = connect_client(client.clone()).await.with_context(|| {
        format!(
            "cannot connect to Redis at {}",
            crate::config::redacted(url)
        )
    })?;
    Ok((client, conn))
}

/// Connects with an already opened client.
pub async fn connect_client(client: redis::Client) -> RedisResult<ConnectionManager> {
    client.get_connection_manager_with_config(config()).await
}
