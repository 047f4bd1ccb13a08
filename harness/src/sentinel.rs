//! A Redis primary, a replica and a sentinel of a test's own, on free
//! ports, in a temporary directory: a test may kill the primary without
//! disturbing any other. Dropping the group stops its servers and removes
//! the directory. [`SentinelGroup::start_tls`] makes all three speak TLS
//! only, to clients and to each other, and take only clients with a
//! certificate of the group's CA.

use crate::tlsproxy::TestPki;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name under which the sentinel monitors the primary.
pub const SERVICE: &str = "flashsale";

pub struct SentinelGroup {
    pub primary_port: u16,
    pub replica_port: u16,
    pub sentinel_port: u16,
    dir: PathBuf,
    /// The CA that signed the servers' certificate and the client
    /// certificate the test's own connections present, when they speak TLS.
    tls: Option<GroupTls>,
    primary: Option<Child>,
    replica: Option<Child>,
    sentinel: Option<Child>,
}

struct GroupTls {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn redis_server() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

pub(crate) fn spawn(dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(redis_server())
        .args(args)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} for the {name}: {e}", redis_server()))
}

/// The settings that make a server or sentinel listen on `port`: in plain
/// text, or, with `tls` (the group's directory, where the certificate
/// files are), in TLS only, and speak TLS to the servers it replicates
/// from or monitors. Clients must present a certificate of the CA; the
/// servers and the sentinel present their own server certificate as one.
fn listen_settings(port: u16, tls: Option<&Path>) -> Vec<(&'static str, String)> {
    let Some(certs) = tls else {
        return vec![("port", port.to_string())];
    };
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        ("port", "0".into()),
        ("tls-port", port.to_string()),
        ("tls-cert-file", file("server.pem")),
        ("tls-key-file", file("server.key")),
        ("tls-ca-cert-file", file("ca.pem")),
        ("tls-auth-clients", "yes".into()),
        ("tls-replication", "yes".into()),
    ]
}

pub(crate) fn server_args(dir: &Path, port: u16, tls: Option<&Path>) -> Vec<String> {
    let mut settings = vec![("bind", "127.0.0.1".to_owned())];
    settings.extend(listen_settings(port, tls));
    settings.extend([
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("dir", dir.display().to_string()),
    ]);
    settings
        .into_iter()
        .flat_map(|(k, v)| [format!("--{k}"), v])
        .collect()
}

impl SentinelGroup {
    /// A group that speaks plain text.
    pub async fn start() -> anyhow::Result<SentinelGroup> {
        SentinelGroup::start_with(None).await
    }

