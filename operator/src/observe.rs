//! Observing a sale before planning: Redis counters, the outbox, the queue,
//! the orders stored in PostgreSQL and the sale's Deployments.

use crate::backends::{BackendUrls, Backends};
use crate::error::Result;
use crate::plan::{Observed, Workload};
use crate::workloads::{Component, backends_secret_name, child_name};
use flashsale_api::sale::{FlashSale, SpecProblem};
use flashsale_common::{SaleRef, amqp};
use flashsale_store::keys::SaleKeys;
use flashsale_store::stock;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, Client, Resource};

pub fn sale_ref(sale: &FlashSale) -> Result<SaleRef> {
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
    read: impl std::future::Future<Output = Result<T>>,
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
) -> Result<Observed> {
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
    let queue = match sale.spec.admission.as_ref().filter(|a| a.queued()) {
        Some(_) => Some(flashsale_store::queue::counts(&mut redis, &r).await?),
        None => None,
    };
    let (gateway, worker, refused, kept) = match client {
        Some(c) => {
            let api = Api::<Deployment>::namespaced(c.clone(), &r.namespace);
            let gateway = api
                .get_opt(&child_name(&r.name, Component::Gateway))
                .await?;
            let worker = api.get_opt(&child_name(&r.name, Component::Worker)).await?;
            let mut foreign = Vec::new();
            for d in gateway.iter().chain(worker.iter()) {
                foreign.extend(not_owned(d, sale));
            }
            let (others, kept) = foreign_objects(c, sale, &r).await?;
            foreign.extend(others);
            (workload(gateway), workload(worker), foreign, kept)
        }
        None => (None, None, Vec::new(), Kept::default()),
    };
    Ok(Observed {
        stock: snapshot,
        queued: queues.map(|q| q.ready),
        dead_letters: queues.map(|q| q.dead_letters),
        outbox: Some(outbox),
        ledger,
        gateway,
        worker,
        refused,
        kept_confirm_token: kept.confirm_token,
        kept_pass_key: kept.pass_key,
        kept_lottery_seed: kept.lottery_seed,
        queue,
    })
}

/// What the sale's own `<sale>-backends` Secret keeps that the operator
/// made for it.
#[derive(Debug, Default)]
struct Kept {
    confirm_token: Option<String>,
    pass_key: Option<String>,
    lottery_seed: Option<String>,
}

/// `object`, when it exists and the sale does not own it: another sale's,
/// or no operator's at all. Applying the sale's object of that name would
/// take it over, and deleting the sale would delete it.
fn not_owned<K: Resource<DynamicType = ()>>(object: &K, sale: &FlashSale) -> Option<SpecProblem> {
    let uid = sale.metadata.uid.as_deref()?;
    let owned = object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid);
    (!owned).then(|| SpecProblem {
        field: "metadata.name",
        message: format!(
            "{} {} exists and does not belong to this sale; it is left alone: delete it, or give the sale another name",
            K::kind(&()),
            object.meta().name.as_deref().unwrap_or_default()
        ),
    })
}

/// The sale's NetworkPolicies that exist under its names without
/// belonging to it (checked where the operator makes them).
pub async fn foreign_network_policies(
    client: &Client,
    sale: &FlashSale,
) -> Result<Vec<SpecProblem>> {
    let r = sale_ref(sale)?;
    let api = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        client.clone(),
        &r.namespace,
    );
    Ok(foreign_children(&api, sale, &r).await?)
}

/// The sale's gateway and worker objects of one kind that exist without
/// belonging to it.
async fn foreign_children<K>(
    api: &Api<K>,
    sale: &FlashSale,
    r: &SaleRef,
) -> kube::Result<Vec<SpecProblem>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut found = Vec::new();
    for component in [Component::Gateway, Component::Worker] {
        if let Some(object) = api.get_opt(&child_name(&r.name, component)).await? {
            found.extend(not_owned(&object, sale));
        }
    }
    Ok(found)
}

/// The sale's Secret, Service and disruption budgets that exist under its
/// names without belonging to it; and what that Secret keeps when the sale
/// owns it.
async fn foreign_objects(
    client: &Client,
    sale: &FlashSale,
    r: &SaleRef,
) -> kube::Result<(Vec<SpecProblem>, Kept)> {
    let ns = r.namespace.as_str();
    let mut found = Vec::new();
    let mut kept = Kept::default();
    if let Some(s) = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&backends_secret_name(&r.name))
        .await?
    {
        match not_owned(&s, sale) {
            Some(problem) => found.push(problem),
            None => {
                use flashsale_common::backend_keys as k;
                let mut data = s.data.unwrap_or_default();
                let mut take =
                    |key: &str| data.remove(key).and_then(|v| String::from_utf8(v.0).ok());
                kept = Kept {
                    confirm_token: take(k::CONFIRM_TOKEN),
                    pass_key: take(k::PASS_KEY),
                    lottery_seed: take(k::LOTTERY_SEED),
                };
            }
        }
    }
    if let Some(s) = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&child_name(&r.name, Component::Gateway))
        .await?
    {
        found.extend(not_owned(&s, sale));
    }
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    found.extend(foreign_children(&pdbs, sale, r).await?);
    Ok((found, kept))
}
