//! The parts of a `redis+sentinel://` URL, as written: what redaction
//! needs here and what the Sentinel client in `flashsale-store` parses.

/// True for a `redis+sentinel://` or `rediss+sentinel://` URL.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

/// A sentinel URL cut into its parts as written, before any decoding.
pub struct Parts<'a> {
    pub scheme: &'a str,
    pub userinfo: Option<&'a str>,
    /// The comma-separated `host[:port]` list.
    pub hosts: &'a str,
    /// What follows the first `/` after the hosts, if there is one.
    pub path: Option<&'a str>,
    pub query: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// `None` unless the scheme is `redis+sentinel` or `rediss+sentinel`.
    pub fn of(url: &'a str) -> Option<Parts<'a>> {
        if !is_sentinel_url(url) {
            return None;
        }
        let (scheme, rest) = url.split_once("://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        Some(Parts {
            scheme,
            userinfo,
            hosts,
            path,
            query,
        })
    }
}
