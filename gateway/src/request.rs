//! Parsing and checking a purchase request. Every refusal names the field.

use crate::error::ApiError;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use serde::Deserialize;

pub const MAX_USER_LEN: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub user: String,
    pub quantity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    user: Option<String>,
    quantity: u32,
}

/// The name between the first pair of backticks in a serde message.
fn quoted_name(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_owned())
}

/// Parses a purchase request. `signed_in` is the buyer a trusted proxy
/// named in the `--user-header` header (checked by [`signed_in_user`]):
/// then the body's `user` may be left out, and if given must be the same.
pub fn parse_order(bytes: &[u8], signed_in: Option<&str>) -> Result<OrderRequest, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is empty; send {\"user\": \"...\", \"quantity\": 1}",
        )
        .field("body"));
    }
    // serde would take a JSON array for a struct; only an object is a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "the body must be a JSON object {\"user\": \"...\", \"quantity\": 1}",
                ),
                Err(e) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {e}"),
                ),
            }
            .field("body"),
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let body: Body = match serde_path_to_error::deserialize(&mut de) {
        Ok(b) => {
            if let Err(e) = de.end() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {e}"),
                )
                .field("body"));
            }
            b
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            let field = if path != "." && path != "?" && !path.is_empty() {
                path
            } else if msg.starts_with("missing field") || msg.starts_with("unknown field") {
                quoted_name(&msg).unwrap_or_else(|| "body".into())
            } else {
                "body".into()
            };
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", msg)
                        .field(field)
                }
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {msg}"),
                )
                .field(field),
            });
        }
    };
    let user = match (body.user, signed_in) {
        (Some(user), None) => buyer(&user).map_err(|msg| invalid("user", msg))?,
        (None, None) => return Err(invalid("user", "missing field `user`")),
        (None, Some(signed)) => signed.to_owned(),
        (Some(user), Some(signed)) if buyer(&user).is_ok_and(|u| u == signed) => signed.to_owned(),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "user",
                "user must be the signed-in buyer, or left out",
            ));
        }
    };
    if body.quantity == 0 {
        return Err(invalid("quantity", "quantity must be at least 1"));
    }
    Ok(OrderRequest {
        user,
        quantity: body.quantity,
    })
}

/// The buyer a name stands for, the same however it is written: trimmed,
/// Unicode NFKC (full-width and compatibility forms folded) and lower-cased,
/// so that `Eve`, ` eve` and `ｅｖｅ` are one buyer for the per-user limit.
/// Refused: empty names, names over 128 characters, control and invisible
/// (format) characters such as a zero-width space, and names that mix
/// Latin letters with Greek or Cyrillic ones (`еve` with a Cyrillic `е`).
pub fn buyer(name: &str) -> Result<String, String> {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = name.trim().nfkc().collect::<String>().to_lowercase();
    let folded = folded.trim().to_owned();
    if folded.is_empty() {
        return Err("user must not be empty".to_owned());
    }
    if folded.chars().count() > MAX_USER_LEN {
        return Err(format!("user must be at most {MAX_USER_LEN} characters"));
    }
    if folded.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err("user must not contain control or invisible characters".to_owned());
    }
    let alphabets = [is_latin, is_greek, is_cyrillic]
        .iter()
        .filter(|alphabet| folded.chars().any(**alphabet))
        .count();
    if alphabets > 1 {
        return Err("user must not mix Latin, Greek and Cyrillic letters".to_owned());
    }
    Ok(folded)
}

/// Format characters (Unicode category Cf) that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{E0000}'..='\u{E0FFF}')
}

fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic() || ('\u{00C0}'..='\u{024F}').contains(&c) && c.is_alphabetic()
}

fn is_greek(c: char) -> bool {
    ('\u{0370}'..='\u{03FF}').contains(&c) || ('\u{1F00}'..='\u{1FFF}').contains(&c)
}

fn is_cyrillic(c: char) -> bool {
    ('\u{0400}'..='\u{052F}').contains(&c)
}

/// A request that says its body is JSON: `415` otherwise. A cross-site
/// HTML form cannot send `application/json` without a CORS preflight.
pub fn json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )
    .field("Content-Type"))
}

fn invalid(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", msg).field(field)
}

/// The buyer a trusted proxy in front of the gateway signed in, from the
/// header `name` (`--user-header`): 1 to 128 visible ASCII characters. A
/// request without it was not authenticated: `401`.
pub fn signed_in_user(headers: &HeaderMap, name: &HeaderName) -> Result<String, ApiError> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        if headers.contains_key(name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("{name} must be given once: a request naming two buyers is refused"),
            )
            .field(name.as_str()));
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("sign in first: the {name} header names the buyer"),
        )
        .field(name.as_str()));
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_USER_LEN)
        .and_then(|v| buyer(v).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("{name} must be 1 to {MAX_USER_LEN} visible ASCII characters"),
            )
            .field(name.as_str())
        })
}

