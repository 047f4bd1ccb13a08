//! Test harness: each test gets its own sale (fresh name, so its own Redis
//! keys and RabbitMQ queues) and its own PostgreSQL database, runs a real
//! gateway and worker in-process against the real servers, and removes
//! everything it created when done, whether it passed or failed.

pub mod proxy;
pub mod redis_server;
pub mod sentinel;
pub mod tlsproxy;

use clap::Parser;
use flashsale_common::SaleRef;
use flashsale_common::amqp;
use flashsale_gateway::Gateway;
use flashsale_store::redisconn::RedisConn;
use flashsale_store::stock::{self, SeedConfig, SeedReport};
use flashsale_worker::Worker;
use lapin::options::QueueDeleteOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};

/// The repository's root, read at run time from `CARGO_MANIFEST_DIR` (which
/// cargo and nextest set for every test process) rather than fixed when the
/// test was compiled: checkouts that share one cargo target directory (as
/// `scripts/test` arranges) reuse each other's test binaries, and a path
/// fixed at compile time would then point at another checkout, or a
/// deleted one.
pub fn repo_root() -> std::path::PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    // Every package of the workspace sits one level below its root.
    package.join("..")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
/// A Redis Cluster node (scripts/services starts a cluster of three).
pub fn redis_cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL").unwrap_or_else(|_| "redis://127.0.0.1:7101".into())
}
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}
/// The server to create per-test databases on (any database on it).
pub fn pg_admin_url() -> String {
    std::env::var("PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub use flashsale_common::now_ms;

/// An open sale: started an hour ago, ends in an hour, no hold, no rate limit.
pub fn open_sale(stock: i64, per_user: u32, per_order: u32) -> SeedConfig {
    SeedConfig {
        stock,
        start_ms: now_ms() - 3_600_000,
        end_ms: now_ms() + 3_600_000,
        paused: false,
        per_user,
        per_order,
        hold_ms: 0,
        rate_per_second: 0,
        burst: 0,
        product: stock::ProductInfo {
            sku: "TEST-1".into(),
            name: "Test product".into(),
            price: "9.99".into(),
            currency: "EUR".into(),
        },
        admission: stock::AdmissionConfig::open(now_ms() - 3_600_000),
    }
}

pub struct Env {
    pub sale: SaleRef,
    pub db_name: String,
    pub db_url: String,
    /// The Redis (or Redis Cluster node) the sale lives on.
    pub redis_url: String,
    pub redis: RedisConn,
    /// The TLS settings the sale's Redis takes.
    pub tls: std::sync::Arc<flashsale_common::tls::Tls>,
    pub pool: PgPool,
    /// Set by `cleanup`; otherwise dropping the `Env` (a failed assertion,
    /// an early `?`) removes what it created.
    removed: bool,
}

impl Env {
    pub async fn new(prefix: &str) -> anyhow::Result<Env> {
        Env::on_redis(prefix, &redis_url()).await
    }

    /// [`Env::new`] with the sale on the Redis at `redis_url`.
    pub async fn on_redis(prefix: &str, redis_url: &str) -> anyhow::Result<Env> {
        Env::on_redis_with_tls(prefix, redis_url, Default::default()).await
    }

    /// [`Env::on_redis`], connecting to Redis with the TLS settings `tls`.
    pub async fn on_redis_with_tls(
        prefix: &str,
        redis_url: &str,
        tls: std::sync::Arc<flashsale_common::tls::Tls>,
    ) -> anyhow::Result<Env> {
        // Redis first: a failure then leaves no database behind.
        let redis = flashsale_store::redisconn::connect(redis_url, &tls).await?;
        let id = short_id();
        let sale = SaleRef::new("e2e", &format!("{prefix}-{id}"))?;
        let db_name = format!("fs_e2e_{id}");
        let admin = pg_admin_url();
        let db_url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db_name}"),
            None => anyhow::bail!("PG_ADMIN_URL has no database part"),
        };
        let mut conn = PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = match flashsale_common::db::connect_and_migrate(&db_url, 4, &Default::default())
            .await
        {
            Ok(pool) => pool,
            Err(e) => {
                // No `Env` owns the database yet: drop it here, or it stays.
                let dropped = bounded("dropping the test's database", drop_database(&db_name))
                    .await
                    .and_then(|r| r.map_err(anyhow::Error::from));
                if let Err(drop) = dropped {
                    eprintln!("test database {db_name} left behind: {drop:#}");
                }
                return Err(e);
            }
        };
        Ok(Env {
            sale,
            db_name,
            db_url,
            redis_url: redis_url.to_owned(),
            tls,
            redis,
            pool,
            removed: false,
        })
    }

    pub async fn seed(&self, cfg: &SeedConfig) -> anyhow::Result<SeedReport> {
        let mut conn = self.redis.clone();
        Ok(stock::seed(&mut conn, &self.sale, cfg, stock::SeedMode::CreateOrUpdate).await?)
    }

    pub async fn snapshot(&self) -> anyhow::Result<stock::StockSnapshot> {
        let mut conn = self.redis.clone();
        stock::read(&mut conn, &self.sale)
            .await?
            .ok_or_else(|| anyhow::anyhow!("sale {} not in Redis", self.sale))
    }

    /// The flags that point a gateway at this sale and its stores.
    pub fn gateway_args(&self) -> Vec<String> {
        [
            "--sale",
            &self.sale.to_string(),
            "--redis-url",
            &self.redis_url,
            "--amqp-url",
            &amqp_url(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Gateway flags for this sale, plus `extra`.
    pub fn gateway_config(&self, extra: &[&str]) -> flashsale_gateway::Config {
        let mut args = vec!["flashsale-gateway".to_owned()];
        args.extend(self.gateway_args());
        args.extend(["--listen", "127.0.0.1:0"].map(str::to_owned));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        flashsale_gateway::Config::parse_from(args)
    }

    pub fn worker_config(&self, extra: &[&str]) -> flashsale_worker::Config {
        let sale = self.sale.to_string();
        let amqp = amqp_url();
        let mut args = vec![
            "flashsale-worker",
            "--sale",
            &sale,
            "--amqp-url",
            &amqp,
            "--database-url",
            &self.db_url,
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        flashsale_worker::Config::parse_from(args)
    }

    pub async fn gateway(&self, extra: &[&str]) -> anyhow::Result<Gateway> {
        Gateway::start(self.gateway_config(extra)).await
    }

    pub async fn worker(&self, extra: &[&str]) -> anyhow::Result<Worker> {
        Worker::start(self.worker_config(extra)).await
    }

    pub fn orders_url(&self, gw: &Gateway) -> String {
        format!(
            "{}/api/v1/sales/{}/{}/orders",
            gw.url(),
            self.sale.namespace,
            self.sale.name
        )
    }

    pub fn sale_url(&self, gw: &Gateway) -> String {
        format!(
            "{}/api/v1/sales/{}/{}",
            gw.url(),
            self.sale.namespace,
            self.sale.name
        )
    }

    /// Order rows of this sale in PostgreSQL.
    pub async fn persisted_orders(&self) -> anyhow::Result<i64> {
        Ok(flashsale_common::db::ledger_counts(&self.pool, &self.sale)
            .await?
            .orders)
    }

    /// The ids of this sale's order rows in PostgreSQL.
    pub async fn stored_order_ids(&self) -> anyhow::Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT order_id::text FROM orders WHERE sale_namespace = $1 AND sale_name = $2",
        )
        .bind(&self.sale.namespace)
        .bind(&self.sale.name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Members of this sale's outbox: orders not yet confirmed by RabbitMQ.
    pub async fn outbox_len(&self) -> anyhow::Result<i64> {
        let mut conn = self.redis.clone();
        Ok(redis::cmd("ZCARD")
            .arg(flashsale_store::keys::SaleKeys::new(&self.sale).outbox())
            .query_async(&mut conn)
            .await?)
    }

    /// Waits until `n` orders are stored, failing with what was seen after `limit`.
    pub async fn wait_persisted(&self, n: i64, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let got = self.persisted_orders().await?;
            if got >= n {
                return Ok(());
            }
            if started.elapsed() > limit {
                anyhow::bail!("only {got} of {n} orders reached PostgreSQL within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this sale's orders in PostgreSQL satisfy `done`.
    pub async fn wait_ledger(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&flashsale_common::db::LedgerCounts) -> bool,
    ) -> anyhow::Result<()> {
        eventually(what, limit, || async {
            Ok(done(
                &flashsale_common::db::ledger_counts(&self.pool, &self.sale).await?,
            ))
        })
        .await
    }

    /// Messages in a queue of this sale; an error when it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        queue_messages(queue)
            .await?
            .ok_or_else(|| anyhow::anyhow!("RabbitMQ has no queue {queue}"))
    }

    /// Removes the sale's Redis keys, its queues and the test database.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.removed = true;
        let pool = bounded("closing the test's PostgreSQL pool", self.pool.close()).await;
        let mut conn = self.redis.clone();
        remove(&mut conn, &self.sale, &self.db_name).await?;
        pool
    }
}

impl Drop for Env {
    /// A test that failed before `cleanup` still removes its sale, queues and
    /// database: on a thread and runtime of their own, since the test's
    /// runtime may be unwinding, and within a bounded time.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (sale, db_name, url, tls) = (
            self.sale.clone(),
            self.db_name.clone(),
            self.redis_url.clone(),
            std::sync::Arc::clone(&self.tls),
        );
        let removal = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), async {
                    let mut conn = flashsale_store::redisconn::connect(&url, &tls).await?;
                    remove(&mut conn, &sale, &db_name).await
                })
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))?
            })
        });
        if let Ok(Err(e)) = removal.join() {
            eprintln!("could not remove test sale {}: {e:#}", self.sale);
        }
    }
}

