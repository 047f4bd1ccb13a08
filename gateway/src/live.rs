//! Live stock over Server-Sent Events. Each gateway process reads each sale
//! once per `--stock-poll-ms` (plus pub/sub for restocks) and fans the
//! snapshot out to every client through a watch channel: the number of
//! clients costs Redis nothing. A client gets the current state at once,
//! then at most one update per `MIN_GAP`, and a heartbeat comment every
//! 15 s so proxies keep the stream open.

use crate::api::AppState;
use crate::error::ApiError;
use crate::sales::LivePush;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Shortest gap between two updates to one client.
pub const MIN_GAP: Duration = Duration::from_millis(250);

fn event(live: &LivePush) -> Event {
    Event::default().event("stock").data(&live.json)
}

/// Counts a client while its stream lives.
struct Connected(Arc<crate::metrics::GatewayMetrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}

struct Client {
    rx: watch::Receiver<Option<Arc<LivePush>>>,
    shutdown: tokio_util::sync::CancellationToken,
    first: bool,
    _guard: Connected,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// `GET /api/v1/sales/{namespace}/{name}/events`
pub async fn sale_events(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let view = s
        .sales
        .get(&ns, &name)
        .ok_or_else(|| ApiError::unknown_sale(&format!("{ns}/{name}")))?;
    let slot = Arc::clone(&s.streams).try_acquire_owned().map_err(|_| {
        s.metrics.refused_streams.inc();
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this gateway serves as many live-stock streams as it may; retry, or read the sale's stock",
        )
        .retry_after(5)
    })?;
    s.metrics.sse_clients.inc();
    let client = Client {
        rx: view.subscribe(),
        shutdown: s.shutdown.clone(),
        first: true,
        _guard: Connected(Arc::clone(&s.metrics)),
        _slot: slot,
    };
    let stream = futures::stream::unfold(client, |c| async move {
        let shutdown = c.shutdown.clone();
        tokio::select! {
            next = next_update(c) => next,
            () = shutdown.cancelled() => None,
        }
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

async fn next_update(mut c: Client) -> Option<(Result<Event, Infallible>, Client)> {
    {
        if !c.first {
            tokio::time::sleep(MIN_GAP).await;
        }
        loop {
            if c.first {
                c.first = false;
                let current = c.rx.borrow_and_update().clone();
                if let Some(live) = current {
                    return Some((Ok(event(&live)), c));
                }
            }
            if c.rx.changed().await.is_err() {
                return None;
            }
            let current = c.rx.borrow_and_update().clone();
            if let Some(live) = current {
                return Some((Ok(event(&live)), c));
            }
        }
    }
}
