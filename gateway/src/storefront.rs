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

/// The page's Content-Security-Policy: its own script and style only, by
/// their SHA-256 (no other inline code runs, even injected), requests to
/// this gateway only, and no page may frame it.
pub fn content_security_policy(page: &[u8]) -> String {
    let text = String::from_utf8_lossy(page);
    let hash = |open: &str, close: &str| {
        use base64::Engine as _;
        use sha2::{Digest, Sha256};
        let start = text.find(open).map_or(0, |i| i + open.len());
        let end = text[start..].find(close).map_or(start, |i| start + i);
        let digest = Sha256::digest(text[start..end].as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    format!(
        "default-src 'none'; connect-src 'self'; script-src {}; style-src {}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    )
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
            (header::CONTENT_SECURITY_POLICY, s.storefront_csp.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        s.storefront.clone(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_script_and_style_and_nothing_inline_else() {
        let page = render(None);
        let csp = content_security_policy(&page);
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        let text = String::from_utf8_lossy(&page);
        assert_eq!(
            text.matches("<script").count(),
            1,
            "one script, the hashed one"
        );
        assert_eq!(
            text.matches("<style").count(),
            1,
            "one style, the hashed one"
        );
        assert!(
            !text.contains(" style=\""),
            "an inline style attribute would be blocked"
        );
        assert!(
            !text.contains(" onclick="),
            "an inline handler would be blocked"
        );
    }
}