/// The optional `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        )
        .field("Idempotency-Key")
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_LEN || !s.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &[u8]) -> ApiError {
        parse_order(body, None).expect_err("refused")
    }

    #[test]
    fn accepts_a_good_body() {
        assert_eq!(
            parse_order(br#"{"user":"ann","quantity":2}"#, None),
            Ok(OrderRequest {
                user: "ann".into(),
                quantity: 2
            })
        );
    }

    #[test]
    fn a_signed_in_buyer_is_the_user() {
        let ann = |body: &[u8]| parse_order(body, Some("ann")).map(|r| r.user);
        assert_eq!(ann(br#"{"quantity":1}"#), Ok("ann".to_owned()));
        assert_eq!(ann(br#"{"user":"ann","quantity":1}"#), Ok("ann".to_owned()));
        let other = ann(br#"{"user":"bob","quantity":1}"#).expect_err("another user");
        assert_eq!(
            (other.status, other.field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("user"))
        );
        let missing = parse_order(br#"{"quantity":1}"#, None).expect_err("no user at all");
        assert_eq!(missing.field.as_deref(), Some("user"));

        let name = HeaderName::from_static("x-authenticated-user");
        let mut headers = HeaderMap::new();
        let none = signed_in_user(&headers, &name).expect_err("not signed in");
        assert_eq!(
            (none.status, none.field.as_deref()),
            (StatusCode::UNAUTHORIZED, Some("x-authenticated-user"))
        );
        for bad in ["", "   ", &"a".repeat(MAX_USER_LEN + 1)] {
            headers.insert(&name, bad.parse().expect("header value"));
            let err = signed_in_user(&headers, &name).expect_err(bad);
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        headers.insert(&name, " Ann ".parse().expect("header value"));
        assert_eq!(signed_in_user(&headers, &name).ok().as_deref(), Some("ann"));
        // A request naming two buyers is refused, not read as the first.
        headers.append(&name, "bob".parse().expect("header value"));
        let twice = signed_in_user(&headers, &name).expect_err("two buyers");
        assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_buyer_is_one_buyer_however_written() {
        for same in ["eve", "Eve", " eve", "EVE ", "ｅｖｅ", "\u{0045}ve"] {
            assert_eq!(buyer(same).as_deref(), Ok("eve"), "{same:?}");
        }
        for refused in [
            "e\u{200B}ve", // zero-width space
            "\u{0435}ve",  // Cyrillic е among Latin letters
            "ev\u{03B5}",  // Greek ε among Latin letters
            "\u{FEFF}eve", // byte order mark
            "   ",
            "e\u{0007}ve",
        ] {
            assert!(buyer(refused).is_err(), "{refused:?}");
        }
        // One alphabet, whichever: a buyer of their own.
        assert_eq!(buyer("Ева").as_deref(), Ok("ева"));
        assert_eq!(buyer("Zoë").as_deref(), Ok("zoë"));
    }

    #[test]
    fn only_a_json_body_is_taken() {
        let mut h = HeaderMap::new();
        assert_eq!(
            json_content(&h).map_err(|e| e.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            h.insert("content-type", refused.parse().expect("header"));
            assert!(json_content(&h).is_err(), "{refused}");
        }
        for taken in ["application/json", "Application/JSON; charset=utf-8"] {
            h.insert("content-type", taken.parse().expect("header"));
            assert!(json_content(&h).is_ok(), "{taken}");
        }
    }

    #[test]
    fn names_the_field() {
        let cases: &[(&[u8], StatusCode, &str)] = &[
            (
                br#"{"quantity":1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "user",
            ),
            (
                br#"{"user":"a"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"a","quantity":1,"x":1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "x",
            ),
            (
                br#"{"user":1,"quantity":1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "user",
            ),
            (
                br#"{"user":"a","quantity":"1"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"a","quantity":-1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"a","quantity":4294967296}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"a","quantity":1.5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"a","quantity":0}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "quantity",
            ),
            (
                br#"{"user":"  ","quantity":1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "user",
            ),
            (br#"[1]"#, StatusCode::UNPROCESSABLE_ENTITY, "body"),
            (br#"["a", 1]"#, StatusCode::UNPROCESSABLE_ENTITY, "body"),
            (br#"nope"#, StatusCode::BAD_REQUEST, "body"),
            (
                br#"{"user":"a","quantity":1"#,
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (
                br#"{"user":"a","quantity":1} x"#,
                StatusCode::BAD_REQUEST,
                "body",
            ),
            (b"", StatusCode::BAD_REQUEST, "body"),
            (
                b"{\"user\":\"\xff\xfe\",\"quantity\":1}",
                StatusCode::BAD_REQUEST,
                "user",
            ),
        ];
        for (body, status, field) in cases {
            let e = err(body);
            assert_eq!(e.status, *status, "{}", String::from_utf8_lossy(body));
            assert_eq!(
                e.field.as_deref(),
                Some(*field),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }

    #[test]
    fn idempotency_key_is_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h), Ok(None));
        h.insert("idempotency-key", "abc-123".parse().expect("header"));
        assert_eq!(idempotency_key(&h), Ok(Some("abc-123".into())));
        h.insert("idempotency-key", "a b".parse().expect("header"));
        assert!(idempotency_key(&h).is_err());
    }
}