    /// A group whose servers and sentinel speak TLS only, with the server
    /// certificate of `pki`, and take only clients with a certificate of
    /// its CA (mutual TLS); [`SentinelGroup::url`] is then a
    /// `rediss+sentinel://` URL.
    pub async fn start_tls(pki: &TestPki) -> anyhow::Result<SentinelGroup> {
        SentinelGroup::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&TestPki>) -> anyhow::Result<SentinelGroup> {
        let dir = std::env::temp_dir().join(format!(
            "flashsale-sentinel-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(&dir)?;
        let (primary_port, replica_port, sentinel_port) =
            (free_port()?, free_port()?, free_port()?);
        let mut group = SentinelGroup {
            primary_port,
            replica_port,
            sentinel_port,
            dir: dir.clone(),
            tls: pki.map(|p| GroupTls {
                ca_pem: p.ca_pem.clone(),
                client_cert_pem: p.client_cert_pem.clone(),
                client_key_pem: p.client_key_pem.clone(),
            }),
            primary: None,
            replica: None,
            sentinel: None,
        };
        if let Some(pki) = pki {
            std::fs::write(dir.join("server.pem"), &pki.server_cert_pem)?;
            std::fs::write(dir.join("server.key"), &pki.server_key_pem)?;
            std::fs::write(dir.join("ca.pem"), &pki.ca_pem)?;
        }
        let tls = pki.map(|_| dir.as_path());
        let primary_dir = dir.join("primary");
        let replica_dir = dir.join("replica");
        std::fs::create_dir_all(&primary_dir)?;
        std::fs::create_dir_all(&replica_dir)?;
        group.primary = Some(spawn(
            &dir,
            "primary",
            &server_args(&primary_dir, primary_port, tls),
        )?);
        let mut replica_args = server_args(&replica_dir, replica_port, tls);
        replica_args
            .extend(["--replicaof", "127.0.0.1", &primary_port.to_string()].map(str::to_owned));
        group.replica = Some(spawn(&dir, "replica", &replica_args)?);
        // The sentinel learns of replicas from the primary's INFO: started
        // once the replica is attached, it knows it at once instead of
        // after its next poll, 10 s later.
        crate::eventually(
            "the replica in sync with the primary",
            Duration::from_secs(30),
            || async {
                Ok(group
                    .replication(replica_port, "master_link_status")
                    .await
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some("up"))
            },
        )
        .await?;
        let conf = dir.join("sentinel.conf");
        let mut lines = vec![("bind", "127.0.0.1".to_owned())];
        lines.extend(listen_settings(sentinel_port, tls));
        lines.extend([
            ("dir", dir.display().to_string()),
            (
                "sentinel monitor",
                format!("{SERVICE} 127.0.0.1 {primary_port} 1"),
            ),
            ("sentinel down-after-milliseconds", format!("{SERVICE} 500")),
            ("sentinel failover-timeout", format!("{SERVICE} 10000")),
        ]);
        let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        std::fs::write(&conf, text)?;
        group.sentinel = Some(spawn(
            &dir,
            "sentinel",
            &[conf.display().to_string(), "--sentinel".into()],
        )?);
        crate::eventually(
            "the sentinel knows the replica",
            Duration::from_secs(30),
            || async {
                let Ok(mut s) = group.node(sentinel_port).await else {
                    return Ok(false);
                };
                let replicas: Vec<std::collections::HashMap<String, String>> =
                    match redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(SERVICE)
                        .query_async(&mut s)
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => return Ok(false),
                    };
                Ok(replicas.iter().any(|r| {
                    r.get("port") == Some(&replica_port.to_string())
                        && r.get("flags").is_some_and(|f| f == "slave")
                }))
            },
        )
        .await?;
        Ok(group)
    }

    /// The URL the components take.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://127.0.0.1:{}/{SERVICE}", self.sentinel_port)
    }

