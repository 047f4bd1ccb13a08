//! Carrying out a plan: Redis (seed, close, clean up), the sale's queues
//! (clean up), the sale's workloads
//! by server-side apply under one field manager, the finalizer, events and
//! the status subresource (patched only when it changed). Every step is
//! idempotent, so a reconcile interrupted anywhere is safely repeated.

use crate::backends::{BackendUrls, Backends};
use crate::error::{Error, Result};
use crate::observe::sale_ref;
use crate::plan::{Observed, Plan, REDIS_STATE_LOST, reported_lost};
use crate::status::desired_status;
use crate::workloads::{self, Component, WorkloadDefaults};
use flashsale_api::sale::{FlashSale, FlashSaleStatus, Phase};
use flashsale_common::SaleRef;
use flashsale_common::amqp::{self, QueueRemoval};
use flashsale_store::redisconn::RedisConn;
use flashsale_store::stock::{self, SeedOutcome, StockSnapshot};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

pub const FIELD_MANAGER: &str = "flashsale-operator";
pub const FINALIZER: &str = "flashsale.io/cleanup";

/// An event to record against the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The events a phase change records.
pub fn transition(old: Option<Phase>, new: Phase, sale: &FlashSale) -> Option<Note> {
    if old == Some(new) {
        return None;
    }
    let (warning, reason, message) = match new {
        Phase::Scheduled => (
            false,
            "Scheduled",
            format!("opens at {}", sale.spec.window.start),
        ),
        Phase::Active => (false, "Opened", "the sale is open".to_owned()),
        Phase::SoldOut => (
            false,
            "SoldOut",
            "every unit is reserved or sold".to_owned(),
        ),
        Phase::Paused => (
            false,
            "Paused",
            "spec.paused is true; purchases are refused".to_owned(),
        ),
        Phase::Ended => (
            false,
            "Closed",
            format!("closed at {}", sale.spec.window.end),
        ),
        Phase::Invalid => (
            true,
            "Invalid",
            "the spec cannot run; see the Ready condition".to_owned(),
        ),
    };
    Some(Note {
        warning,
        reason,
        message,
    })
}

/// The cluster's side of [`execute`]: a finalizer, Deployments and the
/// objects around them, Kubernetes events, the status subresource.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub urls: &'a BackendUrls,
    pub defaults: &'a WorkloadDefaults,
    pub recorder: &'a Recorder,
}

/// What differs between running a sale in a cluster and on this machine:
/// how the sale is held until cleaned up, how its gateway and worker run,
/// how events are told and where the status goes. [`execute`] is the one
/// sequence both follow.
#[allow(async_fn_in_trait)] // used with concrete executors only
pub trait Executor {
    /// Keeps the sale from going before its clean-up (a finalizer).
    async fn hold(&self, sale: &FlashSale) -> Result<()>;
    /// Lets a cleaned-up sale go.
    async fn release(&self, sale: &FlashSale) -> Result<()>;
    /// Runs `gateway` and `worker` replicas; with `create` false only what
    /// already runs is scaled, nothing new is made.
    async fn workloads(
        &self,
        sale: &FlashSale,
        gateway: i32,
        worker: i32,
        create: bool,
    ) -> Result<()>;
    /// Tells the events.
    async fn tell(&self, sale: &FlashSale, notes: &[Note]);
    /// Writes the status, which differs from the sale's.
    async fn write_status(&self, sale: &FlashSale, status: FlashSaleStatus) -> Result<()>;
}

/// The data stores a sale's plan acts on.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub backends: &'a Backends,
    pub urls: &'a BackendUrls,
}

