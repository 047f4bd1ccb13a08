//! A Redis server of a test's own, on a free port, in a temporary
//! directory, for settings a test must not change on the shared server
//! (its memory policy, say). Dropping it stops the server and removes the
//! directory.

use crate::sentinel::{free_port, server_args, spawn};
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
    /// The arguments it was started with, to start it again.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with `settings` (as `redis.conf` names them, e.g.
    /// `("maxmemory-policy", "allkeys-lru")`) and waits until it answers.
    pub async fn start(settings: &[(&str, &str)]) -> anyhow::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "flashsale-redis-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mut args = server_args(&dir, port, None);
        for (name, value) in settings {
            args.extend([format!("--{name}"), (*value).to_owned()]);
        }
        let child = match spawn(&dir, "redis", &args) {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let server = RedisServer {
            port,
            dir,
            child,
            args,
        };
        server.until_it_answers().await?;
        Ok(server)
    }

    /// Stops the server at once and starts it again on the same port with
    /// nothing in it, as a Redis without persistence comes back from a
    /// crash.
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn(&self.dir, "redis", &self.args)?;
        self.until_it_answers().await
    }

    async fn until_it_answers(&self) -> anyhow::Result<()> {
        crate::eventually(
            "the test's Redis answers",
            Duration::from_secs(20),
            || async { Ok(self.conn().await.is_ok()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; its log: {}", self.log()))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A direct connection, for the test's own commands.
    pub async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// `CONFIG SET name value`.
    pub async fn config_set(&self, name: &str, value: &str) -> anyhow::Result<()> {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }

    /// Keys in the server's database (`DBSIZE`).
    pub async fn key_count(&self) -> anyhow::Result<i64> {
        Ok(redis::cmd("DBSIZE")
            .query_async(&mut self.conn().await?)
            .await?)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
