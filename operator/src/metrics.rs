//! The operator's Prometheus metrics.

use crate::plan::{Observed, Plan};
use flashsale_api::sale::Phase;
use flashsale_common::SaleRef;
use flashsale_common::metrics::{OutcomeLabel, latency_histogram};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaleLabel {
    pub namespace: String,
    pub name: String,
}

/// A sale and one label more: `state` for its unit counts, `phase` for
/// its phase, `component` for its Deployments' replicas.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SaleDetailLabel {
    pub namespace: String,
    pub name: String,
    key: &'static str,
    pub value: String,
}

impl SaleDetailLabel {
    /// One of [`UNIT_STATES`].
    pub fn state(sale: &SaleRef, state: &str) -> Self {
        Self::new(sale, "state", state)
    }

    pub fn phase(sale: &SaleRef, phase: Phase) -> Self {
        Self::new(sale, "phase", phase.as_str())
    }

    /// `gateway` or `worker`.
    pub fn component(sale: &SaleRef, component: &str) -> Self {
        Self::new(sale, "component", component)
    }

    fn new(sale: &SaleRef, key: &'static str, value: &str) -> Self {
        Self {
            namespace: sale.namespace.clone(),
            name: sale.name.clone(),
            key,
            value: value.to_owned(),
        }
    }
}

impl EncodeLabelSet for SaleDetailLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [
            ("namespace", self.namespace.as_str()),
            ("name", self.name.as_str()),
            (self.key, self.value.as_str()),
        ]
        .encode(encoder)
    }
}

/// Every unit count a sale has a `state` series for.
pub const UNIT_STATES: [&str; 6] = [
    "stock",
    "remaining",
    "reserved",
    "sold",
    "expired",
    "persisted",
];

const PHASES: [Phase; 6] = [
    Phase::Scheduled,
    Phase::Active,
    Phase::SoldOut,
    Phase::Paused,
    Phase::Ended,
    Phase::Invalid,
];

impl From<&SaleRef> for SaleLabel {
    fn from(r: &SaleRef) -> Self {
        SaleLabel {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        }
    }
}

pub struct OperatorMetrics {
    pub reconciles: Family<OutcomeLabel, Counter>,
    pub errors: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
    /// Per sale: units sold or expired in Redis not yet in PostgreSQL.
    pub unstored_units: Family<SaleLabel, Gauge>,
    /// Per sale: 1 while it has ended (or is being deleted) and is not
    /// drained, else 0.
    pub ended_undrained: Family<SaleLabel, Gauge>,
    /// Per sale and state: the unit counts of its status.
    pub units: Family<SaleDetailLabel, Gauge>,
    /// Per sale: orders waiting in its queue (not handed to a worker).
    pub queued_orders: Family<SaleLabel, Gauge>,
    /// Per sale: messages in its dead-letter queue.
    pub dead_letters: Family<SaleLabel, Gauge>,
    /// Per sale and phase: 1 for the phase it is in, 0 for the others.
    pub phase: Family<SaleDetailLabel, Gauge>,
    /// Per sale and component: the replicas its plan asks for.
    pub desired_replicas: Family<SaleDetailLabel, Gauge>,
    /// Per sale and component: the replicas available (ready) now.
    pub available_replicas: Family<SaleDetailLabel, Gauge>,
    /// Per sale: 1 while Redis has lost it and it is not rebuilt yet.
    pub redis_lost: Family<SaleLabel, Gauge>,
}

