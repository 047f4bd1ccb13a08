//! A lean HTTP/1.1 load generator: one keep-alive connection per in-flight
//! request slot, requests written by hand, responses parsed just enough for
//! the status and the body length. It keeps the load generator's own CPU
//! cost small on a machine it shares with the system under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// `POST` with the bodies, or `GET` (no body).
    pub method: &'static str,
}

/// One finished request: status, latency in microseconds, and the error
/// code of a JSON error body.
pub type Sample = (u16, u64, Option<String>);

/// The `"code":"..."` of an error body, without a full JSON parse.
fn error_code(body: &[u8]) -> Option<String> {
    let at = find(body, b"\"code\":\"")? + 8;
    let len = body[at..].iter().position(|b| *b == b'"')?;
    Some(String::from_utf8_lossy(&body[at..at + len]).into_owned())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response; returns its status, whether the server closes, and
/// where the body starts in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<(u16, bool, usize)> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = &buf[..head_end];
    let status: u16 = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line"))?;
    let mut len = 0;
    let mut close = false;
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = std::str::from_utf8(&value[1..]).unwrap_or("").trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            len = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, close, head_end))
}

/// Sends `n` requests over `c` connections; `body(i)` makes the i-th body
/// of a POST.
/// The connections are opened before the clock starts, so the figures are
/// those of requests, not of 200 simultaneous TCP handshakes (which can
/// overflow a listen backlog and cost a one-second SYN retransmit).
pub async fn post_many<F>(
    target: Target,
    n: usize,
    c: usize,
    body: F,
    progress: Option<Arc<AtomicUsize>>,
) -> anyhow::Result<(Vec<Sample>, f64)>
where
    F: Fn(usize) -> String + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let target = Arc::new(target);
    let next = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::with_capacity(c);
    for _ in 0..c {
        streams.push(connect(target.addr).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for mut s in streams {
        let body = Arc::clone(&body);
        let target = Arc::clone(&target);
        let next = Arc::clone(&next);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut buf = Vec::with_capacity(8192);
            let mut req = Vec::with_capacity(512);
            let get = target.method == "GET";
            let prefix = if get {
                format!("GET {} HTTP/1.1\r\nhost: {}\r\n\r\n", target.path, target.addr)
            } else {
                format!(
                    "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: ",
                    target.path, target.addr
                )
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                req.clear();
                req.extend_from_slice(prefix.as_bytes());
                if !get {
                    let b = body(i);
                    req.extend_from_slice(b.len().to_string().as_bytes());
                    req.extend_from_slice(b"\r\n\r\n");
                    req.extend_from_slice(b.as_bytes());
                }
                let t = Instant::now();
                s.write_all(&req).await?;
                let (status, close, body_at) = read_response(&mut s, &mut buf).await?;
                let code = if status >= 400 { error_code(&buf[body_at..]) } else { None };
                samples.push((status, t.elapsed().as_micros() as u64, code));
                if let Some(p) = &progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
                if close {
                    s = connect(target.addr).await?;
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed().as_secs_f64()))
}