    /// A direct connection to one server (or the sentinel) of the group,
    /// over TLS when the group speaks it.
    pub async fn node(&self, port: u16) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = match &self.tls {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}"))?,
            Some(tls) => {
                flashsale_common::tls::install_crypto_provider();
                redis::Client::build_with_tls(
                    format!("rediss://127.0.0.1:{port}"),
                    redis::TlsCertificates {
                        client_tls: Some(redis::ClientTlsConfig {
                            client_cert: tls.client_cert_pem.as_bytes().to_vec(),
                            client_key: tls.client_key_pem.as_bytes().to_vec(),
                        }),
                        root_cert: Some(tls.ca_pem.as_bytes().to_vec()),
                    },
                )?
            }
        };
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The `INFO replication` field `field` of the server on `port`.
    async fn replication(&self, port: u16, field: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.node(port).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned()))
    }

    /// Waits until the replica holds every write the primary took so far.
    pub async fn replica_caught_up(&self) -> anyhow::Result<()> {
        let mut p = self.node(self.primary_port).await?;
        // WAIT counts acknowledgements of this connection's own writes; a
        // write of its own makes it cover everything written before.
        let _: () = redis::cmd("SET")
            .arg("flashsale-test-sync")
            .arg(1)
            .query_async(&mut p)
            .await?;
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query_async(&mut p)
            .await?;
        anyhow::ensure!(acked >= 1, "the replica did not acknowledge within 10 s");
        Ok(())
    }

    /// Kills the primary (SIGKILL), as a crashed node.
    pub fn kill_primary(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.primary.take() {
            p.kill()?;
            p.wait()?;
        }
        Ok(())
    }

    /// Asks the sentinel to fail over at once (`SENTINEL FAILOVER`): the
    /// replica becomes the primary, the primary a replica of it.
    pub async fn hand_over(&self) -> anyhow::Result<()> {
        let mut s = self.node(self.sentinel_port).await?;
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query_async(&mut s)
            .await?;
        Ok(())
    }

    /// Waits until the sentinel names the replica as the primary and the
    /// replica has taken the role.
    pub async fn wait_failover(&self, limit: Duration) -> anyhow::Result<()> {
        let (sentinel, replica) = (self.sentinel_port, self.replica_port);
        crate::eventually("the sentinel promotes the replica", limit, || async move {
            let mut s = self.node(sentinel).await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(SERVICE)
                .query_async(&mut s)
                .await?;
            let named = addr.is_some_and(|(_, port)| port == replica);
            Ok(named && self.replication(replica, "role").await?.as_deref() == Some("master"))
        })
        .await
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the replica: a stopped
    /// replica acknowledges nothing, as one cut off by the network.
    pub fn signal_replica(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .replica
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no replica"))?
            .id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
        Ok(())
    }

    /// Waits until the old primary, still running after a hand-over, has
    /// become a replica: until then it takes writes that the promoted
    /// replica never sees.
    pub async fn wait_demoted(&self, limit: Duration) -> anyhow::Result<()> {
        let old = self.primary_port;
        crate::eventually("the old primary becomes a replica", limit, || async move {
            Ok(self
                .replication(old, "role")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("slave"))
        })
        .await
    }

    /// The sentinel's log, for failure messages.
    pub fn sentinel_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        let children = [&mut self.primary, &mut self.replica, &mut self.sentinel];
        for child in children.into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sale of `stock` units (seeded, open, one per buyer) whose primary
/// crashes halfway: the gateway at `url` sells half the stock, every
/// reservation reaches the replica, the primary is killed and the sentinel
/// promotes the replica; then [`sells_the_rest_after_failover`].
pub async fn crash_mid_sale(
    group: &mut SentinelGroup,
    env: &crate::Env,
    url: &str,
    stock: usize,
) -> anyhow::Result<()> {
    let half = stock / 2;
    let before = crate::herd(
        url,
        (0..half)
            .map(|i| (format!("before-{i}"), 1, None))
            .collect(),
        50,
    )
    .await?;
    let counts = crate::by_status(&before);
    assert_eq!(counts.get(&202), Some(&half), "{counts:?}");
    group.replica_caught_up().await?;
    group.kill_primary()?;
    group
        .wait_failover(Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nsentinel log:\n{}", group.sentinel_log()))?;
    sells_the_rest_after_failover(env, url, half, stock).await
}

/// Checks a sale of `stock` units, `sold` of them sold before its primary
/// failed over, from the moment the sentinel has promoted the replica:
/// the gateway at `url` answers `503` while its connection still leads to
/// the old primary, then sells exactly the rest on the new one and no
/// more; the new primary counts the whole stock as sold, and PostgreSQL
/// holds each order once.
pub async fn sells_the_rest_after_failover(
    env: &crate::Env,
    url: &str,
    sold: usize,
    stock: usize,
) -> anyhow::Result<()> {
    use std::time::Instant;
    let client = crate::http();
    let mut unavailable = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not reserve on the promoted replica within 30 s ({unavailable} × 503)"
        );
        let user = format!("during-{unavailable}");
        let answer = crate::buy(&client, url, &user, 1, None).await?;
        match answer.status {
            202 => break,
            503 => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => anyhow::bail!("{user}: {other} {}", answer.body),
        }
    }
    let rest = stock - sold - 1;
    let after = crate::herd(
        url,
        (0..3 * rest)
            .map(|i| (format!("after-{i}"), 1, None))
            .collect(),
        100.min(3 * rest),
    )
    .await?;
    let counts = crate::by_status(&after);
    assert_eq!(
        (counts.get(&202), counts.get(&409), counts.len()),
        (Some(&rest), Some(&(2 * rest)), 2),
        "after the failover ({unavailable} attempts answered 503 first): {counts:?}"
    );

    // The test's own connection follows after its first failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    let snap = loop {
        match env.snapshot().await {
            Ok(snap) => break snap,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading the sale: {e}; again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("the test's connection did not follow")),
        }
    };
    let stock = i64::try_from(stock)?;
    assert_eq!((snap.sold, snap.remaining), (stock, 0), "{snap:?}");
    env.wait_persisted(stock, Duration::from_secs(60)).await?;
    assert_eq!(i64::try_from(env.stored_order_ids().await?.len())?, stock);
    Ok(())
}
