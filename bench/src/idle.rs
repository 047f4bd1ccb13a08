//! Idle live-stock clients for the benchmark: N SSE connections that each
//! read their first event and then just stay open. They live in a child
//! process so that the gateway's process keeps its file descriptors.

use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Child side: open `n` streams, print `ready`, hold them until stdin closes.
pub async fn hold(addr: SocketAddr, path: String, n: usize) -> anyhow::Result<()> {
    let mut streams = Vec::with_capacity(n);
    let mut opening = Vec::new();
    for chunk in 0..n.div_ceil(500) {
        for _ in 0..500.min(n - chunk * 500) {
            let path = path.clone();
            opening.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                s.write_all(
                    format!(
                        "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(6).any(|w| w == b"data: " || w == b"data:{") {
                    let k = s.read(&mut buf).await?;
                    anyhow::ensure!(k > 0, "stream closed before the first event");
                    seen.extend_from_slice(&buf[..k]);
                }
                anyhow::Ok(s)
            }));
        }
        for t in opening.drain(..) {
            streams.push(t.await??);
        }
    }
    println!("ready {}", streams.len());
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    let _ = stdin.read_line(&mut line).await;
    drop(streams);
    Ok(())
}

/// Parent side: a child process holding `n` idle streams.
pub struct IdleClients {
    child: tokio::process::Child,
}

impl IdleClients {
    pub async fn open(addr: SocketAddr, path: &str, n: usize) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "--hold-sse",
                &addr.to_string(),
                "--hold-sse-path",
                path,
                "--hold-sse-count",
                &n.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(120), lines.next_line())
            .await??
            .unwrap_or_default();
        anyhow::ensure!(
            line.starts_with("ready"),
            "idle clients did not start: {line:?}"
        );
        Ok(Self { child })
    }

    pub async fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait().await;
    }
}
