//! Planning: what a FlashSale should look like now, as a pure function of
//! the resource, what was observed of the world and the time. No I/O here;
//! `apply` carries the plan out.

use flashsale_api::sale::{FlashSale, Phase, name_problem};
use flashsale_common::db::LedgerCounts;
use flashsale_store::stock::{SeedConfig, SeedMode, StockSnapshot};
use std::time::Duration;

/// How often counts are refreshed while buyers may be active.
pub const ACTIVE_REFRESH: Duration = Duration::from_secs(5);
/// How often a quiet sale (scheduled, ended, invalid) is looked at.
pub const IDLE_REFRESH: Duration = Duration::from_secs(30);
/// How often a sale waiting to drain is looked at.
pub const DRAIN_REFRESH: Duration = Duration::from_secs(2);

/// Annotation that lets the operator rebuild a sale Redis lost from the
/// orders in PostgreSQL (value `true`).
pub const RESTORE_ANNOTATION: &str = "flashsale.io/restore-from-ledger";
/// Reason of the `Seeded=False` condition of a sale Redis lost.
pub const REDIS_STATE_LOST: &str = "RedisStateLost";
/// How long the sale's orders in PostgreSQL must have stayed unchanged
/// before a lost sale is rebuilt from them: a worker's batch that was taken
/// from the queue but not committed yet is not in the queue's count.
pub const LEDGER_QUIET_MS: i64 = 10_000;

/// Availability of one of the sale's Deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Workload {
    pub available: i32,
}

/// What `observe` found before planning.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    /// The sale in Redis; None when never seeded (or already cleaned up).
    pub stock: Option<StockSnapshot>,
    /// Messages waiting in the sale's orders queue; None when unknown.
    pub queued: Option<u32>,
    /// Messages in the sale's dead-letter queue; None when unknown.
    pub dead_letters: Option<u32>,
    /// Orders reserved in Redis and not yet confirmed by RabbitMQ.
    pub outbox: Option<i64>,
    /// The sale's orders stored in PostgreSQL; None when unknown.
    pub ledger: Option<LedgerCounts>,
    pub gateway: Option<Workload>,
    pub worker: Option<Workload>,
    /// What the operator's own rules refuse (an image the cluster admin
    /// does not allow, an object under the sale's names that belongs to
    /// someone else): the sale is Invalid and nothing of it is created.
    pub refused: Vec<flashsale_api::sale::SpecProblem>,
    /// The confirm token kept in the sale's own `<sale>-backends` Secret.
    pub kept_confirm_token: Option<String>,
    /// The pass key and lottery seed kept there.
    pub kept_pass_key: Option<String>,
    pub kept_lottery_seed: Option<String>,
    /// The waiting room's counts; None for a sale without one, or unknown.
    pub queue: Option<flashsale_store::queue::QueueCounts>,
}

impl Plan {
    /// The `Seeded=False` condition of a sale Redis lost, when it is one.
    pub fn redis_lost(&self) -> Option<&ConditionPlan> {
        self.conditions
            .iter()
            .find(|c| c.type_ == "Seeded" && c.reason == REDIS_STATE_LOST)
    }
}

impl Observed {
    /// Every accepted order is in PostgreSQL: nothing waits in the outbox,
    /// the queue, a worker's unacknowledged batch, or as an unexpired hold.
    pub fn drained(&self) -> bool {
        self.outbox == Some(0)
            && self.queued == Some(0)
            && self
                .stock
                .as_ref()
                .is_none_or(|s| s.reserved == 0 && self.unstored() == Some(0))
    }

    /// Units stored in PostgreSQL, expired orders excluded.
    pub fn persisted(&self) -> Option<i64> {
        self.ledger.as_ref().map(|l| l.units - l.expired_units)
    }

