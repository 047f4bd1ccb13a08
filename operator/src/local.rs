//! Local mode (`flashsale-operator local -f <manifests>`): the same
//! observe → plan → apply loop without a cluster. Seeding, opening and
//! closing work exactly as in a cluster; the gateway and the worker run as
//! local processes instead of Deployments, and the status that would be
//! written to Kubernetes is printed. With `--delete-on-exit`, stopping it
//! (or every sale ending, unless `--keep`) deletes the sales as `kubectl
//! delete` would: closed, drained, then their queues and Redis keys removed.
//!
//! As the controller does, it retries a failed reconcile (a store down)
//! and keeps the gateway and worker running meanwhile. What the status
//! would hold in a cluster is kept in a state file beside the manifest, so
//! that a restarted run knows which sales it seeded and never seeds a sale
//! Redis lost again.

use crate::apply::{Executor, Note, Stores, Told, execute};
use crate::backends::{BackendUrls, Backends};
use crate::controller::ERROR_REQUEUE;
use crate::error::Error as OperatorError;
use crate::observe::{observe, sale_ref};
use crate::plan::{Plan, Workload, plan};
use flashsale_api::sale::{FlashSale, FlashSaleStatus, Phase};
use flashsale_common::SaleRef;
use flashsale_common::amqp::QueueType;
use flashsale_common::backend_keys as keys;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct LocalOptions {
    pub sales: Vec<FlashSale>,
    pub gateway_listen: SocketAddr,
    pub worker_listen: SocketAddr,
    pub urls: BackendUrls,
    pub queue_type: QueueType,
    pub log_dir: PathBuf,
    /// Keep running after every sale ended and drained, until stopped.
    pub keep: bool,
    /// On stop (or, without `keep`, once every sale ended and drained),
    /// delete the sales as in a cluster: drain, then remove their queues
    /// and Redis keys.
    pub delete_on_exit: bool,
    /// Where the sales' creation times and statuses are kept across runs.
    pub state_file: PathBuf,
}

/// The state file of a run whose first manifest is `manifest` (standard
/// input: in the working directory).
pub fn state_file_for(manifest: &str) -> PathBuf {
    if manifest == "-" {
        return PathBuf::from("flashsale-local.state.json");
    }
    let path = Path::new(manifest);
    let name = path
        .file_name()
        .map_or_else(|| "manifest".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.flashsale-state.json"))
}

/// What a cluster keeps of a sale in its object: when it was created (the
/// ledger's orders of it are those since) and its status (whether it was
/// seeded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Remembered {
    created: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<FlashSaleStatus>,
    /// A lottery's seed, kept secret until its draw (as a cluster keeps it
    /// in the sale's Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lottery_seed: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalState {
    /// By `namespace/name`.
    sales: BTreeMap<String, Remembered>,
    /// The key the local gateway signs waiting-room tokens with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pass_key: Option<String>,
}

impl LocalState {
    fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; it records which sales this mode seeded, so it is not ignored: fix it, or remove it only if Redis and the ledger hold nothing of these sales",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the whole state to a new file, then moves it in place.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// The pass key every sale's gateway shares (one gateway serves them
    /// all), kept in the state so that passes outlive a restart.
    fn share_pass_key(&mut self, sales: &[FlashSale], urls: &mut BackendUrls) {
        urls.pass_key = self.pass_key.clone();
        for sale in sales {
            crate::backends::ensure_pass_key(sale, urls, None);
        }
        self.pass_key.clone_from(&urls.pass_key);
    }

    /// The stores' settings of one sale: the run's, with the sale's own
    /// lottery seed, made on first need and kept.
    fn sale_urls(
        &mut self,
        urls: &BackendUrls,
        sale: &FlashSale,
        r: &SaleRef,
    ) -> (BackendUrls, crate::backends::MadeKeys) {
        let mut sale_urls = urls.clone();
        let entry = self.sales.get_mut(&r.to_string());
        let kept = entry.as_ref().and_then(|e| e.lottery_seed.clone());
        let made =
            crate::backends::ensure_admission_keys(sale, &mut sale_urls, None, kept.as_deref());
        if made.lottery_seed
            && let Some(entry) = entry
        {
            entry.lottery_seed.clone_from(&sale_urls.lottery_seed);
        }
        (sale_urls, made)
    }

    /// Gives `sale` its remembered creation time and status, or remembers
    /// it as created now.
    fn adopt(&mut self, sale: &mut FlashSale) -> anyhow::Result<()> {
        let key = sale_ref(sale)?.to_string();
        let entry = self.sales.entry(key).or_insert_with(|| Remembered {
            created: jiff::Timestamp::now(),
            status: None,
            lottery_seed: None,
        });
        sale.metadata.creation_timestamp = Some(Time(entry.created));
        sale.status.clone_from(&entry.status);
        Ok(())
    }
}