/// Carries out `plan` through `exec`: the stores first (seed, close,
/// rebuild), then the workloads, the events, the clean-up of a deleted
/// sale and its release, else the status. `notes` are events the caller
/// adds. Returns true when the sale was released. Every field of the plan
/// is taken here by name, so a new one does not compile until it is
/// carried out.
pub async fn execute(
    exec: &impl Executor,
    stores: Stores<'_>,
    told: &Told,
    sale: &FlashSale,
    observed: &Observed,
    plan: &Plan,
    mut notes: Vec<Note>,
) -> Result<bool> {
    let Plan {
        phase: _,
        seed: _,
        seed_mode: _,
        restore: _,
        closed: _,
        draw: _,
        queue_open: _,
        gateway_replicas,
        worker_replicas,
        cleanup,
        create_children,
        conditions: _,
        requeue_after: _,
    } = plan;
    // phase, conditions and queue_open go into the status and the events
    // below, seed, seed_mode, restore, closed and draw into
    // apply_to_stores, and
    // requeue_after to the caller, which schedules the next reconcile.
    let r = sale_ref(sale)?;
    if sale.metadata.deletion_timestamp.is_none() {
        exec.hold(sale).await?;
    }
    let Stores { backends, urls } = stores;
    let mut redis = backends.redis(urls).await?;
    let mut told_now = apply_to_stores(backends, urls, &mut redis, sale, plan).await?;
    told_now.append(&mut notes);
    exec.workloads(sale, *gateway_replicas, *worker_replicas, *create_children)
        .await?;
    let key = sale.uid().unwrap_or_else(|| r.to_string());
    told_now.extend(told.notes(&key, sale, plan));
    let released = *cleanup && clean_up(backends, urls, &r, &mut redis, &mut told_now).await?;
    exec.tell(sale, &told_now).await;
    if released {
        told.forget(&key);
        exec.release(sale).await?;
        return Ok(true);
    }
    let snapshot = read_stock(backends, urls, &r).await?;
    // A draw just made is in the status at once (its seed revealed).
    let mut observed = observed.clone();
    if plan.draw {
        observed.queue = Some(flashsale_store::queue::counts(&mut redis, &r).await?);
    }
    let status = desired_status(
        sale,
        plan,
        snapshot.as_ref(),
        &observed,
        jiff::Timestamp::now(),
    );
    // Conditions keep their transition times, so equal means unchanged.
    if sale.status.as_ref() != Some(&status) {
        exec.write_status(sale, status).await?;
    }
    Ok(false)
}

impl Executor for Applier<'_> {
    async fn hold(&self, sale: &FlashSale) -> Result<()> {
        if !sale.finalizers().iter().any(|f| f == FINALIZER) {
            let mut finalizers = sale.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            set_finalizers(&self.sales(sale), sale, finalizers).await?;
        }
        Ok(())
    }

    async fn release(&self, sale: &FlashSale) -> Result<()> {
        let finalizers: Vec<String> = sale
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        Ok(set_finalizers(&self.sales(sale), sale, finalizers).await?)
    }

    async fn workloads(
        &self,
        sale: &FlashSale,
        gateway: i32,
        worker: i32,
        create: bool,
    ) -> Result<()> {
        let ns = sale_ref(sale)?.namespace;
        if create {
            self.apply_children(&ns, sale, gateway, worker).await
        } else {
            self.scale_existing(&ns, sale, gateway, worker).await;
            Ok(())
        }
    }

    async fn tell(&self, sale: &FlashSale, notes: &[Note]) {
        for note in notes {
            self.record(sale, note).await;
        }
    }

    async fn write_status(&self, sale: &FlashSale, status: FlashSaleStatus) -> Result<()> {
        self.sales(sale)
            .patch_status(
                &sale.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }
}

/// What this process last told of each sale (by UID, or by name where
/// there is none): its phase and
/// whether it was drained. A reconcile may run on a copy of the sale whose
/// status predates the last patch (a change of its Deployments wakes it
/// first); this keeps it from telling the same transition twice.
#[derive(Debug, Default)]
pub struct Told(std::sync::Mutex<std::collections::HashMap<String, (Phase, bool, bool)>>);

/// The transitions a reconcile tells: the phase before, when it changed;
/// whether the sale just drained.
struct Transitions {
    phase: Option<Option<Phase>>,
    drained: bool,
    queue_opened: bool,
}

