//! The gateway's Prometheus metrics.

use crate::publish::PublishError;
use flashsale_common::metrics::{OutcomeLabel, latency_histogram};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every outcome a purchase attempt can have, as counted in `orders`.
pub const OUTCOMES: [&str; 13] = [
    "accepted",
    "replayed",
    "sold_out",
    "not_open",
    "rate_limited",
    "invalid",
    "user_limit",
    "unknown_sale",
    "unavailable",
    "store_full",
    "publish_pending",
    "replica_pending",
    "no_pass",
];

pub struct GatewayMetrics {
    pub orders: Family<OutcomeLabel, Counter>,
    by_outcome: Vec<(&'static str, Counter)>,
    pub order_latency: Histogram,
    pub publish_confirms: Counter,
    pub publish_failures: Family<OutcomeLabel, Counter>,
    pub sold_out_from_memory: Counter,
    pub outbox_republished: Counter,
    pub outbox_acked: Counter,
    pub holds_confirmed: Counter,
    pub sse_clients: prometheus_client::metrics::gauge::Gauge,
    pub holds_expired: Counter,
    /// Connections and live-stock streams refused at the cap.
    pub refused_connections: Counter,
    pub refused_streams: Counter,
    /// The waiting room: joins, the line's counts of every served sale,
    /// the wait from joining to the first pass, and refused passes.
    pub queue_joins: Counter,
    /// Standings answered from memory (polls and stream updates).
    pub queue_polls: Counter,
    pub queue_waiting: prometheus_client::metrics::gauge::Gauge,
    pub queue_admitted: prometheus_client::metrics::gauge::Gauge,
    pub queue_abandoned: prometheus_client::metrics::gauge::Gauge,
    pub queue_wait: Histogram,
    pub pass_refusals: Family<OutcomeLabel, Counter>,
}

/// Why a pass was refused, as `pass_refusals` counts them.
pub const PASS_REFUSALS: [&str; 6] = [
    "missing",
    "malformed",
    "forged",
    "other_sale",
    "expired",
    "not_yours",
];

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let orders: Family<OutcomeLabel, Counter> = Family::default();
        let by_outcome = OUTCOMES
            .iter()
            .map(|o| {
                (
                    *o,
                    orders
                        .get_or_create(&OutcomeLabel {
                            outcome: (*o).to_owned(),
                        })
                        .clone(),
                )
            })
            .collect();
        let m = Self {
            orders,
            by_outcome,
            order_latency: latency_histogram(),
            publish_confirms: Counter::default(),
            publish_failures: {
                let family: Family<OutcomeLabel, Counter> = Family::default();
                for label in crate::publish::PublishError::LABELS {
                    let _zero = family.get_or_create(&OutcomeLabel {
                        outcome: label.to_owned(),
                    });
                }
                family
            },
            sold_out_from_memory: Counter::default(),
            outbox_republished: Counter::default(),
            outbox_acked: Counter::default(),
            holds_confirmed: Counter::default(),
            sse_clients: prometheus_client::metrics::gauge::Gauge::default(),
            holds_expired: Counter::default(),
            refused_connections: Counter::default(),
            refused_streams: Counter::default(),
            queue_joins: Counter::default(),
            queue_polls: Counter::default(),
            queue_waiting: prometheus_client::metrics::gauge::Gauge::default(),
            queue_admitted: prometheus_client::metrics::gauge::Gauge::default(),
            queue_abandoned: prometheus_client::metrics::gauge::Gauge::default(),
            queue_wait: Histogram::new([
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
            pass_refusals: {
                let family: Family<OutcomeLabel, Counter> = Family::default();
                for label in PASS_REFUSALS {
                    let _zero = family.get_or_create(&OutcomeLabel {
                        outcome: label.to_owned(),
                    });
                }
                family
            },
        };
        let r = registry.sub_registry_with_prefix("flashsale_gateway");
        r.register("orders", "Purchase attempts by outcome", m.orders.clone());
        r.register(
            "refused_connections",
            "Connections answered 503 because the gateway held as many as it may",
            m.refused_connections.clone(),
        );
        r.register(
            "refused_streams",
            "Live-stock streams answered 503 because the gateway served as many as it may",
            m.refused_streams.clone(),
        );
        r.register(
            "order_duration_seconds",
            "Time to answer a purchase attempt",
            m.order_latency.clone(),
        );
        r.register(
            "publish_confirms",
            "Orders confirmed by RabbitMQ",
            m.publish_confirms.clone(),
        );
        r.register(
            "publish_failures",
            "Publishes without a positive confirm, by reason",
            m.publish_failures.clone(),
        );
        r.register(
            "sold_out_from_memory",
            "Attempts refused as sold out without a Redis round trip",
            m.sold_out_from_memory.clone(),
        );
        r.register(
            "outbox_republished",
            "Orders published again by the outbox sweeper",
            m.outbox_republished.clone(),
        );
        r.register(
            "outbox_acked",
            "Confirmed orders removed from the Redis outbox (behind publish_confirms while Redis lags)",
            m.outbox_acked.clone(),
        );
        r.register(
            "holds_confirmed",
            "Holds confirmed (paid) in time",
            m.holds_confirmed.clone(),
        );
        r.register(
            "holds_expired",
            "Holds expired by this gateway; units back in stock",
            m.holds_expired.clone(),
        );
        r.register(
            "queue_joins",
            "Joins of a waiting room",
            m.queue_joins.clone(),
        );
        r.register(
            "queue_polls",
            "Standings in a waiting room answered from memory",
            m.queue_polls.clone(),
        );
        r.register(
            "queue_waiting",
            "Buyers in line, not yet admitted, over the sales this gateway serves",
            m.queue_waiting.clone(),
        );
        r.register(
            "queue_admitted",
            "Places admitted so far, over the sales this gateway serves",
            m.queue_admitted.clone(),
        );
        r.register(
            "queue_abandoned",
            "Passes that ran out unused (their places went to the next in line)",
            m.queue_abandoned.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time from joining the line to the first pass this gateway gave",
            m.queue_wait.clone(),
        );
        r.register(
            "pass_refusals",
            "Purchase attempts whose admission pass was refused, by reason",
            m.pass_refusals.clone(),
        );
        r.register(
            "sse_clients",
            "Open live-stock streams (Server-Sent Events)",
            m.sse_clients.clone(),
        );
        m
    }

    /// Counts one attempt; the usual outcomes skip the label lookup.
    pub fn outcome(&self, outcome: &'static str) {
        match self.by_outcome.iter().find(|(name, _)| *name == outcome) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.orders
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.to_owned(),
                    })
                    .inc();
            }
        }
    }

    pub fn pass_refused(&self, reason: &str) {
        self.pass_refusals
            .get_or_create(&OutcomeLabel {
                outcome: reason.to_owned(),
            })
            .inc();
    }

    pub fn publish_failed(&self, e: &PublishError) {
        self.publish_failures
            .get_or_create(&OutcomeLabel {
                outcome: e.label().to_owned(),
            })
            .inc();
    }
}
