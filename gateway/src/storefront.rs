//! `GET /sales/{namespace}/{name}`: the storefront page of a sale — one
//! self-contained HTML file (no build step), live counter over SSE,
//! countdown to opening, a Buy button with an idempotency key, and clear
//! outcome messages. It talks only to the API of the gateway serving it.

use crate::api::AppState;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const PAGE: &str = include_str!("storefront.html");

/// The page as this gateway serves it, rendered once at start: it leaves
/// the buyer's name out where a proxy signs buyers in (`user_header`).
pub fn render(user_header: Option<&axum::http::HeaderName>) -> bytes::Bytes {
    let signed_in = user_header.map_or("", |h| h.as_str());
    PAGE.replacen(
        "data-user-header=\"\"",
        &format!("data-user-header=\"{signed_in}\""),
        1,
    )
    .into()
}

pub async fn page(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.sales
        .get(&ns, &name)
        .ok_or_else(|| ApiError::unknown_sale(&format!("{ns}/{name}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        s.storefront.clone(),
    )
        .into_response())
}
