//! Command-line and environment configuration shared by every binary. Each
//! flag has an environment twin and a default that works on a developer
//! machine with the services on 127.0.0.1.

use crate::SaleRef;
use crate::amqp::QueueType;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis holding stock, holds and idempotency keys.
    // URLs may carry passwords: `--help` does not print the environment's.
    #[arg(
        long,
        env = "REDIS_URL",
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
        env = "AMQP_URL",
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
        env = "DATABASE_URL",
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
