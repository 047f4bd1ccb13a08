//! Command-line and environment configuration shared by every binary. Each
//! flag has an environment twin and a default that works on a developer
//! machine with the services on 127.0.0.1.

use crate::SaleRef;
use crate::amqp::QueueType;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis holding stock, holds and idempotency keys: a server, any node
    /// of a Redis Cluster, or the sentinels of a replicated Redis as
    /// redis+sentinel://[:password@]host:26379[,host:26379]/<master set>.
    /// rediss:// and rediss+sentinel:// speak TLS (see --tls-ca-file).
    // URLs may carry passwords: `--help` does not print the environment's.
    #[arg(
        long,
        env = crate::backend_keys::REDIS_URL,
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ carrying accepted orders to the workers.
    #[arg(
        long,
        env = crate::backend_keys::AMQP_URL,
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Type of the per-sale queues; every gateway and worker of a sale must agree.
    #[arg(long, env = "QUEUE_TYPE", value_enum, default_value = "quorum")]
    pub queue_type: QueueType,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL holding the orders ledger (table `orders`); created if missing.
    #[arg(
        long,
        env = crate::backend_keys::DATABASE_URL,
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/flashsale"
    )]
    pub database_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct SaleArgs {
    /// A sale this process serves, as <namespace>/<name>; repeat for several
    /// (env: comma-separated).
    #[arg(long = "sale", env = "SALES", value_delimiter = ',', required = true)]
    pub sales: Vec<SaleRef>,
}

/// A data store URL fit for a log line or an error message: its password,
/// if any, replaced by `***`. A string that is not a URL is not shown.
pub fn redacted(url: &str) -> String {
    if crate::sentinel_url::is_sentinel_url(url) {
        return redacted_sentinel(url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only URLs that cannot have a password refuse one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// A `redis+sentinel://` URL (a list of hosts, which `url` does not parse)
/// with the password in front of the hosts and `sentinel_password` hidden.
fn redacted_sentinel(url: &str) -> String {
    let Some(parts) = crate::sentinel_url::Parts::of(url) else {
        return "(not a URL)".to_owned();
    };
    let mut shown = format!("{}://", parts.scheme);
    if let Some(userinfo) = parts.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => shown.push_str(&format!("{user}:***@")),
            None => shown.push_str(&format!("{userinfo}@")),
        }
    }
    shown.push_str(parts.hosts);
    if let Some(path) = parts.path {
        shown.push_str(&format!("/{path}"));
    }
    if let Some(query) = parts.query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.contains("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push_str(&format!("?{}", pairs.join("&")));
    }
    shown
}

/// Shortest token that confirms paid orders.
pub const CONFIRM_TOKEN_MIN: usize = 16;

/// Checks a token that confirms paid orders: blank means none (returned
/// empty); otherwise at least [`CONFIRM_TOKEN_MIN`] visible ASCII
/// characters, which an `Authorization` header can carry as they are. The
/// error never repeats the token.
pub fn confirm_token(text: &str) -> Result<String, String> {
    let token = text.trim();
    if token.is_empty() {
        return Ok(String::new());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a confirm token takes visible ASCII characters only, no spaces (e.g. the output of `openssl rand -hex 24`)"
                .to_owned(),
        );
    }
    if token.len() < CONFIRM_TOKEN_MIN || token.len() > 4096 {
        return Err(format!(
            "a confirm token takes {CONFIRM_TOKEN_MIN} to 4096 characters, this one has {} (e.g. the output of `openssl rand -hex 24`)",
            token.len()
        ));
    }
    Ok(token.to_owned())
}

/// Parses `--confirm-token` with [`confirm_token`]. Unlike clap's own
/// parsers, its error does not repeat the value, which is a secret.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmTokenParser;

impl clap::builder::TypedValueParser for ConfirmTokenParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let name = arg.map(ToString::to_string).unwrap_or_default();
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{name}': {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("not UTF-8".to_owned()))?;
        confirm_token(text).map_err(refuse)
    }
}

#[cfg(test)]
mod tests {
    use super::{confirm_token, redacted};

    #[test]
    fn confirm_tokens_are_long_visible_and_never_echoed() {
        assert_eq!(confirm_token("  ").as_deref(), Ok(""));
        assert_eq!(
            confirm_token(" 0123456789abcdef\n").as_deref(),
            Ok("0123456789abcdef")
        );
        for bad in ["short-s3cret", "0123456789 abcdef", "0123456789abcdefé"] {
            let err = confirm_token(bad).expect_err(bad);
            assert!(!err.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        for (url, shown) in [
            ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
            (
                "amqp://user:s3cret@rabbitmq:5672/%2f",
                "amqp://user:***@rabbitmq:5672/%2f",
            ),
            (
                "postgres://app:s3cret@db/flashsale?sslmode=verify-full",
                "postgres://app:***@db/flashsale?sslmode=verify-full",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis+sentinel://app:s3cret@s1,s2:26380/fs/1?sentinel_password=s3cret",
                "redis+sentinel://app:***@s1,s2:26380/fs/1?sentinel_password=***",
            ),
            ("rediss+sentinel://s1/fs", "rediss+sentinel://s1/fs"),
            ("not a url s3cret", "(not a URL)"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }
}