impl Told {
    /// Records the sale's phase and drain state as planned; returns what
    /// changed since this process, or else the sale's status, told it.
    /// Drained counts only where no new order can come (sold out, ended or
    /// deleted), so that a sale drains once, not after every quiet moment.
    fn tell(&self, key: &str, sale: &FlashSale, plan: &Plan) -> Transitions {
        let settled = |phase: Option<Phase>| matches!(phase, Some(Phase::Ended | Phase::SoldOut));
        let phase = plan.phase;
        let drained = settled(Some(phase))
            && plan
                .conditions
                .iter()
                .any(|c| c.type_ == "Drained" && c.status);
        let reported = sale.status.as_ref().map(|s| {
            (
                s.phase,
                settled(s.phase)
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Drained" && c.status == "True"),
            )
        });
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A line reported open in the status was told of before.
        let queue_reported = sale.status.as_ref().is_some_and(|s| s.queue.is_some())
            && matches!(
                sale.status.as_ref().and_then(|s| s.phase),
                Some(Phase::Active | Phase::SoldOut | Phase::Paused | Phase::Ended)
            );
        let (old_phase, was_drained, was_open) = match map.get(key) {
            Some((p, d, q)) => (Some(*p), *d, *q),
            None => {
                let (p, d) = reported.unwrap_or((None, false));
                (p, d, queue_reported)
            }
        };
        let open = plan.queue_open || was_open;
        if !key.is_empty() {
            map.insert(key.to_owned(), (phase, drained, open));
        }
        Transitions {
            phase: (old_phase != Some(phase)).then_some(old_phase),
            drained: drained && !was_drained,
            queue_opened: plan.queue_open && !was_open,
        }
    }

    /// The events of what changed since the last time: the phase, and
    /// `Drained`.
    pub fn notes(&self, key: &str, sale: &FlashSale, plan: &Plan) -> Vec<Note> {
        let told = self.tell(key, sale, plan);
        let mut notes = Vec::new();
        if told.queue_opened {
            notes.push(Note {
                warning: false,
                reason: "QueueOpened",
                message: format!(
                    "buyers may join the line; the sale opens at {}",
                    sale.spec.window.start
                ),
            });
        }
        notes.extend(told.phase.and_then(|old| transition(old, plan.phase, sale)));
        let queued = sale.spec.admission.as_ref().is_some_and(|a| a.queued());
        if queued && told.phase.is_some() && matches!(plan.phase, Phase::SoldOut | Phase::Ended) {
            notes.push(Note {
                warning: false,
                reason: "QueueClosed",
                message: format!(
                    "the line is closed: every waiter is told the sale is {}",
                    if plan.phase == Phase::SoldOut {
                        "sold out"
                    } else {
                        "over"
                    }
                ),
            });
        }
        if told.drained {
            notes.push(Note {
                warning: false,
                reason: "Drained",
                message: "every accepted order is stored in PostgreSQL".to_owned(),
            });
        }
        notes
    }