impl OperatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: latency_histogram(),
            unstored_units: Family::default(),
            ended_undrained: Family::default(),
            units: Family::default(),
            queued_orders: Family::default(),
            dead_letters: Family::default(),
            phase: Family::default(),
            desired_replicas: Family::default(),
            available_replicas: Family::default(),
            redis_lost: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("flashsale_operator");
        r.register(
            "reconciles",
            "Reconciles by phase reached",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            m.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes",
            m.duration.clone(),
        );
        r.register(
            "sale_unstored_units",
            "Units sold or expired in Redis whose latest record is not yet in PostgreSQL, per sale",
            m.unstored_units.clone(),
        );
        r.register(
            "sale_ended_undrained",
            "1 while a sale has ended (or is being deleted) and orders are still in flight",
            m.ended_undrained.clone(),
        );
        r.register(
            "sale_units",
            "Units of a sale by state, as in its status: stock, remaining, reserved (held, unpaid), sold, expired, persisted (in PostgreSQL)",
            m.units.clone(),
        );
        r.register(
            "sale_queued_orders",
            "Orders waiting in a sale's RabbitMQ queue",
            m.queued_orders.clone(),
        );
        r.register(
            "sale_dead_letters",
            "Messages in a sale's dead-letter queue, waiting for a redrive",
            m.dead_letters.clone(),
        );
        r.register(
            "sale_phase",
            "1 for the phase a sale is in, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "sale_desired_replicas",
            "Replicas of a sale's gateway or worker Deployment the operator asks for",
            m.desired_replicas.clone(),
        );
        r.register(
            "sale_available_replicas",
            "Available replicas of a sale's gateway or worker Deployment",
            m.available_replicas.clone(),
        );
        r.register(
            "sale_redis_lost",
            "1 while Redis has lost a running sale and the operator holds it back rather than selling its stock again",
            m.redis_lost.clone(),
        );
        m
    }

    /// Records what one reconcile saw of `sale`.
    pub fn sale(&self, sale: &SaleRef, observed: &Observed, plan: &Plan) {
        let label = SaleLabel::from(sale);
        set_or_remove(&self.unstored_units, &label, observed.unstored());
        let undrained = plan.phase == Phase::Ended && !observed.drained();
        self.ended_undrained
            .get_or_create(&label)
            .set(i64::from(undrained));
        let stock = observed.stock.as_ref();
        for state in UNIT_STATES {
            let units = match state {
                "stock" => stock.map(|s| s.stock),
                "remaining" => stock.map(|s| s.remaining),
                "reserved" => stock.map(|s| s.reserved),
                "sold" => stock.map(|s| s.sold),
                "expired" => stock.map(|s| s.expired),
                _ => observed.persisted(),
            };
            set_or_remove(&self.units, &SaleDetailLabel::state(sale, state), units);
        }
        set_or_remove(&self.queued_orders, &label, observed.queued.map(i64::from));
        set_or_remove(
            &self.dead_letters,
            &label,
            observed.dead_letters.map(i64::from),
        );
        self.redis_lost
            .get_or_create(&label)
            .set(i64::from(plan.redis_lost().is_some()));
        for phase in PHASES {
            self.phase
                .get_or_create(&SaleDetailLabel::phase(sale, phase))
                .set(i64::from(phase == plan.phase));
        }
        for (component, desired, seen) in [
            ("gateway", plan.gateway_replicas, observed.gateway),
            ("worker", plan.worker_replicas, observed.worker),
        ] {
            let label = SaleDetailLabel::component(sale, component);
            self.desired_replicas
                .get_or_create(&label)
                .set(i64::from(desired));
            set_or_remove(
                &self.available_replicas,
                &label,
                seen.map(|w| i64::from(w.available)),
            );
        }
    }

    /// Forgets a sale that was deleted and released.
    pub fn forget(&self, sale: &SaleRef) {
        let label = SaleLabel::from(sale);
        self.unstored_units.remove(&label);
        self.ended_undrained.remove(&label);
        self.queued_orders.remove(&label);
        self.dead_letters.remove(&label);
        self.redis_lost.remove(&label);
        for state in UNIT_STATES {
            self.units.remove(&SaleDetailLabel::state(sale, state));
        }
        for phase in PHASES {
            self.phase.remove(&SaleDetailLabel::phase(sale, phase));
        }
        for component in ["gateway", "worker"] {
            let label = SaleDetailLabel::component(sale, component);
            self.desired_replicas.remove(&label);
            self.available_replicas.remove(&label);
        }
    }

    pub fn reconciled(&self, phase: &str) {
        self.reconciles
            .get_or_create(&OutcomeLabel {
                outcome: phase.to_owned(),
            })
            .inc();
    }

    pub fn failed(&self, reason: &str) {
        self.errors
            .get_or_create(&OutcomeLabel {
                outcome: reason.to_owned(),
            })
            .inc();
    }
}