/// One reconcile of a local sale: what it wants running, when to come
/// back, and whether it is gone.
struct Step {
    plan: Plan,
    released: bool,
}

/// Longest a deletion on exit waits for the sales to drain.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);

struct LocalProcess {
    name: &'static str,
    child: Option<Child>,
}

impl LocalProcess {
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn start(
        &mut self,
        args: &[String],
        log_dir: &std::path::Path,
        urls: &BackendUrls,
    ) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .map(|d| d.join(self.name))
            .ok_or_else(|| anyhow::anyhow!("cannot locate {}", self.name))?;
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!("{}.log", self.name)))?;
        let mut command = Command::new(&bin);
        // The operator's TLS settings, as PEM: an inherited *_FILE twin
        // would conflict with them.
        for (name, file, pem) in [
            (keys::TLS_CA_PEM, keys::TLS_CA_FILE, &urls.tls_ca_pem),
            (
                keys::TLS_CLIENT_CERT_PEM,
                keys::TLS_CLIENT_CERT_FILE,
                &urls.tls_client_cert_pem,
            ),
            (
                keys::TLS_CLIENT_KEY_PEM,
                keys::TLS_CLIENT_KEY_FILE,
                &urls.tls_client_key_pem,
            ),
        ] {
            if let Some(pem) = pem {
                command.env_remove(file).env(name, pem);
            }
        }
        if let Some(token) = &urls.confirm_token {
            command.env(keys::CONFIRM_TOKEN, token);
        }
        if let Some(key) = &urls.pass_key {
            command.env(keys::PASS_KEY, key);
        }
        if let Some(n) = urls.redis_wait_replicas {
            command.env(keys::REDIS_WAIT_REPLICAS, n.to_string());
        }
        command.envs(&urls.own_client_certs);
        let child = command
            .args(args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        println!(
            "started {} (pid {})",
            self.name,
            child.id().unwrap_or_default()
        );
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM, then wait for the graceful stop (SIGKILL after 30 s).
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        println!("stopped {}", self.name);
    }
}

fn clock() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