    /// Forgets a released sale.
    pub fn forget(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

impl Applier<'_> {
    /// Server-side applies the sale's Secret, Deployments, Service and
    /// disruption budgets.
    async fn apply_children(
        &self,
        ns: &str,
        sale: &FlashSale,
        gateway: i32,
        worker: i32,
    ) -> Result<()> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        // The Secret first: the pods of the Deployments read it at start.
        let secret = workloads::backends_secret(sale, self.urls);
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .patch(&secret.name_any(), &pp, &Patch::Apply(&secret))
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        for (component, replicas) in [(Component::Gateway, gateway), (Component::Worker, worker)] {
            let d = workloads::deployment(sale, component, replicas, self.defaults, self.urls);
            let name = d.meta().name.clone().unwrap_or_default();
            deployments.patch(&name, &pp, &Patch::Apply(&d)).await?;
        }
        let svc = workloads::gateway_service(sale);
        Api::<Service>::namespaced(self.client.clone(), ns)
            .patch(&svc.name_any(), &pp, &Patch::Apply(&svc))
            .await?;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
        for component in [Component::Gateway, Component::Worker] {
            let pdb = workloads::disruption_budget(sale, component);
            pdbs.patch(&pdb.name_any(), &pp, &Patch::Apply(&pdb))
                .await?;
        }
        if let Some(policy) = &self.defaults.network_policy {
            let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), ns);
            for component in [Component::Gateway, Component::Worker] {
                let np = workloads::network_policy(sale, component, policy);
                policies
                    .patch(&np.name_any(), &pp, &Patch::Apply(&np))
                    .await?;
            }
        }
        Ok(())
    }

    /// Scales the sale's Deployments that exist, creating nothing (a merge
    /// patch of a missing object is refused, never turned into a create).
    /// A failure only delays the scale-down: the clean-up goes on.
    async fn scale_existing(&self, ns: &str, sale: &FlashSale, gateway: i32, worker: i32) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        for (component, replicas) in [(Component::Gateway, gateway), (Component::Worker, worker)] {
            let name = workloads::child_name(&sale.name_any(), component);
            let patch = json!({"spec": {"replicas": replicas}});
            match deployments
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(deployment = %name, error = %e, "cannot scale"),
            }
        }
    }

    fn sales(&self, sale: &FlashSale) -> Api<FlashSale> {
        Api::namespaced(
            self.client.clone(),
            sale.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    async fn record(&self, sale: &FlashSale, note: &Note) {
        let ev = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(note.message.clone()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &sale.object_ref(&())).await {
            tracing::warn!(reason = note.reason, error = %e, "cannot record event");
        }
    }
}

/// Removes what a deleted, drained sale leaves in RabbitMQ and Redis;
/// false while its workers are still attached to the orders queue.
/// The queues go first: the Redis keys are what tells the plan the sale
/// was seeded, so they stay until nothing else is left.
pub async fn clean_up(
    backends: &Backends,
    urls: &BackendUrls,
    r: &SaleRef,
    redis: &mut RedisConn,
    notes: &mut Vec<Note>,
) -> Result<bool> {
    let channel = backends.amqp(urls).await?;
    let removal = amqp::remove_queues(&channel, r, backends.queue_type).await?;
    if let QueueRemoval::InUse {
        consumers,
        messages,
    } = removal
    {
        notes.push(Note {
            warning: false,
            reason: "WaitingForWorkers",
            message: format!(
                "queue {} still has {consumers} consumer(s) and {messages} message(s); its queues and Redis keys are removed once the workers stop",
                amqp::orders_queue(r)
            ),
        });
        return Ok(false);
    }
    if let QueueRemoval::DeadLettersKept(n) = removal {
        notes.push(Note {
            warning: true,
            reason: "DeadLettersKept",
            message: format!(
                "{n} message(s) that could never be stored stay in queue {}; read them, then delete the queue",
                amqp::dead_letter_queue(r)
            ),
        });
    }
    stock::delete_sale(redis, r).await?;
    notes.push(Note {
        warning: false,
        reason: "CleanedUp",
        message: "removed the sale's Redis keys and queues; orders stay in PostgreSQL".to_owned(),
    });
    Ok(true)
}

/// The sale was in Redis when observed and gone when the seed ran: the
/// next reconcile reports it lost.
#[derive(Debug, thiserror::Error)]
#[error(
    "sale {0} vanished from Redis between its observation and its update; it is not created again, which would sell its sold units a second time"
)]
pub struct SaleVanished(pub SaleRef);