/// Sets a gauge to a known value; an unknown one is no series at all
/// rather than a misleading 0.
fn set_or_remove<L>(family: &Family<L, Gauge>, label: &L, value: Option<i64>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    match value {
        Some(v) => {
            family.get_or_create(label).set(v);
        }
        None => {
            family.remove(label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_common::db::LedgerCounts;
    use flashsale_store::stock::StockSnapshot;
    use std::time::Duration;

    fn plan(phase: Phase) -> Plan {
        Plan {
            phase,
            seed: None,
            seed_mode: flashsale_store::stock::SeedMode::Update,
            restore: None,
            closed: None,
            draw: false,
            queue_open: false,
            gateway_replicas: 3,
            worker_replicas: 1,
            cleanup: false,
            create_children: true,
            conditions: Vec::new(),
            requeue_after: Duration::ZERO,
        }
    }

    /// The samples of one sale, sorted.
    fn samples(registry: &Registry, name: &str) -> Vec<String> {
        let text = flashsale_common::metrics::render(registry);
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("flashsale_operator_sale_") && l.contains(name))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_sales_counts_are_exported_while_known_and_forgotten_with_it() {
        let mut registry = Registry::default();
        let m = OperatorMetrics::register(&mut registry);
        let sale = SaleRef::new("shop", "drop").expect("valid");
        let label = r#"namespace="shop",name="drop""#;

        // Nothing known yet: no counts at all rather than zeros.
        m.sale(&sale, &Observed::default(), &plan(Phase::Scheduled));
        let seen = samples(&registry, label);
        assert!(
            seen.iter().all(|l| !l.contains("_units{")
                && !l.contains("_queued_orders{")
                && !l.contains("_dead_letters{")),
            "{seen:?}"
        );
        assert!(seen.contains(&format!(
            "flashsale_operator_sale_phase{{{label},phase=\"Scheduled\"}} 1"
        )));

        let observed = Observed {
            gateway: Some(crate::plan::Workload { available: 2 }),
            stock: Some(StockSnapshot {
                expired: 1,
                ..crate::plan::tests::snapshot(10, 5, 1, 3)
            }),
            queued: Some(2),
            dead_letters: Some(1),
            ledger: Some(LedgerCounts {
                orders: 1,
                units: 1,
                confirmed_units: 1,
                ..LedgerCounts::default()
            }),
            ..Observed::default()
        };
        m.sale(&sale, &observed, &plan(Phase::Active));
        let seen = samples(&registry, label);
        for (state, units) in [
            ("stock", 10),
            ("remaining", 5),
            ("reserved", 1),
            ("sold", 3),
            ("expired", 1),
            ("persisted", 1),
        ] {
            let want =
                format!("flashsale_operator_sale_units{{{label},state=\"{state}\"}} {units}");
            assert!(seen.contains(&want), "{want} not in {seen:?}");
        }
        for want in [
            format!("flashsale_operator_sale_queued_orders{{{label}}} 2"),
            format!("flashsale_operator_sale_dead_letters{{{label}}} 1"),
            format!("flashsale_operator_sale_unstored_units{{{label}}} 3"),
            format!("flashsale_operator_sale_phase{{{label},phase=\"Active\"}} 1"),
            format!("flashsale_operator_sale_phase{{{label},phase=\"Scheduled\"}} 0"),
            format!("flashsale_operator_sale_redis_lost{{{label}}} 0"),
            format!("flashsale_operator_sale_desired_replicas{{{label},component=\"gateway\"}} 3"),
            format!(
                "flashsale_operator_sale_available_replicas{{{label},component=\"gateway\"}} 2"
            ),
        ] {
            assert!(seen.contains(&want), "{want} not in {seen:?}");
        }
        // The worker's Deployment was not seen: no available count.
        assert!(
            !seen
                .iter()
                .any(|l| l.contains("available_replicas{") && l.contains("worker")),
            "{seen:?}"
        );
        let phases = seen.iter().filter(|l| l.contains("_phase{")).count();
        assert_eq!(phases, PHASES.len(), "{seen:?}");

        let mut lost = plan(Phase::Active);
        lost.conditions.push(crate::plan::ConditionPlan {
            type_: "Seeded",
            status: false,
            reason: crate::plan::REDIS_STATE_LOST,
            message: String::new(),
        });
        m.sale(&sale, &Observed::default(), &lost);
        let want = format!("flashsale_operator_sale_redis_lost{{{label}}} 1");
        assert!(samples(&registry, label).contains(&want), "{want}");

        m.forget(&sale);
        assert_eq!(samples(&registry, label), Vec::<String>::new());
    }
}
