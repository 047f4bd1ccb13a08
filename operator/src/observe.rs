//! Observing a sale before planning: Redis counters, the outbox, the queue,
//! the orders stored in PostgreSQL and the sale's Deployments.

use crate::backends::{BackendUrls, Backends};
use crate::plan::{Observed, Workload};
use crate::workloads::{Component, child_name};
use flashsale_common::keys::SaleKeys;
use flashsale_common::sale::FlashSale;
use flashsale_common::{SaleRef, amqp, stock};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};

pub fn sale_ref(sale: &FlashSale) -> anyhow::Result<SaleRef> {
    Ok(SaleRef::new(
        sale.metadata.namespace.as_deref().unwrap_or("default"),
        sale.metadata.name.as_deref().unwrap_or_default(),
    )?)
}

fn workload(d: Option<Deployment>) -> Option<Workload> {
    d.map(|d| Workload {
        available: d.status.and_then(|s| s.available_replicas).unwrap_or(0),
    })
}

/// The value of `read`, or None (logged) when it failed.
async fn known<T>(
    r: &SaleRef,
    what: &str,
    read: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    read.await
        .inspect_err(|e| tracing::warn!(sale = %r, error = %e, "{what}"))
        .ok()
}

/// Reads the data stores; Deployments come from `client` when there is one.
pub async fn observe(
    backends: &Backends,
    urls: &BackendUrls,
    client: Option<&Client>,
    sale: &FlashSale,
) -> anyhow::Result<Observed> {
    let r = sale_ref(sale)?;
    let mut redis = backends.redis(urls).await?;
    let snapshot = stock::read(&mut redis, &r).await?;
    let outbox: i64 = redis::cmd("ZCARD")
        .arg(SaleKeys::new(&r).outbox())
        .query_async(&mut redis)
        .await?;
    // RabbitMQ and PostgreSQL may be unreachable: the sale then reads as
    // not drained, and the reconcile goes on with what Redis says.
    let queues = known(&r, "cannot read the sale's queues", async {
        let ch = backends.amqp(urls).await?;
        Ok(amqp::queue_depths(&ch, &r, backends.queue_type).await?)
    })
    .await;
    let ledger = known(&r, "cannot count the sale's orders in PostgreSQL", async {
        let pool = backends.pg(urls).await?;
        Ok(flashsale_common::db::ledger_counts(&pool, &r).await?)
    })
    .await;
    let (gateway, worker) = match client {
        Some(c) => {
            let api = Api::<Deployment>::namespaced(c.clone(), &r.namespace);
            (
                workload(
                    api.get_opt(&child_name(&r.name, Component::Gateway))
                        .await?,
                ),
                workload(api.get_opt(&child_name(&r.name, Component::Worker)).await?),
            )
        }
        None => (None, None),
    };
    Ok(Observed {
        stock: snapshot,
        queued: queues.map(|q| q.ready),
        dead_letters: queues.map(|q| q.dead_letters),
        outbox: Some(outbox),
        ledger,
        gateway,
        worker,
        refused: Vec::new(),
    })
}
