//! The operator's Prometheus metrics.

use crate::plan::{Observed, Plan};
use flashsale_common::SaleRef;
use flashsale_common::metrics::{OutcomeLabel, latency_histogram};
use flashsale_common::sale::Phase;
use prometheus_client::encoding::EncodeLabelSet;
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
}

impl OperatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: latency_histogram(),
            unstored_units: Family::default(),
            ended_undrained: Family::default(),
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
        m
    }

    /// Records what one reconcile saw of `sale`.
    pub fn sale(&self, sale: &SaleRef, observed: &Observed, plan: &Plan) {
        let label = SaleLabel::from(sale);
        match observed.unstored() {
            Some(n) => {
                self.unstored_units.get_or_create(&label).set(n);
            }
            None => {
                self.unstored_units.remove(&label);
            }
        }
        let undrained = plan.phase == Phase::Ended && !observed.drained();
        self.ended_undrained
            .get_or_create(&label)
            .set(i64::from(undrained));
    }

    /// Forgets a sale that was deleted and released.
    pub fn forget(&self, sale: &SaleRef) {
        let label = SaleLabel::from(sale);
        self.unstored_units.remove(&label);
        self.ended_undrained.remove(&label);
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
