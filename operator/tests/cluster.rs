//! End-to-end against a real Kubernetes cluster. Ignored by default: no
//! cluster runs in CI. Run it with a cluster in KUBECONFIG (kind or k3d) and
//! the local Redis, RabbitMQ and PostgreSQL:
//!
//!   kind create cluster --name flashsale
//!   KUBECONFIG=~/.kube/config cargo test -p flashsale-operator --test cluster -- --ignored --nocapture
//!
//! It installs the CRD, runs the controller in-process against the cluster,
//! applies `examples/flashsale.yaml` with a window opening in 10 s, watches
//! Scheduled → Active, checks the Deployments, deletes the sale and waits for
//! the cleanup (finalizer released, Redis keys gone).

use flashsale_api::sale::{FlashSale, Phase};
use flashsale_common::amqp::QueueType;
use flashsale_harness::{Env, amqp_url, redis_url};
use flashsale_operator::backends::BackendUrls;
use flashsale_operator::controller::{self, Context};
use flashsale_operator::metrics::OperatorMetrics;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn until<F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !f().await? {
        anyhow::ensure!(
            started.elapsed() < limit,
            "{what}: not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("{what} after {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG"]
async fn a_sale_runs_on_a_real_cluster() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "flashsales.flashsale.io",
        &PatchParams::apply("flashsale-harness").force(),
        &Patch::Apply(flashsale_api::sale::crd()),
    )
    .await?;
    until("CRD established", Duration::from_secs(30), || async {
        let crd = crds.get("flashsales.flashsale.io").await?;
        Ok(crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await?;

    let env = Env::new("cluster").await?;
    let path = flashsale_harness::repo_root()
        .join("examples/flashsale.yaml")
        .display()
        .to_string();
    let mut sale = flashsale_operator::seed::read_manifests(&path)?.remove(0);
    let now = jiff::Timestamp::now();
    sale.metadata.name = Some(env.sale.name.clone());
    sale.metadata.namespace = Some("default".into());
    sale.spec.window.start = now + jiff::SignedDuration::from_secs(10);
    sale.spec.window.end = now + jiff::SignedDuration::from_secs(3600);

    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        BackendUrls {
            redis_url: redis_url(),
            amqp_url: amqp_url(),
            database_url: env.db_url.clone(),
            ..BackendUrls::default()
        },
        QueueType::Quorum,
        "flashsale:e2e".into(),
        None,
        Arc::new(OperatorMetrics::register(&mut registry)),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let ctl = tokio::spawn(controller::run(
        ctx,
        Some("default".into()),
        stop.clone().cancelled_owned(),
    ));

    let sales: Api<FlashSale> = Api::namespaced(client.clone(), "default");
    let name = env.sale.name.clone();
    sales.create(&PostParams::default(), &sale).await?;
    let phase = |s: FlashSale| s.status.and_then(|st| st.phase);
    until("Scheduled", Duration::from_secs(10), || async {
        Ok(phase(sales.get(&name).await?) == Some(Phase::Scheduled))
    })
    .await?;
    until("Active", Duration::from_secs(20), || async {
        Ok(phase(sales.get(&name).await?) == Some(Phase::Active))
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let gw = deployments.get(&format!("{name}-gateway")).await?;
    assert_eq!(gw.spec.replicas, Some(3));
    assert_eq!(
        deployments
            .get(&format!("{name}-worker"))
            .await?
            .spec
            .replicas,
        Some(2)
    );

    // The URLs reach the pods through the sale's Secret, not as values.
    let secret = Api::<Secret>::namespaced(client.clone(), "default")
        .get(&format!("{name}-backends"))
        .await?;
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        data.get("REDIS_URL").map(|v| v.0.clone()),
        Some(redis_url().into_bytes())
    );
    let pod = gw.spec.template.spec.unwrap_or_default();
    let vars = pod.containers[0].env.clone().unwrap_or_default();
    let redis_env = vars.iter().find(|v| v.name == "REDIS_URL");
    assert!(
        redis_env.is_some_and(|v| v.value.is_none() && v.value_from.is_some()),
        "{redis_env:?}"
    );

    sales.delete(&name, &DeleteParams::default()).await?;
    until(
        "deleted and cleaned up",
        Duration::from_secs(60),
        || async { Ok(sales.get_opt(&name).await?.is_none()) },
    )
    .await?;
    let mut conn = env.redis.clone();
    assert!(
        flashsale_store::stock::read(&mut conn, &env.sale)
            .await?
            .is_none()
    );
    for queue in [
        flashsale_common::amqp::orders_queue(&env.sale),
        flashsale_common::amqp::dead_letter_queue(&env.sale),
    ] {
        assert_eq!(
            flashsale_harness::queue_messages(&queue).await?,
            None,
            "{queue} removed"
        );
    }
    stop.cancel();
    let _ = ctl.await;
    env.cleanup().await
}
