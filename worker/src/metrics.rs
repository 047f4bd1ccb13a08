//! The worker's Prometheus metrics.

use flashsale_common::metrics::latency_histogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct WorkerMetrics {
    pub batches: Counter,
    pub batch_size: Histogram,
    pub insert_latency: Histogram,
    pub orders_stored: Counter,
    pub duplicates: Counter,
    pub redeliveries: Counter,
    pub dead_letters: Counter,
    pub store_errors: Counter,
}

impl WorkerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Counter::default(),
            batch_size: Histogram::new([1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
            insert_latency: latency_histogram(),
            orders_stored: Counter::default(),
            duplicates: Counter::default(),
            redeliveries: Counter::default(),
            dead_letters: Counter::default(),
            store_errors: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("flashsale_worker");
        r.register("batches", "Batches committed", m.batches.clone());
        r.register("batch_size", "Messages per batch", m.batch_size.clone());
        r.register(
            "insert_duration_seconds",
            "Time to insert and commit one batch",
            m.insert_latency.clone(),
        );
        r.register(
            "orders_stored",
            "New order rows written",
            m.orders_stored.clone(),
        );
        r.register(
            "duplicates",
            "Orders already stored (redelivery or re-publish), skipped",
            m.duplicates.clone(),
        );
        r.register(
            "redeliveries",
            "Messages RabbitMQ delivered again",
            m.redeliveries.clone(),
        );
        r.register(
            "dead_letters",
            "Messages moved to the dead-letter queue",
            m.dead_letters.clone(),
        );
        r.register(
            "store_errors",
            "Batches that failed to commit and were returned to the queue",
            m.store_errors.clone(),
        );
        m
    }
}