/// Deletes a test sale's Redis keys and queues, and drops its database;
/// each step is tried even when one before it failed.
async fn remove(conn: &mut RedisConn, sale: &SaleRef, db_name: &str) -> anyhow::Result<()> {
    let keys = bounded(
        "deleting the sale's Redis keys",
        stock::delete_sale(conn, sale),
    )
    .await;
    let queues = bounded("deleting the sale's queues", async {
        let c = amqp::connect(
            &amqp_url(),
            "flashsale-harness-cleanup",
            &Default::default(),
        )
        .await?;
        let ch = c.create_channel().await?;
        for q in [amqp::orders_queue(sale), amqp::dead_letter_queue(sale)] {
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        amqp::close_quietly(&c, "done").await;
        anyhow::Ok(())
    })
    .await;
    bounded("dropping the test's database", drop_database(db_name)).await??;
    keys??;
    queues?
}

/// Drops a test's database, even while connections to it are open.
async fn drop_database(db_name: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(&pg_admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    admin.close().await
}

/// Longest wait for one step of removing a test's sale.
const CLEANUP_STEP: Duration = Duration::from_secs(20);

/// `step` within [`CLEANUP_STEP`], or an error naming `what`.
async fn bounded<T>(what: &str, step: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(CLEANUP_STEP, step)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {CLEANUP_STEP:?}"))
}

/// Messages in a queue, or None when RabbitMQ has no queue of that name: a
/// passive declare, on a connection of its own, since a missing queue
/// closes the channel that asked.
pub async fn queue_messages(queue: &str) -> anyhow::Result<Option<u32>> {
    let conn = amqp::connect(&amqp_url(), "flashsale-harness", &Default::default()).await?;
    let ch = conn.create_channel().await?;
    let found = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    amqp::close_quietly(&conn, "done").await;
    match found {
        Ok(q) => Ok(Some(q.message_count())),
        Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Publishes `body` as an order message straight to `queue`, bypassing the
/// gateway (to stage a dead letter or a waiting order).
pub async fn publish_raw(ch: &lapin::Channel, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    ch.basic_publish(
        "".into(),
        queue.into(),
        lapin::options::BasicPublishOptions::default(),
        body,
        amqp::order_properties("raw-1"),
    )
    .await?
    .await?;
    Ok(())
}

/// An HTTP client sized for hundreds of requests in flight.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The answer to one purchase attempt.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub retry_after: Option<String>,
}

impl Answer {
    /// The id of the order a `202` carries; an error for any other answer.
    pub fn accepted_id(&self) -> anyhow::Result<String> {
        anyhow::ensure!(self.status == 202, "{} {}", self.status, self.body);
        self.id_at(&self.body["orderId"])
    }

    /// The id of the order a `503 order_pending` names; an error for any
    /// other answer.
    pub fn pending_id(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.status == 503 && self.body["error"]["code"] == "order_pending",
            "{} {}",
            self.status,
            self.body
        );
        self.id_at(&self.body["error"]["orderId"])
    }

    fn id_at(&self, id: &serde_json::Value) -> anyhow::Result<String> {
        id.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no orderId in {}", self.body))
    }
}

pub async fn buy(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    quantity: u32,
    key: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut req = client
        .post(url)
        .json(&serde_json::json!({"user": user, "quantity": quantity}));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// One purchase attempt to make: user, quantity, idempotency key.
pub type Purchase = (String, u32, Option<String>);

/// Sends every purchase with `in_flight` requests outstanding at once, each
/// on its own task, and returns the answers in the order of `purchases`.
pub async fn herd(
    url: &str,
    purchases: Vec<Purchase>,
    in_flight: usize,
) -> anyhow::Result<Vec<Answer>> {
    let client = http();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = Vec::with_capacity(purchases.len());
    for (user, qty, key) in purchases {
        let permit = std::sync::Arc::clone(&gate).acquire_owned().await?;
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let answer = buy(&client, &url, &user, qty, key.as_deref()).await;
            drop(permit);
            answer
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Runs a FlashSale binary with `--listen 127.0.0.1:0 --log-format json`
/// added to `args`, and returns it with its base URL, read from the
/// "... listening" line it logs. Its log is read to the end in the
/// background, so that it never blocks on a full pipe.
pub async fn spawn_binary(
    program: &str,
    args: &[String],
) -> anyhow::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("{program}: no stdout"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let listening = v["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("listening"));
            if listening && let (Some(addr), Some(tx)) = (v["addr"].as_str(), tx.take()) {
                let _ = tx.send(format!("http://{addr}"));
            }
        }
    });
    let url = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| anyhow::anyhow!("{program} did not log its address within 30 s"))?
        .map_err(|_| anyhow::anyhow!("{program} exited before listening"))?;
    Ok((child, url))
}

/// Sends SIGTERM and waits (at most `limit`) for the process to exit.
pub async fn sigterm(
    child: &mut tokio::process::Child,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the process exited before SIGTERM"))?;
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(kill.success(), "kill -TERM {pid} failed");
    tokio::time::timeout(limit, child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("process {pid} did not exit within {limit:?} of SIGTERM"))?
        .map_err(Into::into)
}

/// Counts answers by status code.
pub fn by_status(answers: &[Answer]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for a in answers {
        *m.entry(a.status).or_default() += 1;
    }
    m
}

/// Reads one sample (`name` with its labels, e.g. `x_total{outcome="a"}`)
/// from a Prometheus text page; 0 when absent.
pub async fn metric(base_url: &str, sample: &str) -> anyhow::Result<f64> {
    let text = http()
        .get(format!("{base_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or(0.0))
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > limit {
            anyhow::bail!("{what}: not true within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a restock reaches the gateway at `url`, which answered
/// "sold out" from memory: some buyer gets `202` again.
pub async fn restock_reaches(url: &str, limit: Duration) -> anyhow::Result<()> {
    let mut round = 0;
    eventually("the restock reaches the gateway", limit, || {
        round += 1;
        let more = (0..5)
            .map(|i| (format!("restock-{round}-{i}"), 1, None))
            .collect();
        async move { Ok(by_status(&herd(url, more, 5).await?).contains_key(&202)) }
    })
    .await
}

/// Number of order records the sale holds in Redis.
pub async fn redis_orders(env: &Env) -> anyhow::Result<i64> {
    let mut conn = env.redis.clone();
    let keys = flashsale_store::keys::SaleKeys::new(&env.sale);
    Ok(redis::cmd("HLEN")
        .arg(keys.orders())
        .query_async(&mut conn)
        .await?)
}