pub async fn run_local(mut opts: LocalOptions) -> anyhow::Result<()> {
    let urls = opts.urls.clone();
    let backends = Backends::new(urls.clone(), opts.queue_type);
    let sale_args: Vec<String> = opts
        .sales
        .iter()
        .map(sale_ref)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|r| ["--sale".to_owned(), r.to_string()])
        .collect();
    let common = vec![
        "--amqp-url".to_owned(),
        urls.amqp_url.clone(),
        "--queue-type".to_owned(),
        opts.queue_type.as_str().to_owned(),
    ];
    let mut gateway_args = sale_args.clone();
    gateway_args.extend(common.clone());
    gateway_args.extend([
        "--redis-url".into(),
        urls.redis_url.clone(),
        "--listen".into(),
        opts.gateway_listen.to_string(),
    ]);
    let mut worker_args = sale_args;
    worker_args.extend(common);
    worker_args.extend([
        "--database-url".into(),
        urls.database_url.clone(),
        "--listen".into(),
        opts.worker_listen.to_string(),
    ]);
    let mut gateway = LocalProcess {
        name: "flashsale-gateway",
        child: None,
    };
    let mut worker = LocalProcess {
        name: "flashsale-worker",
        child: None,
    };
    println!(
        "local mode: {} sale(s); gateway on http://{}, worker on http://{}, logs in {}",
        opts.sales.len(),
        opts.gateway_listen,
        opts.worker_listen,
        opts.log_dir.display()
    );

    let mut state = LocalState::load(&opts.state_file)?;
    for sale in &mut opts.sales {
        state.adopt(sale)?;
    }
    let mut urls = urls;
    state.share_pass_key(&opts.sales, &mut urls);
    state.save(&opts.state_file)?;
    // What the file holds now: it is written again only when that changes.
    let mut saved = state.clone();
    let told = Told::default();
    // What each sale last wanted running: kept while its reconcile fails.
    let mut wants: BTreeMap<String, (bool, bool)> = BTreeMap::new();

    let mut shutdown = std::pin::pin!(flashsale_common::ops::shutdown_signal());
    // Set once the sales are being deleted: when that gives up.
    let mut deleting: Option<tokio::time::Instant> = None;
    let mut gave_up = None;
    // Whether a kept run said once that its sales are over.
    let mut told_kept = false;
    loop {
        let mut next = Duration::from_secs(5);
        let mut all_done = true;
        let mut released = Vec::new();
        for sale in &mut opts.sales {
            let r = sale_ref(sale)?;
            if deleting.is_some() && sale.metadata.deletion_timestamp.is_none() {
                sale.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
            }
            let running = (gateway.running(), worker.running());
            let (sale_urls, made) = state.sale_urls(&urls, sale, &r);
            match reconcile_local(&backends, &sale_urls, &told, sale, running, made).await {
                Ok(step) => {
                    if step.released {
                        state.sales.remove(&r.to_string());
                        released.push(r);
                        continue;
                    }
                    let p = &step.plan;
                    wants.insert(
                        r.to_string(),
                        (p.gateway_replicas > 0, p.worker_replicas > 0),
                    );
                    all_done &= p.phase == Phase::Ended
                        && p.gateway_replicas == 0
                        && p.worker_replicas == 0;
                    next = next.min(p.requeue_after);
                }
                Err(e) => {
                    println!(
                        "{} {r}  reconcile failed, retrying in {} s: {}",
                        clock(),
                        ERROR_REQUEUE.as_secs(),
                        flashsale_common::ops::describe(&e)
                    );
                    all_done = false;
                    next = next.min(ERROR_REQUEUE);
                }
            }
            if let Some(entry) = state.sales.get_mut(&r.to_string()) {
                entry.status.clone_from(&sale.status);
            }
        }
        if state != saved {
            match state.save(&opts.state_file) {
                Ok(()) => saved = state.clone(),
                Err(e) => println!("{} {e}", clock()),
            }
        }
        let want_gateway = wants.values().any(|w| w.0);
        let want_worker = wants.values().any(|w| w.1);
        if want_gateway {
            gateway.start(&gateway_args, &opts.log_dir, &urls).await?;
        } else {
            gateway.stop().await;
        }
        if want_worker {
            worker.start(&worker_args, &opts.log_dir, &urls).await?;
        } else if !gateway.running() {
            worker.stop().await;
        }
        for r in &released {
            wants.remove(&r.to_string());
        }
        opts.sales
            .retain(|sale| sale_ref(sale).map_or(true, |r| !released.contains(&r)));
        if deleting.is_some() && opts.sales.is_empty() {
            println!("every sale deleted");
            break;
        }
        if deleting.is_some_and(|until| tokio::time::Instant::now() >= until) {
            gave_up = Some(opts.sales.len());
            break;
        }
        if all_done && deleting.is_none() && !opts.keep {
            println!("every sale ended and drained");
            if !opts.delete_on_exit {
                break;
            }
            deleting = Some(tokio::time::Instant::now() + DELETE_TIMEOUT);
            continue;
        }
        if all_done && deleting.is_none() && !told_kept {
            told_kept = true;
            let then = if opts.delete_on_exit {
                ", then deleting the sales"
            } else {
                ""
            };
            println!("every sale ended and drained; running on until stopped (--keep){then}");
        }
        // Wake at the next boundary, or at least every second so that the
        // printed counts stay live.
        tokio::select! {
            () = tokio::time::sleep(next.min(Duration::from_secs(1)).max(Duration::from_millis(1))) => {}
            () = &mut shutdown => {
                if !opts.delete_on_exit || deleting.is_some() {
                    break;
                }
                println!("deleting the sales (stop again to leave at once)");
                deleting = Some(tokio::time::Instant::now() + DELETE_TIMEOUT);
                shutdown.set(flashsale_common::ops::shutdown_signal());
            }
        }
    }
    gateway.stop().await;
    worker.stop().await;
    state.save(&opts.state_file)?;
    if let Some(left) = gave_up {
        anyhow::bail!(
            "gave up deleting after {DELETE_TIMEOUT:?}: {left} sale(s) not drained; their queues and Redis keys stay"
        );
    }
    Ok(())
}