    /// Units sold or expired in Redis whose latest record is not yet in
    /// PostgreSQL: queued, or in a worker's batch not yet committed. None
    /// when either side is unknown. The ledger may hold more (orders of an
    /// earlier sale of the same name), never counted as missing.
    pub fn unstored(&self) -> Option<i64> {
        let (s, l) = (self.stock.as_ref()?, self.ledger.as_ref()?);
        Some((s.sold - l.confirmed_units).max(0) + (s.expired - l.expired_units).max(0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionPlan {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub phase: Phase,
    /// Seed or update the sale in Redis with this (idempotent).
    pub seed: Option<SeedConfig>,
    /// Whether that seed may create the sale: only when it was never
    /// seeded and no order of it is known. Otherwise a sale missing when
    /// the seed runs was lost, and the script writes nothing.
    pub seed_mode: SeedMode,
    /// Rebuild the sale, which Redis lost, from the orders ledger with this
    /// configuration (never together with `seed`).
    pub restore: Option<SeedConfig>,
    /// Set the sale's closed flag (deletion, invalid spec).
    pub closed: Option<bool>,
    /// Make a lottery's draw: the sale started and it is not drawn yet.
    pub draw: bool,
    /// Buyers may join the sale's line now (for the QueueOpened event).
    pub queue_open: bool,
    pub gateway_replicas: i32,
    pub worker_replicas: i32,
    /// The sale is being deleted and drained: remove its Redis keys and
    /// then the finalizer.
    pub cleanup: bool,
    /// Create or update the sale's objects (Secret, Deployments, Service,
    /// disruption budgets). When false, only the Deployments that exist are
    /// scaled: a deleted sale (its namespace may be terminating and take no
    /// new object), or a name no Service can be named after.
    pub create_children: bool,
    pub conditions: Vec<ConditionPlan>,
    /// Reconcile again after this long at the latest: the next window
    /// boundary to the millisecond, or a refresh.
    pub requeue_after: Duration,
}

fn ms_until(now_ms: i64, at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms - now_ms).unwrap_or(0))
}

fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> ConditionPlan {
    ConditionPlan {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

fn workload_condition(
    type_: &'static str,
    what: &str,
    want: i32,
    seen: Option<Workload>,
) -> ConditionPlan {
    match seen {
        _ if want == 0 => cond(
            type_,
            true,
            "ScaledToZero",
            format!("no {what} pods are needed"),
        ),
        None => cond(
            type_,
            false,
            "Creating",
            format!("the {what} Deployment is being created"),
        ),
        Some(w) if w.available >= want => cond(
            type_,
            true,
            "Available",
            format!("{}/{want} {what} pods available", w.available),
        ),
        Some(w) => cond(
            type_,
            false,
            "Progressing",
            format!("{}/{want} {what} pods available", w.available),
        ),
    }
}

/// The sale was in Redis when this FlashSale's status was last written (or
/// was found lost then): a sale missing from Redis now was lost, not never
/// seeded. The status belongs to this object, so a sale deleted and
/// created again under the same name starts afresh.
pub fn was_in_redis(sale: &FlashSale) -> bool {
    sale.status.as_ref().is_some_and(|s| s.remaining.is_some()) || reported_lost(sale)
}

/// The sale's status already says that Redis lost it.
pub fn reported_lost(sale: &FlashSale) -> bool {
    sale.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Seeded" && c.reason == REDIS_STATE_LOST)
    })
}

/// How much earlier than the FlashSale's creation an order in the ledger may
/// be stamped (by Redis's clock) and still count as one of this sale's when
/// deciding whether it may be created: a skew between Redis's clock and the
/// API server's is allowed for, an order of an earlier sale of the same name
/// a minute older is not taken for one of this sale's.
pub const SEED_CLOCK_MARGIN_MS: i64 = 60_000;

/// Orders of this sale are queued or stored: Redis held it, even if the
/// status never said so (a status write that failed after the first seed).
fn orders_known(sale: &FlashSale, observed: &Observed) -> bool {
    let since = sale
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond() - SEED_CLOCK_MARGIN_MS);
    observed.queued.is_some_and(|n| n > 0)
        || observed
            .ledger
            .as_ref()
            .and_then(|l| l.last_reserved_ms)
            .is_some_and(|ms| since.is_none_or(|s| ms >= s))
}

fn wants_restore(sale: &FlashSale) -> bool {
    sale.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESTORE_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// What must happen before a lost sale can be rebuilt from the ledger:
/// every accepted order stored in PostgreSQL (none queued, none in a dead
/// letter, none in a worker's batch), so that nothing sold is left out.
fn restore_blockers(observed: &Observed) -> Vec<String> {
    let mut waits = Vec::new();
    match observed.queued {
        Some(0) => {}
        Some(n) => waits.push(format!("the {n} queued orders are stored")),
        None => waits.push("RabbitMQ can be read".to_owned()),
    }
    match observed.dead_letters {
        Some(0) => {}
        Some(n) => waits.push(format!(
            "the {n} dead letters are stored (`flashsale-operator redrive`)"
        )),
        None => {}
    }
    match &observed.ledger {
        None => waits.push("PostgreSQL can be read".to_owned()),
        Some(l) => match l.idle_ms {
            Some(ms) if ms < LEDGER_QUIET_MS => waits.push(format!(
                "no order was stored for {} s (last {} ms ago)",
                LEDGER_QUIET_MS / 1000,
                ms.max(0)
            )),
            _ => {}
        },
    }
    waits
}

/// Plans one reconcile of `sale`.
pub fn plan(sale: &FlashSale, observed: &Observed, now_ms: i64) -> Plan {
    let spec = &sale.spec;
    let deleting = sale.metadata.deletion_timestamp.is_some();
    let name_problem = name_problem(sale.metadata.name.as_deref().unwrap_or_default());
    let mut problems = spec.problems();
    problems.extend(name_problem.clone());
    problems.extend(observed.refused.iter().cloned());
    let drained = observed.drained();
    let start_ms = spec.window.start.as_millisecond();
    let end_ms = spec.window.end.as_millisecond();
    let mut conditions = Vec::new();

    let drain_condition = |conditions: &mut Vec<ConditionPlan>| {
        conditions.push(if drained {
            cond("Drained", true, "Drained", "every accepted order is stored")
        } else {
            cond(
                "Drained",
                false,
                "OrdersInFlight",
                format!(
                    "{} awaiting RabbitMQ, {} queued for the worker, {} units not yet in PostgreSQL, {} units on hold{}",
                    observed.outbox.map_or("?".into(), |n| n.to_string()),
                    observed.queued.map_or("?".into(), |n| n.to_string()),
                    observed.unstored().map_or("?".into(), |n| n.to_string()),
                    observed.stock.as_ref().map_or(0, |s| s.reserved),
                    match observed.dead_letters {
                        Some(n) if n > 0 => format!(
                            "; {n} {} the worker could not store in the sale's dead-letter queue (`flashsale-operator redrive` returns them once the cause is fixed)",
                            if n == 1 { "message" } else { "messages" }
                        ),
                        _ => String::new(),
                    },
                ),
            )
        });
    };

    // Deleted, or a spec that cannot run: close at once, keep the worker
    // until every accepted order is stored.
    if deleting || !problems.is_empty() {
        let seeded = observed.stock.is_some();
        // Orders may wait in the queue even when Redis lost the sale.
        let worker_needed = (seeded || observed.queued.is_some_and(|n| n > 0)) && !drained;
        // Gateways re-publish the outbox and settle open holds: buyers may
        // still pay for what they hold, and unpaid holds expire at their
        // deadline, which no one else does.
        let holds_open = observed.stock.as_ref().is_some_and(|s| s.reserved > 0);
        let gateway_needed = seeded && (observed.outbox.is_none_or(|n| n > 0) || holds_open);
        let gateway_replicas = if gateway_needed {
            spec.gateway.replicas.max(1)
        } else {
            0
        };
        let worker_replicas = if worker_needed || gateway_replicas > 0 {
            spec.worker.replicas.max(1)
        } else {
            0
        };
        let (phase, reason, message) = if deleting {
            (
                Phase::Ended,
                "Deleting",
                "the sale is being deleted; waiting for the orders to drain".to_owned(),
            )
        } else {
            let msg = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; ");
            (Phase::Invalid, "InvalidSpec", msg)
        };
        conditions.push(cond("Ready", false, reason, message.clone()));
        // A sale Redis lost stays known as lost, so that fixing the spec
        // does not seed it again with its full stock.
        conditions.push(if !seeded && was_in_redis(sale) {
            cond(
                "Seeded",
                false,
                REDIS_STATE_LOST,
                format!("the sale is gone from Redis though it ran there; {message}"),
            )
        } else {
            cond(
                "Seeded",
                observed.stock.is_some() && !deleting,
                reason,
                message,
            )
        });
        conditions.push(workload_condition(
            "GatewayAvailable",
            "gateway",
            gateway_replicas,
            observed.gateway,
        ));
        conditions.push(workload_condition(
            "WorkerAvailable",
            "worker",
            worker_replicas,
            observed.worker,
        ));
        drain_condition(&mut conditions);
        return Plan {
            phase,
            seed: None,
            seed_mode: SeedMode::Update,
            restore: None,
            closed: observed.stock.as_ref().map(|_| true),
            draw: false,
            queue_open: false,
            gateway_replicas,
            worker_replicas,
            cleanup: deleting && drained,
            create_children: !deleting && name_problem.is_none() && observed.refused.is_empty(),
            conditions,
            requeue_after: if drained { IDLE_REFRESH } else { DRAIN_REFRESH },
        };
    }

    // Seed from the spec; a stock below what is already committed is
    // refused, the rest of the spec still applies.
    let mut seed = SeedConfig::from(&spec.clone());
    let committed = observed.stock.as_ref().map_or(0, |s| s.reserved + s.sold);
    let refused_stock = observed.stock.is_some() && spec.stock < committed;
    if refused_stock && let Some(s) = &observed.stock {
        seed.stock = s.stock;
    }
    let remaining = match &observed.stock {
        Some(s) => s.remaining + (seed.stock - s.stock),
        None => seed.stock,
    };
    let lost = observed.stock.is_none() && (was_in_redis(sale) || orders_known(sale, observed));
    // Never seeded as far as the status knows, and the ledger unreadable:
    // whether orders of the sale exist (and Redis lost it) is unknown.
    let history_unknown = observed.stock.is_none() && !lost && observed.ledger.is_none();
    let restore_waits = if lost {
        restore_blockers(observed)
    } else {
        Vec::new()
    };
    let restoring = lost && wants_restore(sale) && restore_waits.is_empty();
    // A lost sale's units: what the ledger holds as sold or on hold.
    let remaining = match (&observed.ledger, lost) {
        (Some(l), true) => remaining - (l.units - l.expired_units),
        _ => remaining,
    };

    let phase = Phase::at(flashsale_api::sale::Moment {
        now_ms,
        start_ms,
        end_ms,
        paused: spec.paused,
        closed: false,
        remaining,
    });

    // Scale: full size until the sale ended and drained; then the gateway
    // goes first, the worker once no gateway pod is left.
    let (gateway_replicas, worker_replicas) = if phase != Phase::Ended {
        (spec.gateway.replicas, spec.worker.replicas)
    } else if !drained {
        (spec.gateway.replicas.max(1), spec.worker.replicas.max(1))
    } else {
        let gateway_gone = observed.gateway.is_none_or(|g| g.available == 0);
        (
            0,
            if gateway_gone {
                0
            } else {
                spec.worker.replicas.max(1)
            },
        )
    };

    let seeded = if restoring {
        cond(
            "Seeded",
            true,
            "Restored",
            "rebuilt from the orders in PostgreSQL after Redis lost the sale",
        )
    } else if lost {
        let mut message = String::from(
            "the sale is gone from Redis though it ran there (Redis restarted without its data, or spec.backends names another Redis); it is not seeded again, which would sell the units already sold a second time, and buyers get 404 meanwhile",
        );
        if wants_restore(sale) {
            message.push_str(&format!(
                "; it is rebuilt from the orders in PostgreSQL once {}",
                restore_waits.join(" and ")
            ));
        } else {
            message.push_str(&format!(
                "; to rebuild it from the orders in PostgreSQL: kubectl -n {} annotate flashsale {} {RESTORE_ANNOTATION}=true",
                sale.metadata.namespace.as_deref().unwrap_or("default"),
                sale.metadata.name.as_deref().unwrap_or_default(),
            ));
        }
        cond("Seeded", false, REDIS_STATE_LOST, message)
    } else if history_unknown {
        cond(
            "Seeded",
            false,
            "LedgerUnknown",
            "the sale is seeded once its orders in PostgreSQL can be counted: an order of it there would mean Redis lost the sale, which is then not seeded again",
        )
    } else if refused_stock {
        cond(
            "Seeded",
            false,
            "StockBelowCommitted",
            format!(
                "spec.stock {} is below the {committed} units already reserved or sold; set spec.stock to at least {committed}",
                spec.stock
            ),
        )
    } else {
        cond(
            "Seeded",
            true,
            "Seeded",
            format!("{} units in stock, {remaining} remaining", seed.stock),
        )
    };
    let gw = workload_condition(
        "GatewayAvailable",
        "gateway",
        gateway_replicas,
        observed.gateway,
    );
    let wk = workload_condition(
        "WorkerAvailable",
        "worker",
        worker_replicas,
        observed.worker,
    );
    let ready = seeded.status && gw.status && wk.status;
    let ready_reason = match phase {
        Phase::Scheduled => "Scheduled",
        Phase::Active => "Active",
        Phase::SoldOut => "SoldOut",
        Phase::Paused => "Paused",
        Phase::Ended => "Ended",
        Phase::Invalid => "InvalidSpec",
    };
    let ready_message = if ready {
        format!("the sale is {}", phase.as_str())
    } else {
        [&seeded, &gw, &wk]
            .iter()
            .filter(|c| !c.status)
            .map(|c| c.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    conditions.push(cond("Ready", ready, ready_reason, ready_message));
    conditions.push(seeded);
    conditions.push(gw);
    conditions.push(wk);
    drain_condition(&mut conditions);

    let admission = spec.admission.as_ref().filter(|a| a.queued());
    let queue_open_ms = admission.map(|a| start_ms - a.queue_lead_ms().unwrap_or(0));
    let boundary = [Some(start_ms), Some(end_ms), queue_open_ms]
        .into_iter()
        .flatten()
        .filter(|b| *b > now_ms)
        .min();
    let lottery = admission.is_some_and(|a| a.mode == flashsale_api::sale::AdmissionMode::Lottery);
    let draw = lottery
        && now_ms >= start_ms
        && observed.stock.is_some()
        && observed.queue.is_some_and(|q| q.drawn.is_none());
    let refresh = match phase {
        Phase::Active | Phase::SoldOut | Phase::Paused => ACTIVE_REFRESH,
        Phase::Ended if !drained || worker_replicas > 0 => DRAIN_REFRESH,
        _ => IDLE_REFRESH,
    };
    let refresh = if lost || history_unknown {
        DRAIN_REFRESH
    } else {
        refresh
    };
    let requeue_after = boundary.map_or(refresh, |b| ms_until(now_ms, b).min(refresh));
    let seeds = !lost && !history_unknown;

    Plan {
        phase,
        seed: seeds.then(|| seed.clone()),
        seed_mode: if observed.stock.is_none() && seeds {
            SeedMode::CreateOrUpdate
        } else {
            SeedMode::Update
        },
        restore: restoring.then_some(seed),
        closed: seeds.then_some(false),
        draw,
        queue_open: queue_open_ms.is_some_and(|at| now_ms >= at)
            && matches!(phase, Phase::Scheduled | Phase::Active | Phase::Paused),
        gateway_replicas,
        worker_replicas,
        cleanup: false,
        create_children: true,
        conditions,
        requeue_after,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flashsale_api::sale::FlashSale;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const START: i64 = 1_795_856_400_000; // 2026-11-28T09:00:00Z
    const END: i64 = START + 3_600_000;

    fn sale() -> FlashSale {
        let yaml = r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {name: drop, namespace: shop, uid: "0000-1111", generation: 3}
spec:
  product: {sku: SKU-1, name: Thing, price: "9.99", currency: EUR}
  stock: 100
  window: {start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}
  limits: {perUser: 2, perOrder: 2}
  gateway: {replicas: 3}
  worker: {replicas: 2}
"#;
        FlashSale::from_yaml_documents(yaml).expect("valid")[0].clone()
    }

    /// Counters of a sale open in the tests' window.
    pub(crate) fn snapshot(stock: i64, remaining: i64, reserved: i64, sold: i64) -> StockSnapshot {
        StockSnapshot {
            stock,
            remaining,
            reserved,
            sold,
            expired: 0,
            start_ms: START,
            end_ms: END,
            paused: false,
            closed: false,
            seq: 1,
            per_user: 2,
            per_order: 2,
            hold_ms: 0,
            now_ms: 0,
            admission: flashsale_store::stock::AdmissionConfig::open(START),
        }
    }

    fn running(remaining: i64) -> Observed {
        Observed {
            stock: Some(snapshot(100, remaining, 0, 100 - remaining)),
            queued: Some(0),
            dead_letters: Some(0),
            outbox: Some(0),
            ledger: Some(LedgerCounts {
                orders: 100 - remaining,
                units: 100 - remaining,
                confirmed_units: 100 - remaining,
                ..LedgerCounts::default()
            }),
            gateway: Some(Workload { available: 3 }),
            worker: Some(Workload { available: 2 }),
            refused: Vec::new(),
            kept_confirm_token: None,
            kept_pass_key: None,
            kept_lottery_seed: None,
            queue: None,
        }
    }

    /// A world where the sale has left no trace yet: not in Redis, no
    /// order in the ledger.
    fn nothing_yet() -> Observed {
        Observed {
            ledger: Some(LedgerCounts::default()),
            ..Observed::default()
        }
    }

    fn condition<'a>(p: &'a Plan, t: &str) -> &'a ConditionPlan {
        p.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn before_start_is_scheduled_and_wakes_at_the_opening() {
        let p = plan(&sale(), &nothing_yet(), START - 10_500);
        assert_eq!(p.phase, Phase::Scheduled);
        assert_eq!(p.seed.as_ref().map(|s| s.stock), Some(100));
        assert_eq!((p.gateway_replicas, p.worker_replicas), (3, 2));
        assert_eq!(p.requeue_after, Duration::from_millis(10_500));
        assert_eq!(p.closed, Some(false));
        assert!(
            !condition(&p, "Ready").status,
            "not ready before the Deployments exist"
        );
    }

    #[test]
    fn far_before_start_refreshes_then_wakes_on_time() {
        let p = plan(&sale(), &running(100), START - 3_600_000);
        assert_eq!(p.phase, Phase::Scheduled);
        assert_eq!(p.requeue_after, IDLE_REFRESH);
    }

    #[test]
    fn exactly_at_start_is_active() {
        let p = plan(&sale(), &running(100), START);
        assert_eq!(p.phase, Phase::Active);
        assert_eq!(p.requeue_after, ACTIVE_REFRESH);
        assert!(condition(&p, "Ready").status);
        assert_eq!(condition(&p, "Ready").reason, "Active");
    }

    #[test]
    fn one_millisecond_before_start_is_scheduled() {
        let p = plan(&sale(), &running(100), START - 1);
        assert_eq!(p.phase, Phase::Scheduled);
        assert_eq!(p.requeue_after, Duration::from_millis(1));
    }

    #[test]
    fn during_the_window_wakes_at_the_close() {
        let p = plan(&sale(), &running(40), END - 1_234);
        assert_eq!(p.phase, Phase::Active);
        assert_eq!(p.requeue_after, Duration::from_millis(1_234));
    }

    #[test]
    fn sold_out() {
        let p = plan(&sale(), &running(0), START + 1_000);
        assert_eq!(p.phase, Phase::SoldOut);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (3, 2));
    }

    #[test]
    fn restock_after_sold_out_reopens() {
        let mut s = sale();
        s.spec.stock = 150;
        let p = plan(&s, &running(0), START + 1_000);
        assert_eq!(p.phase, Phase::Active);
        assert_eq!(p.seed.as_ref().map(|c| c.stock), Some(150));
        assert!(condition(&p, "Seeded").message.contains("50 remaining"));
    }

    #[test]
    fn lowering_stock_below_sold_is_refused_with_the_fix() {
        let mut s = sale();
        s.spec.stock = 10;
        let p = plan(&s, &running(60), START + 1_000);
        assert_eq!(p.seed.as_ref().map(|c| c.stock), Some(100), "stock kept");
        let seeded = condition(&p, "Seeded");
        assert!(!seeded.status);
        assert_eq!(seeded.reason, "StockBelowCommitted");
        assert!(seeded.message.contains("at least 40"), "{}", seeded.message);
        assert!(!condition(&p, "Ready").status);
    }

    #[test]
    fn lowering_stock_above_sold_is_applied() {
        let mut s = sale();
        s.spec.stock = 50;
        let p = plan(&s, &running(60), START + 1_000);
        assert_eq!(p.seed.as_ref().map(|c| c.stock), Some(50));
        assert_eq!(p.phase, Phase::Active);
    }

    #[test]
    fn paused_and_resumed() {
        let mut s = sale();
        s.spec.paused = true;
        let p = plan(&s, &running(50), START + 1_000);
        assert_eq!(p.phase, Phase::Paused);
        assert_eq!(p.seed.as_ref().map(|c| c.paused), Some(true));
        assert_eq!((p.gateway_replicas, p.worker_replicas), (3, 2));
        s.spec.paused = false;
        let p = plan(&s, &running(50), START + 1_000);
        assert_eq!(p.phase, Phase::Active);
        assert_eq!(p.seed.as_ref().map(|c| c.paused), Some(false));
    }

    #[test]
    fn exactly_at_end_is_ended() {
        let p = plan(&sale(), &running(10), END);
        assert_eq!(p.phase, Phase::Ended);
    }

    #[test]
    fn after_end_with_orders_in_the_queue_keeps_everything_running() {
        let mut o = running(10);
        o.queued = Some(25);
        let p = plan(&sale(), &o, END + 1_000);
        assert_eq!(p.phase, Phase::Ended);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (3, 2));
        assert!(!condition(&p, "Drained").status);
        assert!(condition(&p, "Drained").message.contains("25 queued"));
        assert_eq!(p.requeue_after, DRAIN_REFRESH);
    }

    #[test]
    fn after_drain_the_gateway_goes_first_then_the_worker() {
        let p = plan(&sale(), &running(10), END + 1_000);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (0, 2));
        assert!(condition(&p, "Drained").status);
        let mut o = running(10);
        o.gateway = Some(Workload { available: 0 });
        let p = plan(&sale(), &o, END + 1_000);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (0, 0));
        assert_eq!(p.requeue_after, IDLE_REFRESH);
        assert!(condition(&p, "Ready").status, "{:?}", p.conditions);
    }