/// Carries out the plan's store actions (seed, close, rebuild of a lost
/// sale) and returns the events they deserve, with the warnings a first
/// seed brings: holds confirmed without a token, a replica wait that
/// cannot be met or is missing.
pub async fn apply_to_stores(
    backends: &Backends,
    urls: &BackendUrls,
    redis: &mut RedisConn,
    sale: &FlashSale,
    plan: &Plan,
) -> Result<Vec<Note>> {
    let r = sale_ref(sale)?;
    let mut notes = apply_to_redis(redis, &r, plan).await?;
    notes.extend(recover_lost_sale(backends, urls, redis, sale, plan).await?);
    if plan.draw {
        notes.extend(draw(redis, &r, urls).await?);
    }
    if notes.iter().any(|n| n.reason == "Seeded") {
        if sale.spec.hold.seconds > 0 && urls.confirm_token.is_none() {
            notes.push(Note {
                warning: true,
                reason: "ConfirmsOpen",
                message: "orders are held for payment, but the gateways take confirms without a token: anyone who knows an order id may confirm it unpaid; set backends.confirmToken (or CONFIRM_TOKEN in the sale's own Secret) and give it to the payment service".to_owned(),
            });
        }
        notes.extend(replica_notes(redis, urls).await);
    }
    Ok(notes)
}

/// The event of a lottery seed made now: the draw is committed to.
pub fn committed(made: &crate::backends::MadeKeys, observed: &Observed) -> Option<Note> {
    made.lottery_seed.then(|| Note {
        warning: false,
        reason: "DrawCommitted",
        message: format!(
            "the lottery's seed is made and kept secret until the draw; its SHA-256 is in status.lottery.commitment: {}",
            observed
                .kept_lottery_seed
                .as_deref()
                .and_then(crate::backends::hex_seed)
                .map(|s| flashsale_store::queue::commitment(&s))
                .unwrap_or_default()
        ),
    })
}

/// Makes a lottery's draw from the sale's seed, once it started.
async fn draw(redis: &mut RedisConn, r: &SaleRef, urls: &BackendUrls) -> Result<Vec<Note>> {
    let seed = urls
        .lottery_seed
        .as_deref()
        .and_then(crate::backends::hex_seed)
        .ok_or_else(|| Error::config(format!("sale {r} has a lottery but no seed to draw with")))?;
    Ok(match flashsale_store::queue::draw(redis, r, &seed).await? {
        flashsale_store::queue::Draw::Made(n) => vec![Note {
            warning: false,
            reason: "DrawRevealed",
            message: format!(
                "the lottery is drawn over the {n} buyers who joined before the start; its seed is in status.lottery.seed (flashsale-operator verify-lottery checks the order)"
            ),
        }],
        _ => Vec::new(),
    })
}

/// Seeds, restocks and opens or closes the sale in Redis as planned;
/// returns the events that deserve a note. A Redis that may evict the
/// sale's keys is refused before anything is written.
async fn apply_to_redis(redis: &mut RedisConn, r: &SaleRef, plan: &Plan) -> Result<Vec<Note>> {
    let mut notes = Vec::new();
    if let Some(seed) = &plan.seed {
        redis
            .check_keeps_sale_keys(r)
            .await
            .map_err(|e| Error::Redis(e).context(format!("sale {r} cannot run on this Redis")))?;
        let report = stock::seed(redis, r, seed, plan.seed_mode).await?;
        match report.outcome {
            SeedOutcome::Missing => return Err(SaleVanished(r.clone()).into()),
            SeedOutcome::Created => notes.push(Note {
                warning: false,
                reason: "Seeded",
                message: format!("{} units in stock", report.stock),
            }),
            SeedOutcome::Restocked => notes.push(Note {
                warning: false,
                reason: "Restocked",
                message: format!(
                    "stock raised to {}, {} remaining",
                    report.stock, report.remaining
                ),
            }),
            _ => {}
        }
    }
    if let Some(closed) = plan.closed {
        stock::set_closed(redis, r, closed).await?;
    }
    Ok(notes)
}

/// How much earlier than the FlashSale's creation an order may be stamped
/// and still count as the sale's when it is rebuilt.
const LEDGER_CLOCK_MARGIN_MS: i64 = 15 * 60 * 1000;

