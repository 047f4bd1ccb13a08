//! A TCP proxy in front of a real server, switched by the test: to cut a
//! component off from Redis or PostgreSQL without stopping the server the
//! other tests share.

use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward requests; when a reply comes, drop it and the connection
    /// (the server did the work, the client never hears of it).
    KillOnReply,
    /// Close every open connection, and each new one at once.
    Refuse,
}

pub struct TcpProxy {
    port: u16,
    upstream: (String, u16),
    mode: Arc<Mutex<Mode>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `host:port` of a URL such as `redis://127.0.0.1:6379/0` or
/// `postgres://user@host:5432/db`.
pub fn authority(url: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("not a URL: {url}"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hostport = rest[..end].rsplit('@').next().unwrap_or_default();
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), port.parse()?)),
        None if !hostport.is_empty() => Ok((hostport.to_owned(), default_port)),
        None => anyhow::bail!("no host in {url}"),
    }
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: (String, u16)) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (mode, conns, upstream) = (Arc::clone(&mode), Arc::clone(&conns), upstream.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *lock(&mode) == Mode::Refuse {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    else {
                        continue;
                    };
                    // Checked again under the lock `set` drains: a switch to
                    // Refuse while this connection was being opened either
                    // shows here or finds the connection in the list.
                    let mut open = lock(&conns);
                    if *lock(&mode) == Mode::Refuse {
                        continue;
                    }
                    open.push(tokio::spawn(forward(client, server, Arc::clone(&mode))));
                }
            }
        });
        Ok(TcpProxy {
            port,
            upstream,
            mode,
            conns,
            accept,
        })
    }

    /// `url` with the upstream's `host:port` replaced by the proxy's.
    pub fn url(&self, url: &str) -> anyhow::Result<String> {
        let hostport = format!("{}:{}", self.upstream.0, self.upstream.1);
        anyhow::ensure!(url.contains(&hostport), "{url} does not name {hostport}");
        Ok(url.replacen(&hostport, &format!("127.0.0.1:{}", self.port), 1))
    }

    /// Switches the mode. Once this returns, no connection forwards in a
    /// mode it has left.
    pub fn set(&self, mode: Mode) {
        *lock(&self.mode) = mode;
        if mode == Mode::Refuse {
            for c in lock(&self.conns).drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in lock(&self.conns).drain(..) {
            c.abort();
        }
    }
}

async fn forward(client: TcpStream, server: TcpStream, mode: Arc<Mutex<Mode>>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let requests = tokio::io::copy(&mut from_client, &mut to_server);
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_server.read(&mut buf).await?;
            if n == 0 || *lock(&mode) == Mode::KillOnReply {
                return Ok::<_, std::io::Error>(());
            }
            to_client.write_all(&buf[..n]).await?;
        }
    };
    // Whichever side ends first, both sockets close with this task.
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn authorities() {
        let a = |u| authority(u, 1).ok();
        assert_eq!(
            a("redis://127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(a("redis://:pw@host:7000/0"), Some(("host".into(), 7000)));
        assert_eq!(
            a("postgres://postgres@127.0.0.1:5432/db?sslmode=disable"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(a("postgres://db.local/x"), Some(("db.local".into(), 1)));
        assert_eq!(a("nonsense"), None);
    }
}
