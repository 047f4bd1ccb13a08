//! The operational endpoints every process serves — `/healthz`, `/readyz`,
//! `/metrics` — and shutdown on SIGTERM or Ctrl-C.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Answers whether a process can do its work now; `Err` names what is missing.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Arc<Registry>,
    ready: ReadyCheck,
}

pub fn router(registry: Arc<Registry>, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { registry, ready })
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    match (s.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&s.registry),
    )
}

/// An error and its causes on one line, as `{:#}` prints them, but without
/// a cause whose text the line already ends with: some libraries (redis-rs
/// among them) put their source's text in their own message, which `{:#}`
/// then prints twice.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.is_empty() && out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The exit status of a binary: success, or the error logged with its causes.
pub fn exit(what: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = describe(&e), "{what} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod describe_tests {
    use super::describe;

    /// An error that prints its source's text as its own, as redis-rs does.
    #[derive(Debug)]
    struct Echo(std::io::Error);

    impl std::fmt::Display for Echo {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for Echo {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_message_already_says_is_printed_once() {
        let io = std::io::Error::other("invalid peer certificate: BadSignature");
        let e = anyhow::Error::new(Echo(io))
            .context("cannot connect to Redis at rediss://r (--redis-url)");
        assert_eq!(
            format!("{e:#}"),
            "cannot connect to Redis at rediss://r (--redis-url): invalid peer certificate: BadSignature: invalid peer certificate: BadSignature"
        );
        assert_eq!(
            describe(&e),
            "cannot connect to Redis at rediss://r (--redis-url): invalid peer certificate: BadSignature"
        );
    }

    #[test]
    fn distinct_causes_are_all_printed() {
        let e = anyhow::anyhow!("connection refused")
            .context("cannot connect to RabbitMQ")
            .context("the worker cannot start");
        assert_eq!(describe(&e), format!("{e:#}"));
        assert_eq!(
            describe(&e),
            "the worker cannot start: cannot connect to RabbitMQ: connection refused"
        );
    }
}
