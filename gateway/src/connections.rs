//! Serving buyers' connections with bounds a hostile client cannot stretch:
//! a cap on open connections (beyond it a `503` with `Retry-After`, never
//! an exhausted file table), a deadline for a request's headers that also
//! closes idle keep-alive connections, and a graceful stop that lets
//! in-flight requests finish. HTTP/1.1 only, as ingresses speak to pods.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client may take to send a request's headers, and how long a
/// kept-alive connection may stay idle before its next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors kept free of buyers' connections: Redis, RabbitMQ,
/// the operational port, logs.
const RESERVED_FDS: u64 = 64;

/// The answer to a connection over the cap, written before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 97\r\n\r\n\
{\"error\":{\"code\":\"over_capacity\",\"message\":\"this gateway serves as many connections as it can\"}}\n";

/// The most connections this process can hold open: `wanted`, lowered to
/// what its open-file limit leaves after the descriptors it needs itself.
pub fn connection_cap(wanted: usize) -> usize {
    let files = rlimit_nofile().unwrap_or(u64::MAX);
    let room = usize::try_from(files.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    wanted.min(room).max(1)
}

fn rlimit_nofile() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `app` on `listener` until `stop`, then lets the open requests
/// finish (up to `grace`). At most `cap` connections are open at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cap: usize,
    stop: CancellationToken,
    grace: Duration,
    over_capacity: impl Fn() + Send + Sync + 'static,
) {
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or a reset before accept: go on
                    // after a breath rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            over_capacity();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(OVER_CAPACITY).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "in-flight requests did not finish in time");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("a length");
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"]["code"], "over_capacity");
    }

    #[test]
    fn the_cap_leaves_room_for_the_process_own_descriptors() {
        assert!(super::connection_cap(usize::MAX) < usize::MAX);
        assert_eq!(super::connection_cap(10), 10);
    }
}