    #[test]
    fn unconfirmed_orders_in_the_outbox_are_not_drained() {
        let mut o = running(10);
        o.outbox = Some(3);
        let p = plan(&sale(), &o, END + 1_000);
        assert!(
            p.gateway_replicas > 0,
            "the gateway re-publishes its outbox"
        );
        assert!(!condition(&p, "Drained").status);
    }

    #[test]
    fn orders_a_worker_took_but_did_not_store_are_not_drained() {
        // The queue reads empty while a worker holds 4 units in a batch it
        // has not committed yet.
        let mut o = running(10);
        if let Some(l) = o.ledger.as_mut() {
            l.confirmed_units -= 4;
        }
        let p = plan(&sale(), &o, END + 1_000);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (3, 2));
        let drained = condition(&p, "Drained");
        assert!(!drained.status);
        assert!(
            drained.message.contains("4 units not yet in PostgreSQL"),
            "{}",
            drained.message
        );
        assert!(!drained.message.contains("dead-letter"));
        // An order that went to the dead-letter queue is never stored: the
        // sale stays undrained and the message says where to look.
        o.dead_letters = Some(1);
        let p = plan(&sale(), &o, END + 1_000);
        assert!(
            condition(&p, "Drained").message.ends_with(
                "; 1 message the worker could not store in the sale's dead-letter queue (`flashsale-operator redrive` returns them once the cause is fixed)"
            ),
            "{}",
            condition(&p, "Drained").message
        );
        // An unreadable ledger is not taken for a drained one.
        o.ledger = None;
        let p = plan(&sale(), &o, END + 1_000);
        assert!(!condition(&p, "Drained").status);
        assert!(condition(&p, "Drained").message.contains("? units not yet"));
        // An expiry not yet recorded keeps it from draining too.
        let mut o = running(10);
        if let Some(s) = o.stock.as_mut() {
            s.expired = 2;
        }
        assert_eq!(o.unstored(), Some(2));
        assert!(!o.drained());
        // Rows of an earlier sale of the same name never count as missing.
        let mut o = running(10);
        if let Some(l) = o.ledger.as_mut() {
            l.confirmed_units += 7;
            l.expired_units += 3;
        }
        assert_eq!(o.unstored(), Some(0));
        assert!(o.drained());
    }

    #[test]
    fn deleted_waits_for_the_drain_then_cleans_up() {
        let mut s = sale();
        s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut o = running(10);
        o.queued = Some(5);
        let p = plan(&s, &o, START + 1_000);
        assert_eq!(p.phase, Phase::Ended);
        assert_eq!(p.closed, Some(true));
        assert!(!p.cleanup);
        assert_eq!(p.gateway_replicas, 0, "nothing left to re-publish");
        assert!(p.worker_replicas > 0);
        assert!(p.seed.is_none());
        let p = plan(&s, &running(10), START + 1_000);
        assert!(p.cleanup);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (0, 0));
    }

    #[test]
    fn deleted_with_open_holds_keeps_a_gateway_to_settle_them() {
        let mut s = sale();
        s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut o = running(10);
        if let Some(st) = o.stock.as_mut() {
            st.reserved = 3;
            st.sold -= 3;
        }
        if let Some(l) = o.ledger.as_mut() {
            l.confirmed_units -= 3;
            l.reserved_units = 3;
        }
        let p = plan(&s, &o, START + 1_000);
        assert_eq!(p.closed, Some(true));
        assert!(!p.cleanup);
        assert!(
            p.gateway_replicas > 0,
            "a gateway confirms paid holds and expires unpaid ones"
        );
        assert!(p.worker_replicas > 0);
        assert!(condition(&p, "Drained").message.contains("3 units on hold"));
    }

    /// The sale as it was last reported: running in Redis.
    fn reported(mut sale: FlashSale) -> FlashSale {
        sale.status = Some(flashsale_api::sale::FlashSaleStatus {
            remaining: Some(60),
            sold: Some(40),
            ..Default::default()
        });
        sale
    }

    /// Redis has lost the sale; the orders are all in PostgreSQL.
    fn lost(idle_ms: i64) -> Observed {
        Observed {
            stock: None,
            ledger: Some(LedgerCounts {
                orders: 40,
                units: 40,
                confirmed_units: 40,
                idle_ms: Some(idle_ms),
                ..LedgerCounts::default()
            }),
            ..running(60)
        }
    }

    fn annotated(mut sale: FlashSale) -> FlashSale {
        sale.metadata.annotations = Some(
            [(RESTORE_ANNOTATION.to_owned(), "true".to_owned())]
                .into_iter()
                .collect(),
        );
        sale
    }

    #[test]
    fn a_sale_redis_lost_is_not_seeded_again() {
        let p = plan(&reported(sale()), &lost(60_000), START + 1_000);
        assert_eq!(p.seed, None, "a fresh seed would sell the 40 units again");
        assert_eq!(p.restore, None);
        assert_eq!(p.closed, None);
        let seeded = condition(&p, "Seeded");
        assert_eq!((seeded.status, seeded.reason), (false, "RedisStateLost"));
        assert!(
            seeded.message.contains(
                "kubectl -n shop annotate flashsale drop flashsale.io/restore-from-ledger=true"
            ),
            "{}",
            seeded.message
        );
        assert!(!condition(&p, "Ready").status);
        assert_eq!(p.requeue_after, DRAIN_REFRESH);
        assert_eq!(
            (p.gateway_replicas, p.worker_replicas),
            (3, 2),
            "the workers go on storing what was queued"
        );
    }

    #[test]
    fn a_sale_never_seeded_is_seeded() {
        let p = plan(&sale(), &lost(60_000), START + 1_000);
        assert_eq!(p.seed.as_ref().map(|s| s.stock), Some(100));
        assert_eq!(p.restore, None);
    }

    #[test]
    fn only_a_sale_never_seeded_may_be_created_by_the_seed() {
        let p = plan(&sale(), &running(60), START + 1_000);
        assert_eq!(p.seed_mode, SeedMode::Update, "lost meanwhile: not created");
        let never = Observed {
            stock: None,
            ledger: Some(LedgerCounts::default()),
            ..running(100)
        };
        let p = plan(&sale(), &never, START + 1_000);
        assert_eq!(p.seed_mode, SeedMode::CreateOrUpdate);
        assert!(p.seed.is_some());
    }

    #[test]
    fn orders_in_the_ledger_mark_a_sale_lost_though_its_status_never_said_it_ran() {
        // The status write after the first seed failed, then Redis lost
        // the sale: the ledger still tells it ran.
        let mut s = sale();
        s.metadata.creation_timestamp = Some(Time(
            jiff::Timestamp::from_millisecond(START - 3_600_000).expect("valid"),
        ));
        let mut o = lost(60_000);
        if let Some(l) = o.ledger.as_mut() {
            l.last_reserved_ms = Some(START + 500);
        }
        let p = plan(&s, &o, START + 1_000);
        assert_eq!((&p.seed, &p.restore), (&None, &None));
        assert_eq!(condition(&p, "Seeded").reason, REDIS_STATE_LOST);
        // Orders of an earlier sale of the same name, older than this one
        // by more than the clock margin, are not this sale's.
        if let Some(l) = o.ledger.as_mut() {
            l.last_reserved_ms = Some(START - 3_600_000 - SEED_CLOCK_MARGIN_MS - 1);
        }
        let p = plan(&s, &o, START + 1_000);
        assert_eq!(p.seed_mode, SeedMode::CreateOrUpdate);
        assert!(p.seed.is_some());
        // Orders waiting in the queue tell the same as stored ones.
        let o = Observed {
            queued: Some(3),
            ..lost(60_000)
        };
        assert_eq!(plan(&s, &o, START + 1_000).seed, None);
    }

    #[test]
    fn a_first_seed_waits_until_the_ledger_can_be_read() {
        let o = Observed {
            stock: None,
            ledger: None,
            ..running(100)
        };
        let p = plan(&sale(), &o, START + 1_000);
        assert_eq!(p.seed, None);
        assert_eq!(condition(&p, "Seeded").reason, "LedgerUnknown");
        assert_eq!(p.requeue_after, DRAIN_REFRESH);
    }

    #[test]
    fn a_lost_sale_stays_lost_after_its_status_said_so() {
        let mut s = sale();
        s.status = Some(flashsale_api::sale::FlashSaleStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Seeded".into(),
                status: "False".into(),
                reason: "RedisStateLost".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        let p = plan(&s, &lost(60_000), START + 1_000);
        assert_eq!((p.seed.clone(), p.restore.clone()), (None, None));
    }

    #[test]
    fn an_annotated_lost_sale_is_rebuilt_once_every_order_is_stored() {
        let s = annotated(reported(sale()));
        let p = plan(&s, &lost(LEDGER_QUIET_MS), START + 1_000);
        assert_eq!(p.seed, None);
        assert_eq!(p.restore.as_ref().map(|c| c.stock), Some(100));
        assert_eq!(condition(&p, "Seeded").reason, "Restored");

        let waits = |o: Observed, what: &str| {
            let p = plan(&s, &o, START + 1_000);
            assert_eq!(p.restore, None, "{what}");
            assert_eq!(p.seed, None, "{what}");
            let c = condition(&p, "Seeded");
            assert_eq!(c.reason, "RedisStateLost", "{what}");
            assert!(c.message.contains(what), "{what}: {}", c.message);
        };
        waits(
            Observed {
                queued: Some(7),
                ..lost(60_000)
            },
            "the 7 queued orders are stored",
        );
        waits(
            Observed {
                dead_letters: Some(2),
                ..lost(60_000)
            },
            "the 2 dead letters are stored",
        );
        waits(
            Observed {
                ledger: None,
                ..lost(60_000)
            },
            "PostgreSQL can be read",
        );
        waits(
            lost(1_500),
            "no order was stored for 10 s (last 1500 ms ago)",
        );
    }

    #[test]
    fn a_lost_sale_reports_the_units_the_ledger_holds() {
        let mut o = lost(60_000);
        o.ledger = Some(LedgerCounts {
            units: 100,
            confirmed_units: 100,
            ..LedgerCounts::default()
        });
        assert_eq!(
            plan(&reported(sale()), &o, START + 1_000).phase,
            Phase::SoldOut
        );
    }

    #[test]
    fn a_lost_sale_stays_lost_while_its_spec_is_invalid() {
        let mut s = reported(sale());
        s.spec.window.end = s.spec.window.start;
        let p = plan(&s, &lost(60_000), START + 1_000);
        assert_eq!(p.phase, Phase::Invalid);
        assert_eq!(condition(&p, "Seeded").reason, "RedisStateLost");
        // The status written from that plan keeps the sale known as lost.
        let status =
            crate::status::desired_status(&s, &p, None, &lost(60_000), jiff::Timestamp::UNIX_EPOCH);
        s.status = Some(status);
        s.spec.window.end = sale().spec.window.end;
        let p = plan(&s, &lost(60_000), START + 1_000);
        assert_eq!((&p.seed, &p.restore), (&None, &None));
        assert_eq!(condition(&p, "Seeded").reason, "RedisStateLost");
    }

    #[test]
    fn a_deleted_sale_redis_lost_keeps_its_workers_while_orders_are_queued() {
        let mut s = reported(sale());
        s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let o = Observed {
            queued: Some(5),
            ..lost(60_000)
        };
        let p = plan(&s, &o, START + 1_000);
        assert_eq!(p.worker_replicas, 2);
        assert!(!p.cleanup);
        let p = plan(&s, &lost(60_000), START + 1_000);
        assert_eq!(p.worker_replicas, 0);
        assert!(p.cleanup);
    }

    #[test]
    fn invalid_spec_names_the_field_and_closes() {
        let mut s = sale();
        s.spec.limits.per_order = 5;
        let p = plan(&s, &running(50), START + 1_000);
        assert_eq!(p.phase, Phase::Invalid);
        assert!(p.seed.is_none());
        assert_eq!(p.closed, Some(true));
        let ready = condition(&p, "Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.contains("spec.limits.perOrder"),
            "{}",
            ready.message
        );
        assert_eq!(p.gateway_replicas, 0);
    }

    #[test]
    fn a_name_no_service_can_carry_is_invalid_and_creates_nothing() {
        for name in ["my.sale", "2027-drop", &"a".repeat(64)] {
            let mut s = sale();
            s.metadata.name = Some(name.to_owned());
            let p = plan(&s, &nothing_yet(), START);
            assert_eq!(p.phase, Phase::Invalid, "{name}");
            assert!(!p.create_children, "{name}");
            assert_eq!(p.seed, None);
            let ready = condition(&p, "Ready");
            assert!(
                ready.message.starts_with("metadata.name: "),
                "{}",
                ready.message
            );
        }
        let mut s = sale();
        s.metadata.name = Some("a".repeat(63));
        assert!(plan(&s, &nothing_yet(), START).create_children);
    }

    #[test]
    fn an_image_the_admin_refuses_makes_the_sale_invalid_and_creates_nothing() {
        let o = Observed {
            refused: vec![flashsale_api::sale::SpecProblem {
                field: "spec.gateway.image",
                message: "image \"evil\" is not allowed".into(),
            }],
            ..running(10)
        };
        let p = plan(&sale(), &o, START + 1_000);
        assert_eq!(p.phase, Phase::Invalid);
        assert!(!p.create_children);
        assert!(
            condition(&p, "Ready")
                .message
                .starts_with("spec.gateway.image: ")
        );
    }

    #[test]
    fn a_deleted_sale_creates_nothing() {
        let mut s = sale();
        s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert!(!plan(&s, &running(10), START + 1_000).create_children);
        assert!(plan(&sale(), &running(10), START + 1_000).create_children);
    }

    #[test]
    fn invalid_before_ever_seeded_touches_nothing_in_redis() {
        let mut s = sale();
        s.spec.window.end = s.spec.window.start;
        let p = plan(&s, &Observed::default(), START);
        assert_eq!(p.phase, Phase::Invalid);
        assert_eq!(p.closed, None);
        assert_eq!((p.gateway_replicas, p.worker_replicas), (0, 0));
    }

    /// The line: open `queueOpensBefore` ahead of the start (and a reconcile
    /// comes back then); a lottery is drawn once, at the start, over a sale
    /// that exists; a FIFO line is never drawn.
    #[test]
    fn a_line_opens_ahead_and_a_lottery_is_drawn_once_at_the_start() {
        use flashsale_store::queue::QueueCounts;
        let with_line = |mode: &str| {
            let mut s = sale();
            s.spec.admission = Some(
                serde_json::from_value(
                    serde_json::json!({"mode": mode, "queueOpensBefore": "10m"}),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            );
            s
        };
        let lottery = with_line("lottery");
        let undrawn = Observed {
            queue: Some(QueueCounts::default()),
            ..running(100)
        };
        let drawn = Observed {
            queue: Some(QueueCounts {
                drawn: Some(7),
                ..QueueCounts::default()
            }),
            ..running(100)
        };
        let opens = START - 600_000;
        let p = plan(&lottery, &undrawn, opens - 1_000);
        assert!(!p.queue_open && !p.draw);
        assert_eq!(
            p.requeue_after,
            Duration::from_millis(1_000),
            "back when the line opens"
        );
        let p = plan(&lottery, &undrawn, opens);
        assert!(p.queue_open && !p.draw, "open, not drawn before the start");
        assert!(plan(&lottery, &undrawn, START).draw, "drawn at the start");
        assert!(!plan(&lottery, &drawn, START + 5_000).draw, "once");
        let gone = Observed {
            stock: None,
            ..undrawn.clone()
        };
        assert!(
            !plan(&lottery, &gone, START).draw,
            "not over a sale Redis does not hold"
        );
        let fifo = with_line("fifo");
        assert!(!plan(&fifo, &undrawn, START).draw);
        assert!(plan(&fifo, &undrawn, opens).queue_open);
        assert!(
            !plan(&sale(), &running(100), START).queue_open,
            "no line, never open"
        );
    }
}
