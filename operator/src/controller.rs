//! The reconcile loop: observe, plan (pure), apply (idempotent), requeue at
//! the next window boundary.

use crate::apply::{Applier, Note, Stores, Told, execute};
use crate::backends::{BackendUrls, Backends};
use crate::metrics::OperatorMetrics;
use crate::observe::observe;
use crate::plan::{DRAIN_REFRESH, plan};
use crate::workloads::WorkloadDefaults;
use flashsale_api::sale::FlashSale;
use flashsale_common::amqp::QueueType;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Short backoff after a failed reconcile.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(3);

pub struct Context {
    pub client: Client,
    pub backends: Backends,
    pub defaults: WorkloadDefaults,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    pub told: Told,
}

impl Context {
    /// Also allows these images (exact, or prefixes ending in `*`) in a
    /// FlashSale's pods, besides the default one.
    pub fn allowing_images(mut self, images: Vec<String>) -> Self {
        self.defaults.allowed_images = images;
        self
    }

    /// Gives each sale's pods a NetworkPolicy of their own.
    pub fn with_network_policy(
        mut self,
        policy: Option<crate::workloads::SaleNetworkPolicy>,
    ) -> Self {
        self.defaults.network_policy = policy;
        self
    }

    /// Everything a reconcile needs: the data stores at `urls` (the
    /// operator's defaults), workloads from `image`, events reported as
    /// `identity`.
    pub fn new(
        client: Client,
        urls: BackendUrls,
        queue_type: QueueType,
        image: String,
        identity: Option<String>,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "flashsale-operator".into(),
                instance: identity,
            },
        );
        Self {
            client,
            backends: Backends::new(urls, queue_type),
            defaults: WorkloadDefaults {
                image,
                queue_type,
                allowed_images: Vec::new(),
                network_policy: None,
            },
            recorder,
            metrics,
            told: Told::default(),
        }
    }
}

pub use crate::error::Error as ReconcileError;

pub use flashsale_common::now_ms;

/// Longest note an Event may carry (the API server refuses longer ones).
const EVENT_NOTE_MAX: usize = 1024;

/// Reconciles one sale. A failure is also recorded as a Warning event
/// `ReconcileFailed` on the sale, so that `kubectl describe flashsale`
/// shows why (a store unreachable, an object the API server refused);
/// the same failure again only counts up the event's series.
pub async fn reconcile(sale: Arc<FlashSale>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let result = reconcile_sale(&sale, &ctx).await;
    if let Err(err) = &result {
        let ev = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".to_owned(),
            note: Some(truncate(
                &format!("{}: {err}", err.metric_label()),
                EVENT_NOTE_MAX,
            )),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &sale.object_ref(&())).await {
            tracing::debug!(error = %e, "cannot record the failure as an event");
        }
    }
    result
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

async fn reconcile_sale(
    sale: &Arc<FlashSale>,
    ctx: &Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let mut urls = ctx.backends.urls(Some(&ctx.client), sale).await?;
    let mut observed = observe(&ctx.backends, &urls, Some(&ctx.client), sale).await?;
    let token_made = crate::backends::ensure_confirm_token(
        sale,
        &mut urls,
        observed.kept_confirm_token.as_deref(),
    );
    let keys_made = crate::backends::ensure_admission_keys(
        sale,
        &mut urls,
        observed.kept_pass_key.as_deref(),
        observed.kept_lottery_seed.as_deref(),
    );
    observed.kept_lottery_seed.clone_from(&urls.lottery_seed);
    observed
        .refused
        .extend(ctx.defaults.refused_images(&sale.spec));
    let plan = plan(sale, &observed, now_ms());
    let mut notes = Vec::new();
    if token_made {
        notes.push(Note {
            warning: false,
            reason: "ConfirmTokenMade",
            message: format!(
                "orders are held for payment and no confirm token was given: confirms take the one made in Secret {}, key CONFIRM_TOKEN; give it to the payment service",
                crate::workloads::backends_secret_name(&sale.name_any())
            ),
        });
    }
    notes.extend(crate::apply::committed(&keys_made, &observed));
    let cluster = Applier {
        client: &ctx.client,
        urls: &urls,
        defaults: &ctx.defaults,
        recorder: &ctx.recorder,
    };
    let stores = Stores {
        backends: &ctx.backends,
        urls: &urls,
    };
    let released = execute(&cluster, stores, &ctx.told, sale, &observed, &plan, notes).await?;
    ctx.metrics.reconciled(plan.phase.as_str());
    let r = crate::observe::sale_ref(sale)?;
    if released {
        ctx.metrics.forget(&r);
    } else {
        ctx.metrics.sale(&r, &observed, &plan);
    }
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        sale = %format!("{}/{}", sale.metadata.namespace.as_deref().unwrap_or(""), sale.metadata.name.as_deref().unwrap_or("")),
        phase = plan.phase.as_str(),
        gateway = plan.gateway_replicas,
        worker = plan.worker_replicas,
        requeue_ms = plan.requeue_after.as_millis() as u64,
        "reconciled"
    );
    if released {
        return Ok(Action::await_change());
    }
    if plan.cleanup {
        // Deleted and drained, but the workers still hold the queue.
        return Ok(Action::requeue(DRAIN_REFRESH));
    }
    Ok(Action::requeue(plan.requeue_after))
}

pub fn error_policy(sale: Arc<FlashSale>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(err.metric_label());
    tracing::warn!(
        sale = sale.metadata.name.as_deref().unwrap_or(""),
        reason = err.metric_label(),
        error = %err,
        "reconcile failed; retrying"
    );
    Action::requeue(ERROR_REQUEUE)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (sales, deployments) = match &namespace {
        Some(ns) => (
            Api::<FlashSale>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client, ns),
        ),
        None => (
            Api::<FlashSale>::all(client.clone()),
            Api::<Deployment>::all(client),
        ),
    };
    Controller::new(sales, watcher::Config::default())
        .owns(
            deployments,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=flashsale-operator"),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 1024), "short");
        let long = "é".repeat(600); // 1200 bytes
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
