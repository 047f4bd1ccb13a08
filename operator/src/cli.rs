//! The command line of `flashsale-operator`: its subcommands and their
//! flags. Kept in the library so that tests can read every flag, the
//! hidden ones too.

use crate::backends::BackendUrls;
use clap::{Args, Parser, Subcommand};
use flashsale_common::config::{AmqpArgs, DatabaseArgs, LogArgs, RedisArgs, SaleArgs};
use flashsale_common::tls::TlsArgs;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    name = "flashsale-operator",
    version,
    about = "FlashSale operator: runs FlashSale custom resources as flash sales",
    long_about = "FlashSale operator: runs FlashSale custom resources as flash sales.\n\n\
        `run` reconciles FlashSales in a cluster (in-cluster config or KUBECONFIG), `local` runs \
        the sales of manifest files without a cluster, `crd` prints \
        the CustomResourceDefinition, `seed` creates or restocks sales in Redis from manifest \
        files, `redrive` moves sales' dead letters back to their orders queues. Every flag has an environment variable twin; RUST_LOG sets the log filter."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Reconcile FlashSales in the cluster until SIGTERM.
    Run(Box<RunArgs>),
    /// Run the sales of manifest files without a cluster: gateway and
    /// worker as local processes, the status printed, until every sale
    /// ended or SIGTERM.
    Local(Box<LocalArgs>),
    /// Print the FlashSale CustomResourceDefinition as YAML.
    Crd,
    /// Create or restock the sales of a manifest in Redis (idempotent).
    Seed(Box<SeedArgs>),
    /// Move the messages of sales' dead-letter queues back to their orders
    /// queues, once what made the workers refuse them is fixed.
    Redrive(Box<RedriveArgs>),
    /// Check a lottery's draw: recompute the order from the revealed seed
    /// and the stored tickets, and compare it with the order admitted.
    VerifyLottery(Box<VerifyLotteryArgs>),
}

#[derive(Args)]
#[command(long_about = "Check a lottery's draw.\n\n\
        Before a lottery's line opens the operator writes the SHA-256 of a random seed into the \
        sale's status (status.lottery.commitment); after the draw it reveals the seed \
        (status.lottery.seed). The drawn order is a pure function of the seed and the tickets: \
        each ticket's lot is HMAC-SHA256(seed, ticket id), smallest first. This recomputes it from \
        the seed and the tickets Redis holds, checks it against the order the sale admits, and \
        with --commitment that the seed is the one committed to. Exit status 0: they match.")]
pub struct VerifyLotteryArgs {
    /// The sale, as namespace/name.
    #[arg(long)]
    pub sale: flashsale_common::SaleRef,
    /// The revealed seed (hex), from status.lottery.seed.
    #[arg(long)]
    pub seed: String,
    /// The commitment (hex) published before the line opened, from
    /// status.lottery.commitment.
    #[arg(long)]
    pub commitment: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args)]
