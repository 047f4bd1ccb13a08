//! The operator's Prometheus metrics.

use flashsale_common::metrics::{OutcomeLabel, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct OperatorMetrics {
    pub reconciles: Family<OutcomeLabel, Counter>,
    pub errors: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
}

impl OperatorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: latency_histogram(),
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
        m
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