/// For a sale Redis lost: tells so the first time, and rebuilds it from
/// the orders ledger when the plan says so.
async fn recover_lost_sale(
    backends: &Backends,
    urls: &BackendUrls,
    redis: &mut RedisConn,
    sale: &FlashSale,
    plan: &Plan,
) -> Result<Vec<Note>> {
    let r = sale_ref(sale)?;
    if let Some(c) = plan.redis_lost() {
        return Ok(if reported_lost(sale) {
            Vec::new()
        } else {
            vec![Note {
                warning: true,
                reason: REDIS_STATE_LOST,
                message: c.message.clone(),
            }]
        });
    }
    let Some(cfg) = &plan.restore else {
        return Ok(Vec::new());
    };
    redis
        .check_keeps_sale_keys(&r)
        .await
        .map_err(|e| Error::Redis(e).context(format!("sale {r} cannot run on this Redis")))?;
    // Orders carry Redis's clock, the creation time the API server's: the
    // margin keeps a skew between the two from leaving this sale's first
    // orders out (which would sell their units again). Orders of an earlier
    // sale of the same name within it count too, which only sells less.
    let since_ms = sale
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond() - LEDGER_CLOCK_MARGIN_MS);
    let pool = backends.pg(urls).await?;
    let ledger = flashsale_common::db::ledger_state(&pool, &r, since_ms)
        .await
        .map_err(|e| {
            Error::from(e).context(format!("cannot read the orders of sale {r} in PostgreSQL"))
        })?;
    let Some(report) = stock::restore(redis, &r, cfg, &ledger).await? else {
        return Ok(Vec::new());
    };
    Ok(vec![Note {
        warning: true,
        reason: "Restored",
        message: format!(
            "rebuilt from the orders in PostgreSQL: {} units in stock, {} sold, {} on hold in {} orders, {} remaining; per-user counts restored for {} buyers; idempotency keys of earlier orders are not kept",
            report.stock,
            ledger.confirmed_units,
            ledger.reserved_units(),
            ledger.holds.len(),
            report.remaining,
            ledger.users.len(),
        ),
    }])
}

/// The sale in Redis after the plan was applied, for the status.
pub async fn read_stock(
    backends: &Backends,
    urls: &BackendUrls,
    r: &SaleRef,
) -> Result<Option<StockSnapshot>> {
    let mut redis = backends.redis(urls).await?;
    Ok(stock::read(&mut redis, r).await?)
}

/// Replaces the finalizer list; the resourceVersion makes it fail instead of
/// overwriting a concurrent change.
async fn set_finalizers(
    sales: &Api<FlashSale>,
    sale: &FlashSale,
    finalizers: Vec<String>,
) -> kube::Result<()> {
    sales
        .patch(
            &sale.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": sale.resource_version(),
            }})),
        )
        .await
        .map(|_| ())
}

/// Warnings about the replica wait when a sale is seeded: its gateways
/// would wait for more replicas than the primary has (every purchase would
/// get 503), or reach Redis through Sentinel without waiting (a failover
/// may lose reservations whose orders went out).
async fn replica_notes(redis: &mut RedisConn, urls: &BackendUrls) -> Vec<Note> {
    match urls.redis_wait_replicas {
        Some(required) => match redis.connected_replicas().await {
            Ok(Some(n)) if n < required => vec![Note {
                warning: true,
                reason: "TooFewRedisReplicas",
                message: format!(
                    "the gateways wait for {required} Redis replica(s) before an order goes out, but the primary has {n}: every purchase gets 503 until enough are attached"
                ),
            }],
            _ => Vec::new(),
        },
        None if redis.is_sentinel() => vec![Note {
            warning: true,
            reason: "NoReplicaWait",
            message: "Redis is reached through Sentinel, but the gateways do not wait for replicas: a failover may lose reservations whose orders already went out, and sell those units twice; set backends.redisWaitReplicas to 1 (or REDIS_WAIT_REPLICAS in the sale's own Secret)".to_owned(),
        }],
        None => Vec::new(),
    }
}