#[command(
    long_about = "Move the messages of sales' dead-letter queues back to their orders queues.\n\n\
        A worker moves a message it can never store to the sale's dead-letter queue \
        (flashsale.<ns>.<name>.dead), with the reason in its x-flashsale-reason header. Once the \
        cause is fixed (a worker that reads a newer message version, a constraint dropped from \
        the ledger), redrive puts the messages back for the sale's workers to store: each \
        leaves the dead-letter queue only after RabbitMQ confirmed it on the orders queue, and \
        the workers store an order once whatever the copies. A message that fails again comes \
        back to the dead-letter queue and is not moved twice in one run."
)]
pub struct RedriveArgs {
    #[command(flatten)]
    pub sales: SaleArgs,
    /// Move at most this many messages of each sale (default: all that the
    /// dead-letter queue holds when the move starts).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args)]
pub struct SeedArgs {
    /// Manifest file with one or more FlashSale documents ("-" for stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// Namespace for sales whose metadata has none.
    #[arg(short = 'n', long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What both executors hand to every sale's gateways and connect to.
#[derive(Args)]
pub struct StoreArgs {
    /// Token the payment service presents to confirm paid orders, handed
    /// to every sale's gateways (a sale's own Secret may give another as
    /// CONFIRM_TOKEN). Without it, anyone who knows an order id may
    /// confirm its hold.
    #[arg(long, env = flashsale_common::backend_keys::CONFIRM_TOKEN, hide_env_values = true,
          value_parser = flashsale_common::config::ConfirmTokenParser)]
    pub confirm_token: Option<String>,
    /// Redis replicas that must acknowledge each reservation before the
    /// gateways publish its order and answer 202, handed to every sale's
    /// gateways (a sale's own Secret may give another as
    /// REDIS_WAIT_REPLICAS). 0: no wait.
    #[arg(long, env = flashsale_common::backend_keys::REDIS_WAIT_REPLICAS, default_value_t = 0)]
    pub redis_wait_replicas: u32,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl StoreArgs {
    pub fn urls(&self, tls: &flashsale_common::tls::Tls) -> BackendUrls {
        BackendUrls::with_tls(
            self.redis.redis_url.clone(),
            self.amqp.amqp_url.clone(),
            self.database.database_url.clone(),
            tls,
        )
        .with_confirm_token(self.confirm_token.clone())
        .with_redis_wait_replicas(self.redis_wait_replicas)
    }
}

#[derive(Args)]
pub struct LocalArgs {
    /// Manifest file(s) with FlashSale documents.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Namespace for sales whose metadata has none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,
    /// Where the worker serves /metrics.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub worker_listen: SocketAddr,
    /// Directory for the gateway's and worker's logs.
    #[arg(long, default_value = "flashsale-local-logs")]
    pub log_dir: std::path::PathBuf,
    /// Keep running after every sale ended, until stopped. With
    /// --delete-on-exit as well, stopping it deletes the sales.
    #[arg(long)]
    pub keep: bool,
    /// When stopped (SIGTERM, Ctrl-C) or once every sale ended (unless
    /// --keep), delete the sales as `kubectl delete` would: close them, let
    /// the worker store every order, then remove their queues and Redis
    /// keys (orders stay in PostgreSQL). Waits at most 60 s; stop it again
    /// to leave at once.
    #[arg(long)]
    pub delete_on_exit: bool,
    #[command(flatten)]
    pub stores: StoreArgs,
}

#[derive(Args)]
pub struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all
    /// namespaces); the operator needs rights in those alone.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub watch_namespace: Vec<String>,
    /// Image of gateway and worker pods unless a FlashSale overrides it.
    #[arg(long, env = "FLASHSALE_IMAGE", default_value = concat!("localhost/flashsale:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Other images a FlashSale may name for its pods (comma-separated;
    /// a trailing `*` allows a prefix). Its pods get the stores' passwords:
    /// any other image makes the sale Invalid.
    #[arg(long, env = "FLASHSALE_ALLOWED_IMAGES", value_delimiter = ',')]
    pub allowed_images: Vec<String>,
    /// A NetworkPolicy for each sale's pods, as JSON: {"gatewayFrom":
    /// [peers that may send buyers' requests], "metricsFrom": [peers that
    /// may scrape metrics; any when empty]}, peers as in a NetworkPolicy.
    #[arg(long, env = "FLASHSALE_SALE_NETWORK_POLICY", value_parser = sale_network_policy)]
    pub sale_network_policy: Option<crate::workloads::SaleNetworkPolicy>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Elect a leader through a Lease (needed with more than one replica).
    #[arg(long, env = "LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "LEASE_NAME",
        hide = true,
        default_value = "flashsale-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub lease_namespace: Option<String>,
    /// Seconds a lease is valid without renewal.
    #[arg(long, env = "LEASE_SECONDS", hide = true, default_value_t = 15)]
    pub lease_seconds: u64,
    /// This replica's identity in the lease.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub identity: Option<String>,
    #[command(flatten)]
    pub stores: StoreArgs,
}

fn sale_network_policy(text: &str) -> Result<crate::workloads::SaleNetworkPolicy, String> {
    serde_json::from_str(text).map_err(|e| format!("not a sale network policy: {e}"))
}