/// Observe, plan and carry out one local sale through [`execute`], as the
/// controller does in a cluster; prints the events and the status instead
/// of writing them. `running`: whether the gateway and the worker
/// processes run.
async fn reconcile_local(
    backends: &Backends,
    urls: &BackendUrls,
    told: &Told,
    sale: &mut FlashSale,
    running: (bool, bool),
    made: crate::backends::MadeKeys,
) -> anyhow::Result<Step> {
    let r = sale_ref(sale)?;
    let mut observed = observe(backends, urls, None, sale).await?;
    observed.kept_lottery_seed.clone_from(&urls.lottery_seed);
    // One local process stands in for all the replicas of a Deployment.
    let (g, w) = (sale.spec.gateway.replicas, sale.spec.worker.replicas);
    observed.gateway = Some(Workload {
        available: if running.0 { g } else { 0 },
    });
    observed.worker = Some(Workload {
        available: if running.1 { w } else { 0 },
    });
    let p = plan(sale, &observed, jiff::Timestamp::now().as_millisecond());
    let local = LocalExecutor {
        r: r.clone(),
        status: std::sync::Mutex::new(None),
    };
    let stores = Stores { backends, urls };
    let notes = crate::apply::committed(&made, &observed)
        .into_iter()
        .collect();
    let released = execute(&local, stores, told, sale, &observed, &p, notes).await?;
    if let Some(status) = lock(&local.status).take() {
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        println!(
            "{} {r}  phase={} remaining={} reserved={} sold={} persisted={} ready={}",
            clock(),
            p.phase.as_str(),
            status.remaining.unwrap_or_default(),
            status.reserved.unwrap_or_default(),
            status.sold.unwrap_or_default(),
            status.persisted.unwrap_or_default(),
            ready.map_or("-".to_owned(), |c| format!("{} ({})", c.status, c.reason)),
        );
        println!("  status: {}", serde_json::to_string(&status)?);
        sale.status = Some(status);
    }
    Ok(Step { plan: p, released })
}

/// Local mode's side of [`execute`]: no finalizer (this process holds its
/// sales), the gateway and worker processes started or stopped by the
/// loop from the plan's replicas for every sale, events and the status
/// printed.
struct LocalExecutor {
    r: SaleRef,
    status: std::sync::Mutex<Option<FlashSaleStatus>>,
}

impl Executor for LocalExecutor {
    async fn hold(&self, _sale: &FlashSale) -> Result<(), OperatorError> {
        Ok(())
    }

    async fn release(&self, _sale: &FlashSale) -> Result<(), OperatorError> {
        Ok(())
    }

    async fn workloads(
        &self,
        _sale: &FlashSale,
        _gateway: i32,
        _worker: i32,
        _create: bool,
    ) -> Result<(), OperatorError> {
        Ok(())
    }

    async fn tell(&self, _sale: &FlashSale, notes: &[Note]) {
        print_notes(&self.r, notes);
    }

    async fn write_status(
        &self,
        _sale: &FlashSale,
        status: FlashSaleStatus,
    ) -> Result<(), OperatorError> {
        *lock(&self.status) = Some(status);
        Ok(())
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn print_notes(r: &SaleRef, notes: &[Note]) {
    for note in notes {
        let kind = if note.warning { "warning" } else { "event" };
        println!("{} {r}  {kind} {}: {}", clock(), note.reason, note.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lottery(name: &str) -> FlashSale {
        let yaml = format!(
            r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {{name: {name}, namespace: shop}}
spec:
  product: {{sku: SKU-1, name: Thing, price: "9.99", currency: EUR}}
  stock: 10
  window: {{start: "2027-01-01T09:00:00Z", end: "2027-01-01T10:00:00Z"}}
  admission: {{mode: lottery}}
"#
        );
        FlashSale::from_yaml_documents(&yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
    }

    /// One pass key for the run's gateway; each lottery a seed of its own,
    /// told as committed once and kept for the next run.
    #[test]
    fn each_lottery_has_its_own_seed_kept_across_runs() {
        let mut sales = vec![lottery("a"), lottery("b")];
        let mut state = LocalState::default();
        for s in &mut sales {
            state.adopt(s).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut urls = BackendUrls::default();
        state.share_pass_key(&sales, &mut urls);
        assert!(urls.pass_key.is_some() && urls.lottery_seed.is_none());
        let refs: Vec<SaleRef> = sales
            .iter()
            .map(|s| sale_ref(s).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let (a, made_a) = state.sale_urls(&urls, &sales[0], &refs[0]);
        let (b, made_b) = state.sale_urls(&urls, &sales[1], &refs[1]);
        assert!(
            made_a.lottery_seed && made_b.lottery_seed,
            "each is told as committed"
        );
        assert!(a.lottery_seed.is_some() && a.lottery_seed != b.lottery_seed);
        assert_eq!(a.pass_key, urls.pass_key, "the gateway's one key");
        let (again, made) = state.sale_urls(&urls, &sales[0], &refs[0]);
        assert!(!made.lottery_seed, "made once");
        assert_eq!(again.lottery_seed, a.lottery_seed);

        // The next run reads the same state: same key, same seeds.
        let mut next = state.clone();
        let mut urls2 = BackendUrls::default();
        next.share_pass_key(&sales, &mut urls2);
        assert_eq!(urls2.pass_key, urls.pass_key);
        assert_eq!(
            next.sale_urls(&urls2, &sales[1], &refs[1]).0.lottery_seed,
            b.lottery_seed
        );
    }
}
