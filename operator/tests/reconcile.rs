//! Reconcile against a mocked Kubernetes API at the HTTP level (tower-test):
//! every request the operator makes is recorded and asserted. Redis,
//! RabbitMQ and PostgreSQL are the real local servers.

use flashsale_api::sale::{FlashSale, FlashSaleStatus};
use flashsale_common::amqp::{self, QueueType};
use flashsale_harness::{
    Env, amqp_url, now_ms, publish_raw, queue_messages, redis_cluster_url, redis_url,
};
use flashsale_operator::backends::BackendUrls;
use flashsale_operator::controller::{Context, reconcile};
use flashsale_operator::metrics::{OperatorMetrics, SaleDetailLabel, SaleLabel};
use flashsale_operator::plan::{ACTIVE_REFRESH, DRAIN_REFRESH};
use flashsale_store::stock;
use futures::StreamExt;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

type Log = Arc<Mutex<Vec<Call>>>;

/// A fake API server: records each request and answers it plausibly.
fn mock_client(sale: Value) -> (Client, Log) {
    mock(sale, Mock::default())
}

/// The same; every Deployment patch is answered with `422 Invalid` and
/// `message`, as the API server answers an object it does not accept.
fn mock_api(sale: Value, message: &'static str) -> (Client, Log) {
    mock(
        sale,
        Mock {
            refuse: Some(Refusal {
                applies: |method, path| method == "PATCH" && path.contains("/deployments/"),
                code: 422,
                reason: "Invalid",
                message,
            }),
            ..Mock::default()
        },
    )
}

/// Runs before the mocked API answers a request, with its method and path.
type Hook = Arc<dyn Fn(&str, &str) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// An error the mocked API answers to the requests it applies to.
#[derive(Clone, Copy)]
struct Refusal {
    applies: fn(&str, &str) -> bool,
    code: u16,
    reason: &'static str,
    message: &'static str,
}

#[derive(Default, Clone)]
struct Mock {
    refuse: Option<Refusal>,
    before: Option<Hook>,
    /// An object served to a GET of a path ending so (others of its kind
    /// are not found).
    serve: Option<(String, Value)>,
}

fn mock(sale: Value, behaviour: Mock) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let record = Arc::clone(&log);
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or_default().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            record
                .lock()
                .map(|mut l| {
                    l.push(Call {
                        method: method.clone(),
                        path: path.clone(),
                        query,
                        body: body.clone(),
                    })
                })
                .ok();
            if let Some(hook) = &behaviour.before {
                hook(&method, &path).await;
            }
            let failure = |code: u16, reason: &str, message: &str| json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message, "metadata": {}});
            let (status, reply) =
                if let Some(r) = behaviour.refuse.filter(|r| (r.applies)(&method, &path)) {
                    (r.code, failure(r.code, r.reason, r.message))
                } else if let Some((_, object)) = behaviour
                    .serve
                    .as_ref()
                    .filter(|(end, _)| method == "GET" && path.ends_with(end.as_str()))
                {
                    (200, object.clone())
                } else if method == "GET" && !path.contains("/flashsales/") {
                    (404, failure(404, "NotFound", "not found"))
                } else if path.contains("/flashsales/") {
                    (200, sale.clone())
                } else {
                    (if method == "POST" { 201 } else { 200 }, body)
                };
            let resp = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                .unwrap_or_else(|_| Response::new(Body::empty()));
            send.send_response(resp);
        }
    });
    (Client::new(service, "default"), log)
}

fn manifest(env: &Env, start_ms: i64, end_ms: i64) -> Value {
    let ts = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    json!({
        "apiVersion": "flashsale.io/v1alpha1",
        "kind": "FlashSale",
        "metadata": {
            "name": env.sale.name, "namespace": env.sale.namespace,
            "uid": "6d1f3c2a-0000-4000-8000-000000000001", "generation": 1, "resourceVersion": "41"
        },
        "spec": {
            "product": {"sku": "SKU-1", "name": "Thing", "price": "9.99", "currency": "EUR"},
            "stock": 100,
            "window": {"start": ts(start_ms), "end": ts(end_ms)},
            "limits": {"perUser": 2, "perOrder": 2},
            "gateway": {"replicas": 3},
            "worker": {"replicas": 2}
        }
    })
}

/// The sale of `env` as the API server shows it once deleted: a deletion
/// timestamp, the finalizers still on it, and the status it had.
fn deleted_manifest(env: &Env, finalizers: &[&str]) -> Value {
    let mut sale = manifest(env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    sale["metadata"]["finalizers"] = json!(finalizers);
    sale["status"] = json!({"phase": "Active"});
    sale
}

/// A consumer on `queue` under the tag a worker would use.
async fn consume(ch: &lapin::Channel, queue: &str) -> anyhow::Result<lapin::Consumer> {
    Ok(ch
        .basic_consume(
            queue.into(),
            "test-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// One reconcile of `sale` against a fresh mocked API: its action and the
/// calls it made.
async fn reconcile_logged(env: &Env, sale: Value) -> anyhow::Result<(Action, Vec<Call>)> {
    let (action, calls, _) = reconcile_measured(env, sale).await?;
    Ok((action, calls))
}

/// The same, also returning the operator's metrics after the reconcile.
async fn reconcile_measured(
    env: &Env,
    sale: Value,
) -> anyhow::Result<(Action, Vec<Call>, Arc<OperatorMetrics>)> {
    let parsed: FlashSale = serde_json::from_value(sale.clone())?;
    let (client, log) = mock_client(sale);
    let ctx = context(env, client);
    let action = reconcile(Arc::new(parsed), Arc::clone(&ctx)).await?;
    Ok((action, recorded(&log), Arc::clone(&ctx.metrics)))
}

/// Reconciles a deleted, drained sale and expects it cleaned up and released.
async fn reconcile_to_release(env: &Env, sale: Value) -> anyhow::Result<()> {
    let (action, calls) = reconcile_logged(env, sale).await?;
    assert_eq!(action, Action::await_change(), "{:?}", summary(&calls));
    assert_eq!(
        event_reasons(&calls),
        vec!["Closed", "Drained", "CleanedUp"]
    );
    Ok(())
}

fn context(env: &Env, client: Client) -> Arc<Context> {
    context_with(client, env_urls(env))
}

/// The stores of `env`'s sale.
fn env_urls(env: &Env) -> BackendUrls {
    BackendUrls {
        redis_url: env.redis_url.clone(),
        amqp_url: amqp_url(),
        database_url: env.db_url.clone(),
        ..BackendUrls::default()
    }
}

fn context_with(client: Client, urls: BackendUrls) -> Arc<Context> {
    let mut registry = prometheus_client::registry::Registry::default();
    Arc::new(Context::new(
        client,
        urls,
        QueueType::Quorum,
        "flashsale:test".into(),
        None,
        Arc::new(OperatorMetrics::register(&mut registry)),
    ))
}

fn recorded(log: &Log) -> Vec<Call> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

fn summary(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// The events of `reason` the reconcile recorded.
fn events<'a>(calls: &'a [Call], reason: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/events") && c.body["reason"] == reason)
        .collect()
}

/// The replicas the reconcile applied to the sale's `component` Deployment.
fn replicas(calls: &[Call], component: &str) -> Option<Value> {
    calls
        .iter()
        .filter(|c| c.path.contains("/deployments/") && c.method == "PATCH")
        .find(|c| c.path.ends_with(&format!("-{component}")))
        .map(|c| c.body["spec"]["replicas"].clone())
}

/// The status the reconcile patched, and its Drained condition.
fn patched_status(calls: &[Call]) -> anyhow::Result<(Value, Value)> {
    let status = calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .map(|c| c.body["status"].clone())
        .ok_or_else(|| anyhow::anyhow!("no status patch: {:?}", summary(calls)))?;
    let drained = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Drained"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no Drained condition: {status}"))?;
    Ok((status, drained))
}

/// The status of a reconcile that found the sale Invalid and created
/// nothing; its Ready condition's message starts with `reason`.
fn invalid_creating_nothing(calls: &[Call], reason: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(
        !calls.iter().any(|c| c.query.contains("fieldManager")),
        "nothing is created: {:?}",
        summary(calls)
    );
    let (status, _) = patched_status(calls)?;
    anyhow::ensure!(status["phase"] == "Invalid", "{status}");
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default();
    anyhow::ensure!(ready.starts_with(reason), "{ready}");
    Ok(status)
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_open_sale_is_finalized_seeded_deployed_and_reported() -> anyhow::Result<()> {
    let env = Env::new("op-new").await?;
    let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock_client(sale_json);
    let ctx = context(&env, client);

    let action = reconcile(Arc::new(sale.clone()), Arc::clone(&ctx)).await?;
    assert_eq!(action, Action::requeue(ACTIVE_REFRESH));

    let (ns, name) = (env.sale.namespace.clone(), env.sale.name.clone());
    let calls = recorded(&log);
    assert_eq!(
        summary(&calls),
        vec![
            format!("GET /apis/apps/v1/namespaces/{ns}/deployments/{name}-gateway"),
            format!("GET /apis/apps/v1/namespaces/{ns}/deployments/{name}-worker"),
            // Whether an object under the sale's names belongs to another.
            format!("GET /api/v1/namespaces/{ns}/secrets/{name}-backends"),
            format!("GET /api/v1/namespaces/{ns}/services/{name}-gateway"),
            format!("GET /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}-gateway"),
            format!("GET /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}-worker"),
            format!("PATCH /apis/flashsale.io/v1alpha1/namespaces/{ns}/flashsales/{name}"),
            format!("PATCH /api/v1/namespaces/{ns}/secrets/{name}-backends"),
            format!("PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}-gateway"),
            format!("PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}-worker"),
            format!("PATCH /api/v1/namespaces/{ns}/services/{name}-gateway"),
            format!("PATCH /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}-gateway"),
            format!("PATCH /apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}-worker"),
            format!("POST /apis/events.k8s.io/v1/namespaces/{ns}/events"),
            format!("POST /apis/events.k8s.io/v1/namespaces/{ns}/events"),
            format!("PATCH /apis/flashsale.io/v1alpha1/namespaces/{ns}/flashsales/{name}/status"),
        ]
    );
    // Finalizer, guarded by the resourceVersion.
    assert_eq!(
        calls[6].body["metadata"]["finalizers"],
        json!(["flashsale.io/cleanup"])
    );
    assert_eq!(calls[6].body["metadata"]["resourceVersion"], "41");
    // The operator's URLs go into a Secret the sale owns, server-side
    // applied like the rest.
    let secret: Secret = serde_json::from_value(calls[7].body.clone())?;
    assert!(calls[7].query.contains("fieldManager=flashsale-operator"));
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    assert_eq!(text("REDIS_URL"), Some(redis_url()));
    assert_eq!(text("AMQP_URL"), Some(amqp_url()));
    assert_eq!(text("DATABASE_URL"), Some(env.db_url.clone()));
    let owner = &calls[7].body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], "6d1f3c2a-0000-4000-8000-000000000001");
    // Server-side apply under one field manager, owned by the FlashSale.
    for (call, replicas, component) in [(&calls[8], 3, "gateway"), (&calls[9], 2, "worker")] {
        assert!(
            call.query.contains("fieldManager=flashsale-operator")
                && call.query.contains("force=true"),
            "{}",
            call.query
        );
        assert_eq!(call.body["spec"]["replicas"], replicas);
        let owner = &call.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("FlashSale"), Some(name.as_str()))
        );
        assert_eq!(owner["uid"], "6d1f3c2a-0000-4000-8000-000000000001");
        assert_eq!(owner["controller"], true);
        let c = &call.body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            c["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(
            c["command"][0],
            format!("/usr/local/bin/flashsale-{component}")
        );
        let sales_env = c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == "SALES"))
            .cloned();
        assert_eq!(
            sales_env.map(|v| v["value"].clone()),
            Some(json!(format!("{ns}/{name}")))
        );
        // The URLs (and their passwords) only by reference to the Secret.
        let amqp_env = c["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == "AMQP_URL"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            amqp_env["valueFrom"]["secretKeyRef"],
            json!({"name": format!("{name}-backends"), "key": "AMQP_URL", "optional": false})
        );
        assert!(
            !call.body.to_string().contains(&amqp_url()),
            "a URL in the Deployment"
        );
    }
    assert_eq!(event_reasons(&calls), vec!["Seeded", "Opened"]);
    let status: FlashSaleStatus = serde_json::from_value(calls[15].body["status"].clone())?;
    assert_eq!(status.phase.map(|p| p.as_str()), Some("Active"));
    assert_eq!(
        (status.remaining, status.sold, status.persisted),
        (Some(100), Some(0), Some(0))
    );
    assert_eq!(status.observed_generation, Some(1));
    let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "Ready",
            "Seeded",
            "GatewayAvailable",
            "WorkerAvailable",
            "Drained"
        ]
    );
    assert_eq!(env.snapshot().await?.stock, 100, "seeded in the real Redis");

    // A second reconcile with nothing changed: no finalizer patch, no
    // status patch, no events; only reads and idempotent applies.
    let mut again = sale.clone();
    again.metadata.finalizers = Some(vec!["flashsale.io/cleanup".into()]);
    again.status = Some(status);
    log.lock().map(|mut l| l.clear()).ok();
    reconcile(Arc::new(again), ctx).await?;
    let second = recorded(&log);
    assert!(
        second
            .iter()
            .all(|c| !c.path.ends_with("/status") && !c.path.ends_with("/events")),
        "{:?}",
        summary(&second)
    );
    assert!(
        !second
            .iter()
            .any(|c| c.path.ends_with(&format!("/flashsales/{name}"))),
        "{:?}",
        summary(&second)
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_sale_requeues_at_its_opening() -> anyhow::Result<()> {
    let env = Env::new("op-sched").await?;
    let sale_json = manifest(&env, now_ms() + 10_000, now_ms() + 3_600_000);
    let (action, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    let debug = format!("{action:?}");
    let ms: u64 = debug
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter_map(|s| s.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .find(|ms| *ms > 0)
        .unwrap_or_default();
    assert!((8_000..=10_000).contains(&ms), "requeue {debug}");
    let status = calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .map(|c| &c.body);
    assert_eq!(
        status.map(|s| s["status"]["phase"].clone()),
        Some(json!("Scheduled"))
    );
    assert_eq!(event_reasons(&calls), vec!["Seeded", "Scheduled"]);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_drained_sale_is_cleaned_up_and_released() -> anyhow::Result<()> {
    released_when_deleted_and_drained(Env::new("op-del").await?).await
}

/// The same for a sale on a node of a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_drained_sale_on_a_redis_cluster_is_cleaned_up() -> anyhow::Result<()> {
    released_when_deleted_and_drained(Env::on_redis("op-del-cl", &redis_cluster_url()).await?).await
}

async fn released_when_deleted_and_drained(env: Env) -> anyhow::Result<()> {
    env.seed(&flashsale_harness::open_sale(100, 1, 1)).await?;
    let sale_json = deleted_manifest(&env, &["flashsale.io/cleanup", "example.com/other"]);
    let (action, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::await_change());
    let (ns, name) = (env.sale.namespace.clone(), env.sale.name.clone());
    let applies: Vec<_> = calls
        .iter()
        .filter(|c| c.path.contains("/deployments/") && c.method == "PATCH")
        .collect();
    assert_eq!(applies.len(), 2);
    assert!(
        applies.iter().all(|c| c.body["spec"]["replicas"] == 0),
        "scaled to zero"
    );
    assert_eq!(
        event_reasons(&calls),
        vec!["Closed", "Drained", "CleanedUp"]
    );
    let last = calls
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no calls"))?;
    assert_eq!(
        last.path,
        format!("/apis/flashsale.io/v1alpha1/namespaces/{ns}/flashsales/{name}")
    );
    assert_eq!(
        last.body["metadata"]["finalizers"],
        json!(["example.com/other"]),
        "only our finalizer removed"
    );
    assert!(
        !calls.iter().any(|c| c.path.ends_with("/status")),
        "no status patch on a released object"
    );
    let mut conn = env.redis.clone();
    assert!(
        stock::read(&mut conn, &env.sale).await?.is_none(),
        "Redis keys removed"
    );
    for queue in [
        amqp::orders_queue(&env.sale),
        amqp::dead_letter_queue(&env.sale),
    ] {
        assert_eq!(queue_messages(&queue).await?, None, "{queue} removed");
    }
    env.cleanup().await
}

/// A deleted sale's queues go only once no worker holds the orders queue,
/// and dead letters, which no one has read, stay behind with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sale_waits_for_its_workers_and_keeps_its_dead_letters() -> anyhow::Result<()> {
    let env = Env::new("op-del-busy").await?;
    env.seed(&flashsale_harness::open_sale(100, 1, 1)).await?;
    let sale_json = deleted_manifest(&env, &["flashsale.io/cleanup"]);
    let (orders, dead) = (
        amqp::orders_queue(&env.sale),
        amqp::dead_letter_queue(&env.sale),
    );

    // A worker still attached to the orders queue, and one dead letter.
    let worker = amqp::connect(&amqp_url(), "flashsale-test-worker", &Default::default()).await?;
    let ch = worker.create_channel().await?;
    amqp::declare(&ch, &env.sale, QueueType::Quorum).await?;
    publish_raw(&ch, &dead, b"not an order").await?;
    let _consumer = consume(&ch, &orders).await?;
    let finalizer_patches = |calls: &[Call]| {
        calls
            .iter()
            .filter(|c| {
                c.path.contains("/flashsales/")
                    && !c.path.ends_with("/status")
                    && c.method == "PATCH"
            })
            .count()
    };

    let (action, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::requeue(DRAIN_REFRESH), "comes back soon");
    assert_eq!(
        event_reasons(&calls),
        vec!["Closed", "Drained", "WaitingForWorkers"]
    );
    assert_eq!(finalizer_patches(&calls), 0, "the finalizer stays");
    let (status, _) = patched_status(&calls)?;
    assert_eq!(status["deadLetters"], 1, "{status}");
    let mut conn = env.redis.clone();
    assert!(
        stock::read(&mut conn, &env.sale).await?.is_some(),
        "Redis keys stay"
    );
    assert_eq!(
        queue_messages(&orders).await?,
        Some(0),
        "the orders queue stays"
    );

    // The worker stops: the next reconcile removes everything but the
    // dead letters, and says so.
    worker.close(200, "stopped".into()).await?;
    let (action, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::await_change());
    let events: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .map(|c| (c.body["type"].clone(), c.body["reason"].clone()))
        .collect();
    assert!(
        events.contains(&(json!("Warning"), json!("DeadLettersKept"))),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&(json!("Normal"), json!("CleanedUp"))));
    assert_eq!(finalizer_patches(&calls), 1, "released");
    assert!(
        stock::read(&mut conn, &env.sale).await?.is_none(),
        "Redis keys removed"
    );
    assert_eq!(queue_messages(&orders).await?, None, "orders queue removed");
    assert_eq!(queue_messages(&dead).await?, Some(1), "dead letters kept");
    env.cleanup().await
}

/// A worker's unacknowledged batch leaves the queue empty while its orders
/// are not yet stored: the sale is not drained and nothing is removed until
/// PostgreSQL holds every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_in_a_worker_batch_not_yet_committed_keep_a_sale_from_draining() -> anyhow::Result<()>
{
    let env = Env::new("op-inbatch").await?;
    env.seed(&flashsale_harness::open_sale(100, 1, 1)).await?;
    let orders = amqp::orders_queue(&env.sale);
    let gw = env.gateway(&[]).await?;
    let client = flashsale_harness::http();
    for i in 0..5 {
        let a = flashsale_harness::buy(&client, &env.orders_url(&gw), &format!("b{i}"), 1, None)
            .await?;
        anyhow::ensure!(a.status == 202, "purchase {i}: {} {}", a.status, a.body);
    }
    gw.shutdown().await?;
    anyhow::ensure!(env.outbox_len().await? == 0, "every order confirmed");

    // A worker takes all five and has not committed them yet.
    let taker = amqp::connect(&amqp_url(), "flashsale-test-worker", &Default::default()).await?;
    let ch = taker.create_channel().await?;
    ch.basic_qos(10, BasicQosOptions::default()).await?;
    let mut batch = consume(&ch, &orders).await?;
    for i in 0..5 {
        tokio::time::timeout(std::time::Duration::from_secs(10), batch.next())
            .await
            .map_err(|_| anyhow::anyhow!("delivery {i} did not arrive within 10 s"))?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
    }
    assert_eq!(
        queue_messages(&orders).await?,
        Some(0),
        "the queue reads empty"
    );

    let sale_json = deleted_manifest(&env, &["flashsale.io/cleanup"]);
    let (action, calls, metrics) = reconcile_measured(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::requeue(DRAIN_REFRESH));
    assert_eq!(event_reasons(&calls), vec!["Closed"], "not drained yet");
    let (status, drained) = patched_status(&calls)?;
    assert_eq!(drained["status"], "False", "{status}");
    assert_eq!(
        (&status["sold"], &status["persisted"]),
        (&json!(5), &json!(0)),
        "{status}"
    );
    let message = drained["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("5 units not yet in PostgreSQL"),
        "{message}"
    );
    assert_eq!(
        replicas(&calls, "worker"),
        Some(json!(2)),
        "the worker stays"
    );
    let label = SaleLabel::from(&env.sale);
    assert_eq!(metrics.unstored_units.get_or_create(&label).get(), 5);
    assert_eq!(metrics.ended_undrained.get_or_create(&label).get(), 1);
    assert_eq!(metrics.queued_orders.get_or_create(&label).get(), 0);
    let units = |state: &str| {
        let label = SaleDetailLabel::state(&env.sale, state);
        metrics.units.get_or_create(&label).get()
    };
    assert_eq!(
        ["stock", "remaining", "sold", "persisted"].map(units),
        [100, 95, 5, 0]
    );
    let ended = SaleDetailLabel::phase(&env.sale, flashsale_api::sale::Phase::Ended);
    assert_eq!(metrics.phase.get_or_create(&ended).get(), 1);
    let mut conn = env.redis.clone();
    assert!(
        stock::read(&mut conn, &env.sale).await?.is_some(),
        "Redis keys stay"
    );

    // That worker dies before committing; a new one stores the batch.
    taker.close(320, "killed".into()).await?;
    let worker = env.worker(&[]).await?;
    env.wait_persisted(5, std::time::Duration::from_secs(30))
        .await?;
    worker.shutdown().await?;
    reconcile_to_release(&env, sale_json).await?;
    assert_eq!(env.persisted_orders().await?, 5);
    env.cleanup().await
}

/// A sale deleted while a buyer holds units keeps a gateway, so that the
/// buyer can still pay (and an unpaid hold would expire); once the payment
/// is stored, the sale goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sale_keeps_a_gateway_until_its_holds_are_settled() -> anyhow::Result<()> {
    let env = Env::new("op-del-hold").await?;
    let mut cfg = flashsale_harness::open_sale(100, 1, 1);
    cfg.hold_ms = 600_000;
    env.seed(&cfg).await?;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let client = flashsale_harness::http();
    let bought = flashsale_harness::buy(&client, &env.orders_url(&gw), "holder", 1, None).await?;
    anyhow::ensure!(bought.status == 202, "{} {}", bought.status, bought.body);
    let order_id = bought.body["orderId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no orderId in {}", bought.body))?
        .to_owned();
    env.wait_persisted(1, std::time::Duration::from_secs(30))
        .await?;

    let sale_json = deleted_manifest(&env, &["flashsale.io/cleanup"]);
    let (action, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::requeue(DRAIN_REFRESH));
    assert_eq!(
        replicas(&calls, "gateway"),
        Some(json!(3)),
        "a gateway stays: {:?}",
        patched_status(&calls)
    );
    assert_eq!(
        replicas(&calls, "worker"),
        Some(json!(2)),
        "the worker stays"
    );
    let (status, drained) = patched_status(&calls)?;
    assert_eq!(drained["status"], "False", "{status}");
    let message = drained["message"].as_str().unwrap_or_default();
    assert!(message.contains("1 units on hold"), "{message}");

    // The closed sale still takes the payment; the worker stores it.
    let paid = client
        .post(format!("{}/{order_id}/confirm", env.orders_url(&gw)))
        .send()
        .await?;
    anyhow::ensure!(paid.status().is_success(), "confirm: {}", paid.status());
    env.wait_ledger(
        "the confirmed order reaches PostgreSQL",
        std::time::Duration::from_secs(30),
        |l| l.confirmed_units == 1,
    )
    .await?;
    worker.shutdown().await?;
    gw.shutdown().await?;
    reconcile_to_release(&env, sale_json).await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_gets_phase_invalid_and_a_warning() -> anyhow::Result<()> {
    let env = Env::new("op-bad").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale_json["spec"]["limits"] = json!({"perUser": 1, "perOrder": 3});
    let (_, calls) = reconcile_logged(&env, sale_json).await?;
    let events: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/events"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].body["type"].as_str(),
            events[0].body["reason"].as_str()
        ),
        (Some("Warning"), Some("Invalid"))
    );
    let status = calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .map(|c| c.body["status"].clone())
        .unwrap_or_default();
    assert_eq!(status["phase"], "Invalid");
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.limits.perOrder"),
        "{ready}"
    );
    let mut conn = env.redis.clone();
    assert!(
        stock::read(&mut conn, &env.sale).await?.is_none(),
        "an invalid sale is never seeded"
    );
    env.cleanup().await
}

/// The confirm token in the `<sale>-backends` Secret the reconcile applied.
fn applied_token(calls: &[Call]) -> Option<String> {
    use base64::Engine as _;
    let secret = calls
        .iter()
        .find(|c| c.method == "PATCH" && c.path.contains("/secrets/"))?;
    let b64 = secret.body["data"]["CONFIRM_TOKEN"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// A sale that holds orders for payment never takes confirms without a
/// token: with none given, one is made, kept in its Secret and told once;
/// a given token is used as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_without_a_confirm_token_get_a_token_made() -> anyhow::Result<()> {
    for token in [None, Some("pay-service-0123456789")] {
        let env = Env::new("op-open-confirms").await?;
        let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
        sale_json["spec"]["hold"] = json!({"seconds": 300});
        let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
        let urls = env_urls(&env).with_confirm_token(token.map(str::to_owned));
        let (client, log) = mock_client(sale_json.clone());
        reconcile(Arc::new(sale.clone()), context_with(client, urls.clone())).await?;
        let calls = recorded(&log);
        let reasons = event_reasons(&calls);
        assert!(!reasons.contains(&"ConfirmsOpen".to_owned()), "{reasons:?}");
        assert_eq!(
            events(&calls, "ConfirmTokenMade").len(),
            usize::from(token.is_none()),
            "{token:?}: {reasons:?}"
        );
        let applied = applied_token(&calls).ok_or_else(|| {
            anyhow::anyhow!("no CONFIRM_TOKEN in the Secret: {:?}", summary(&calls))
        })?;
        match token {
            Some(t) => assert_eq!(applied, t),
            None => assert_eq!(applied.len(), 48, "{applied}"),
        }
        // The next reconcile finds the Secret and keeps its token.
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{}-backends", env.sale.name), "namespace": env.sale.namespace,
                         "ownerReferences": [{"apiVersion": "flashsale.io/v1alpha1", "kind": "FlashSale",
                                              "name": env.sale.name, "uid": sale_json["metadata"]["uid"]}]},
            "data": {"CONFIRM_TOKEN": base64_of(&applied)}
        });
        let (client, log) = mock(
            sale_json,
            Mock {
                serve: Some((format!("/secrets/{}-backends", env.sale.name), secret)),
                ..Mock::default()
            },
        );
        reconcile(Arc::new(sale), context_with(client, urls)).await?;
        let calls = recorded(&log);
        assert!(events(&calls, "ConfirmTokenMade").is_empty());
        assert_eq!(applied_token(&calls).as_deref(), Some(applied.as_str()));
        env.cleanup().await?;
    }
    Ok(())
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_more_redis_replicas_than_there_are_gets_a_warning() -> anyhow::Result<()> {
    // The test Redis has no replica: waiting for one would refuse every
    // purchase, and the sale says so when it is seeded. Through Sentinel
    // (a primary with one replica), not waiting is what gets a warning.
    let group = flashsale_harness::sentinel::SentinelGroup::start().await?;
    let plain = flashsale_harness::redis_url();
    for (redis, wait, expected) in [
        (plain.as_str(), 0, vec![]),
        (plain.as_str(), 1, vec!["TooFewRedisReplicas"]),
        (group.url().as_str(), 0, vec!["NoReplicaWait"]),
        (group.url().as_str(), 1, vec![]),
    ] {
        let env = Env::on_redis("op-replicas", redis).await?;
        let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
        let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
        let urls = env_urls(&env).with_redis_wait_replicas(wait);
        let (client, log) = mock_client(sale_json);
        reconcile(Arc::new(sale), context_with(client, urls)).await?;
        let calls = recorded(&log);
        let warned: Vec<_> = calls
            .iter()
            .filter(|c| {
                c.path.ends_with("/events")
                    && ["TooFewRedisReplicas", "NoReplicaWait"]
                        .contains(&c.body["reason"].as_str().unwrap_or_default())
            })
            .collect();
        let reasons: Vec<_> = warned
            .iter()
            .filter_map(|w| w.body["reason"].as_str())
            .collect();
        assert_eq!(reasons, expected, "{redis} waiting for {wait}");
        if let Some(w) = warned.first() {
            assert_eq!(w.body["type"], "Warning");
            if wait == 1 {
                let note = w.body["note"].as_str().unwrap_or_default();
                assert!(note.contains("the primary has 0"), "{note}");
            }
        }
        env.cleanup().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reconcile_is_told_on_the_sale_as_a_warning() -> anyhow::Result<()> {
    let env = Env::new("op-refused").await?;
    let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let refusal = r#"Deployment.apps "x-gateway" is invalid: spec.template.spec.priorityClassName: Invalid value: "Flash": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters"#;
    let (client, log) = mock_api(sale_json, refusal);
    let ctx = context(&env, client);

    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reconcile(Arc::new(sale), Arc::clone(&ctx)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the reconcile did not end within 30 s"))?
    .expect_err("the API server refused the gateway");
    assert_eq!(err.metric_label(), "kubernetes");
    let calls = recorded(&log);
    let failed = events(&calls, "ReconcileFailed");
    assert_eq!(failed.len(), 1, "{:?}", summary(&calls));
    assert_eq!(failed[0].body["type"], "Warning");
    assert_eq!(
        failed[0].body["regarding"]["name"].as_str(),
        Some(env.sale.name.as_str())
    );
    let note = failed[0].body["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("kubernetes: ") && note.contains("priorityClassName: Invalid value"),
        "the note says what failed and the API server's reason: {note}"
    );
    // The reservation side was seeded before the refusal; deleting the
    // sale's keys and queues is the test's own clean-up.
    env.cleanup().await
}

/// A Redis that may evict keys without an expiry gets no sale: the
/// reconcile fails before it seeds or deploys anything, and says why on
/// the sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_evicts_any_key_gets_no_sale() -> anyhow::Result<()> {
    let server = flashsale_harness::redis_server::RedisServer::start(&[
        ("maxmemory", "64mb"),
        ("maxmemory-policy", "allkeys-lru"),
    ])
    .await?;
    let env = Env::on_redis("op-evicting", &server.url()).await?;
    let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock_client(sale_json);

    let err = reconcile(Arc::new(sale), context(&env, client))
        .await
        .expect_err("a reconcile on an evicting Redis must fail");
    assert_eq!(err.metric_label(), "redis");
    let calls = recorded(&log);
    let failed = events(&calls, "ReconcileFailed");
    assert_eq!(failed.len(), 1, "{:?}", summary(&calls));
    let note = failed[0].body["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("redis: ")
            && note.contains("maxmemory-policy allkeys-lru")
            && note.contains("noeviction"),
        "{note}"
    );
    assert_eq!(replicas(&calls, "gateway"), None, "{:?}", summary(&calls));
    assert_eq!(server.key_count().await?, 0, "nothing seeded");
    env.cleanup().await
}

/// One reconcile of `sale` against the mocked API and the real stores.
async fn reconcile_once(env: &Env, sale: Value) -> anyhow::Result<Action> {
    Ok(reconcile_logged(env, sale).await?.0)
}

/// Admin actions are edits of the FlashSale: after one reconcile, a running
/// gateway sees pause, resume, restock and a longer window within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_edits_reach_the_gateways_within_a_second() -> anyhow::Result<()> {
    let env = Env::new("op-admin").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale_json["spec"]["stock"] = json!(2);
    sale_json["spec"]["limits"] = json!({"perUser": 1, "perOrder": 1});
    let gw = env.gateway(&[]).await?;
    let client = flashsale_harness::http();
    let url = env.orders_url(&gw);
    let mut n = 0;
    let mut attempt = |expect: u16| {
        n += 1;
        let (client, url, user) = (client.clone(), url.clone(), format!("admin-{n}"));
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                let a = flashsale_harness::buy(&client, &url, &user, 1, None).await?;
                if a.status == expect {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "expected {expect} within 1 s, got {}: {}",
                    a.status,
                    a.body
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(202).await?;
    // kubectl patch fs NAME --type merge -p '{"spec":{"paused":true}}'
    sale_json["spec"]["paused"] = json!(true);
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(403).await?;
    sale_json["spec"]["paused"] = json!(false);
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(202).await?;
    attempt(409).await?; // sold out: 2 of 2
    // Restock: raise spec.stock.
    sale_json["spec"]["stock"] = json!(3);
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(202).await?;
    // Close by moving the end into the past, then extend the window again.
    let ts = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    sale_json["spec"]["stock"] = json!(4);
    sale_json["spec"]["window"]["end"] = json!(ts(now_ms() - 1_000));
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(403).await?;
    sale_json["spec"]["window"]["end"] = json!(ts(now_ms() + 3_600_000));
    reconcile_once(&env, sale_json.clone()).await?;
    attempt(202).await?;
    assert_eq!(env.snapshot().await?.sold, 4);
    gw.shutdown().await?;
    env.cleanup().await
}

/// The reason of the sale's `Seeded` condition in a patched status.
fn seeded_reason(status: &Value) -> String {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Seeded"))
        .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_redis_lost_is_not_sold_again_and_is_rebuilt_from_the_ledger() -> anyhow::Result<()>
{
    lost_and_rebuilt(Env::new("op-lost").await?, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_a_redis_cluster_lost_is_rebuilt_on_its_node() -> anyhow::Result<()> {
    lost_and_rebuilt(
        Env::on_redis("op-lost-cl", &redis_cluster_url()).await?,
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_survives_its_redis_restarting_empty_under_a_running_gateway() -> anyhow::Result<()>
{
    let mut server = flashsale_harness::redis_server::RedisServer::start(&[]).await?;
    let env = Env::on_redis("op-restart", &server.url()).await?;
    lost_and_rebuilt(env, Some(&mut server)).await
}

/// A sale with holds and a payment loses its Redis keys: it is not seeded
/// again, and once annotated it is rebuilt from the ledger with its
/// counters, its buyers' units and its open holds.
/// With `server`, Redis loses the sale by restarting empty; else its keys
/// are deleted.
async fn lost_and_rebuilt(
    env: Env,
    server: Option<&mut flashsale_harness::redis_server::RedisServer>,
) -> anyhow::Result<()> {
    use flashsale_harness::buy;
    use std::time::Duration;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    // The API server's clock runs 5 minutes ahead of Redis's: the sale's
    // orders are stamped before its creation, and still count as its own.
    let created_ms = now_ms() + 300_000;
    sale_json["spec"]["hold"] = json!({"seconds": 600});
    sale_json["metadata"]["creationTimestamp"] = json!(
        jiff::Timestamp::from_millisecond(created_ms)?
            .round(jiff::Unit::Second)?
            .to_string()
    );

    let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert_eq!(
        events(&calls, "Seeded").len(),
        1,
        "{:?}",
        event_reasons(&calls)
    );
    sale_json["status"] = patched_status(&calls)?.0;

    // An earlier sale of the same name sold 2 units to ghost, a day before
    // this one was created: not this sale's.
    sqlx::query(
        "INSERT INTO orders (order_id, sale_namespace, sale_name, user_id, quantity, status, reserved_at)
         VALUES ($1, $2, $3, 'ghost', 2, 'confirmed', now() - interval '1 day')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(&env.sale.namespace)
    .bind(&env.sale.name)
    .execute(&env.pool)
    .await?;

    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    let client = flashsale_harness::http();
    let url = env.orders_url(&gw);
    buy(&client, &url, "ann", 2, None).await?.accepted_id()?;
    let bob = buy(&client, &url, "bob", 1, None).await?.accepted_id()?;
    let carol = buy(&client, &url, "carol", 1, None).await?.accepted_id()?;
    let paid = client.post(format!("{url}/{bob}/confirm")).send().await?;
    anyhow::ensure!(paid.status().is_success(), "confirm: {}", paid.status());
    env.wait_ledger(
        "the three orders and bob's payment reach PostgreSQL",
        Duration::from_secs(30),
        |l| l.orders == 4 && l.confirmed_units == 3,
    )
    .await?;

    // Redis loses the sale.
    match server {
        Some(server) => {
            server.restart_empty().await?;
            // The test's own connection was cut too: its next call fails
            // and reconnects.
            flashsale_harness::eventually(
                "the test's Redis connection is back",
                Duration::from_secs(20),
                || async {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut env.redis.clone()).await;
                    Ok(pong.is_ok())
                },
            )
            .await?;
        }
        None => stock::delete_sale(&mut env.redis.clone(), &env.sale).await?,
    }
    let (action, calls, metrics) = reconcile_measured(&env, sale_json.clone()).await?;
    assert_eq!(action, Action::requeue(DRAIN_REFRESH));
    assert_eq!(
        metrics
            .redis_lost
            .get_or_create(&SaleLabel::from(&env.sale))
            .get(),
        1
    );
    let lost = events(&calls, "RedisStateLost");
    assert_eq!(lost.len(), 1, "{:?}", event_reasons(&calls));
    assert_eq!(lost[0].body["type"], "Warning");
    let (status, _) = patched_status(&calls)?;
    assert_eq!(seeded_reason(&status), "RedisStateLost", "{status}");
    assert_eq!(
        stock::read(&mut env.redis.clone(), &env.sale).await?,
        None,
        "the sale must not be seeded again with its full stock"
    );
    // A gateway whose connection the restart cut answers 503 until it has
    // reconnected; then 404, and nothing is reserved.
    flashsale_harness::eventually(
        "buyers are told the sale is unknown",
        Duration::from_secs(20),
        || async {
            let dave = buy(&client, &url, "dave", 1, None).await?;
            anyhow::ensure!(
                dave.status == 404 || dave.status == 503,
                "{} {}",
                dave.status,
                dave.body
            );
            Ok(dave.body["error"]["code"] == "unknown_sale")
        },
    )
    .await?;
    sale_json["status"] = status;

    // Reconciled again without the annotation: still lost, no second event.
    let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    assert!(events(&calls, "RedisStateLost").is_empty());
    assert_eq!(stock::read(&mut env.redis.clone(), &env.sale).await?, None);

    // The owner asks for the rebuild; it comes once the ledger is quiet.
    sale_json["metadata"]["annotations"] =
        json!({ flashsale_operator::plan::RESTORE_ANNOTATION: "true" });
    flashsale_harness::eventually(
        "the sale is rebuilt from the ledger",
        Duration::from_secs(40),
        || async {
            let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
            Ok(events(&calls, "Restored").len() == 1)
        },
    )
    .await?;
    let s = stock::read(&mut env.redis.clone(), &env.sale)
        .await?
        .ok_or_else(|| anyhow::anyhow!("not restored"))?;
    assert_eq!(
        (s.stock, s.sold, s.reserved, s.expired, s.remaining),
        (100, 1, 3, 0, 96),
        "bob's unit sold, ann's 2 and carol's 1 on hold; ghost's not this sale's"
    );

    // The per-user counts came back; ghost's earlier sale does not count.
    let ann = buy(&client, &url, "ann", 1, None).await?;
    assert_eq!(
        (ann.status, ann.body["error"]["code"].as_str()),
        (409, Some("user_limit_reached")),
        "{}",
        ann.body
    );
    buy(&client, &url, "ghost", 2, None).await?.accepted_id()?;
    // Carol's hold came back too: she can still pay for it.
    let paid = client.post(format!("{url}/{carol}/confirm")).send().await?;
    anyhow::ensure!(paid.status().is_success(), "confirm: {}", paid.status());
    env.wait_ledger(
        "carol's payment reaches PostgreSQL",
        Duration::from_secs(30),
        |l| l.orders == 5 && l.confirmed_units == 4,
    )
    .await?;
    let s = stock::read(&mut env.redis.clone(), &env.sale)
        .await?
        .ok_or_else(|| anyhow::anyhow!("sale gone"))?;
    assert_eq!((s.sold, s.reserved, s.remaining), (2, 4, 94));

    worker.shutdown().await?;
    gw.shutdown().await?;
    env.cleanup().await
}

/// Redis loses a running sale after the reconcile read it and before the
/// seed runs (a FLUSHALL, a failover to an empty replica): the seed script
/// itself refuses to create it again, and the next reconcile reports it
/// lost. The loss is injected while the mocked API answers the Deployment
/// read that ends the observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_lost_between_observation_and_seed_is_not_seeded_again() -> anyhow::Result<()> {
    let env = Env::new("op-race").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    sale_json["status"] = patched_status(&calls)?.0;
    // Buyers took 30 units.
    let gw = env.gateway(&[]).await?;
    let client = flashsale_harness::http();
    let url = env.orders_url(&gw);
    for n in 0..15 {
        flashsale_harness::buy(&client, &url, &format!("racer-{n}"), 2, None)
            .await?
            .accepted_id()?;
    }
    gw.shutdown().await?;
    sale_json["spec"]["stock"] = json!(120); // a restock is planned

    let redis = env.redis.clone();
    let sale = env.sale.clone();
    let gateway_path = format!("/deployments/{}-gateway", env.sale.name);
    let hook: Hook = Arc::new(move |method, path| {
        let (mut redis, sale) = (redis.clone(), sale.clone());
        let lose = method == "GET" && path.ends_with(&gateway_path);
        Box::pin(async move {
            if lose {
                stock::delete_sale(&mut redis, &sale).await.ok();
            }
        })
    });
    let parsed: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client_api, log) = mock(
        sale_json.clone(),
        Mock {
            before: Some(hook),
            ..Mock::default()
        },
    );
    let err = reconcile(Arc::new(parsed), context(&env, client_api))
        .await
        .expect_err("the sale vanished under the reconcile");
    assert_eq!(err.metric_label(), "redis");
    assert!(err.to_string().contains("vanished"), "{err}");
    let calls = recorded(&log);
    assert!(
        calls.iter().any(|c| c
            .path
            .ends_with(&format!("/deployments/{}-gateway", env.sale.name))),
        "the loss was injected: {:?}",
        summary(&calls)
    );
    assert_eq!(
        stock::read(&mut env.redis.clone(), &env.sale).await?,
        None,
        "seeded again with its full stock: the 30 units sold would sell twice"
    );
    assert!(events(&calls, "Seeded").is_empty() && events(&calls, "Restocked").is_empty());
    assert!(
        !calls.iter().any(|c| c.path.ends_with("/status")),
        "the status keeps saying the sale ran: {:?}",
        summary(&calls)
    );

    // The next reconcile finds the sale lost and says so.
    let (_, calls) = reconcile_logged(&env, sale_json).await?;
    assert_eq!(events(&calls, "RedisStateLost").len(), 1);
    let (status, _) = patched_status(&calls)?;
    assert_eq!(seeded_reason(&status), "RedisStateLost", "{status}");
    assert_eq!(stock::read(&mut env.redis.clone(), &env.sale).await?, None);
    env.cleanup().await
}

/// A sale in a namespace being deleted: the API server refuses every new
/// object there (`kubectl delete namespace` of a namespace with a running
/// sale). The operator creates nothing, cleans up and releases the sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_in_a_terminating_namespace_is_cleaned_up_and_released() -> anyhow::Result<()> {
    let env = Env::new("op-ns-gone").await?;
    env.seed(&flashsale_harness::open_sale(100, 1, 1)).await?;
    let sale_json = deleted_manifest(&env, &["flashsale.io/cleanup"]);
    let parsed: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock(
        sale_json,
        Mock {
            refuse: Some(Refusal {
                // Server-side apply creates what is missing; a namespace
                // being terminated takes no new content.
                applies: |method, path| {
                    (method == "PATCH" || method == "POST") && !path.contains("/flashsales/")
                },
                code: 403,
                reason: "Forbidden",
                message: "unable to create new content in namespace because it is being terminated",
            }),
            ..Mock::default()
        },
    );
    let action = reconcile(Arc::new(parsed), context(&env, client)).await?;
    assert_eq!(action, Action::await_change());
    let calls = recorded(&log);
    assert!(
        !calls.iter().any(|c| c.query.contains("fieldManager")),
        "nothing is applied to a deleted sale: {:?}",
        summary(&calls)
    );
    let release = calls
        .iter()
        .rfind(|c| c.path.contains("/flashsales/") && c.method == "PATCH")
        .ok_or_else(|| anyhow::anyhow!("not released: {:?}", summary(&calls)))?;
    assert_eq!(release.body["metadata"]["finalizers"], json!([]));
    assert!(
        stock::read(&mut env.redis.clone(), &env.sale)
            .await?
            .is_none()
    );
    assert_eq!(queue_messages(&amqp::orders_queue(&env.sale)).await?, None);
    env.cleanup().await
}

/// A reconcile may run on a copy of the sale that predates its last status
/// patch (a change of its Deployments wakes it first): a transition is
/// told once all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_is_told_once() -> anyhow::Result<()> {
    let env = Env::new("op-once").await?;
    let sale_json = manifest(&env, now_ms() + 3_600_000, now_ms() + 7_200_000);
    let parsed: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock_client(sale_json);
    let ctx = context(&env, client);
    for _ in 0..2 {
        reconcile(Arc::new(parsed.clone()), Arc::clone(&ctx)).await?;
    }
    let calls = recorded(&log);
    assert_eq!(
        events(&calls, "Scheduled").len(),
        1,
        "{:?}",
        event_reasons(&calls)
    );
    env.cleanup().await
}

/// A sold-out sale whose orders are all stored says so with an event, as
/// an ended one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_sale_tells_when_it_drained() -> anyhow::Result<()> {
    let env = Env::new("op-so-drained").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale_json["spec"]["stock"] = json!(2);
    sale_json["spec"]["limits"] = json!({"perUser": 2, "perOrder": 2});
    let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    sale_json["status"] = patched_status(&calls)?.0;
    let gw = env.gateway(&[]).await?;
    let worker = env.worker(&[]).await?;
    flashsale_harness::buy(
        &flashsale_harness::http(),
        &env.orders_url(&gw),
        "all",
        2,
        None,
    )
    .await?
    .accepted_id()?;
    env.wait_persisted(1, std::time::Duration::from_secs(30))
        .await?;
    let (_, calls) = reconcile_logged(&env, sale_json).await?;
    assert_eq!(
        event_reasons(&calls),
        vec!["SoldOut", "Drained"],
        "{:?}",
        patched_status(&calls)
    );
    worker.shutdown().await?;
    gw.shutdown().await?;
    env.cleanup().await
}

/// A name the API server takes but no Service can carry (a dot): the sale
/// is Invalid with the reason, nothing is created, and deleting it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_no_service_can_carry_is_invalid_and_still_deletable() -> anyhow::Result<()> {
    let env = Env::new("op-dot").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale_json["metadata"]["name"] = json!(format!("{}.v2", env.sale.name));
    let (_, calls) = reconcile_logged(&env, sale_json.clone()).await?;
    let status = invalid_creating_nothing(&calls, "metadata.name: ")?;
    assert!(status.to_string().contains("no dots"), "{status}");
    assert_eq!(event_reasons(&calls), vec!["Invalid"]);

    sale_json["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    sale_json["metadata"]["finalizers"] = json!(["flashsale.io/cleanup"]);
    sale_json["status"] = status;
    let (action, calls) = reconcile_logged(&env, sale_json).await?;
    assert_eq!(action, Action::await_change(), "{:?}", summary(&calls));
    env.cleanup().await
}

/// A FlashSale naming an image the cluster admin did not allow gets no
/// pods (they would get the stores' passwords): Invalid, with a Warning,
/// and nothing created. The same image, once allowed, runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_admin_did_not_allow_runs_nothing() -> anyhow::Result<()> {
    let env = Env::new("op-image").await?;
    let mut sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    sale_json["spec"]["gateway"]["image"] = json!("evil.example.com/steal:1");
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock_client(sale_json.clone());
    reconcile(Arc::new(sale.clone()), context(&env, client)).await?;
    let calls = recorded(&log);
    invalid_creating_nothing(&calls, "spec.gateway.image: image")?;
    assert_eq!(events(&calls, "Invalid").len(), 1);
    assert!(
        stock::read(&mut env.redis.clone(), &env.sale)
            .await?
            .is_none()
    );

    let (client, log) = mock_client(sale_json);
    let ctx = Arc::new(
        Arc::try_unwrap(context(&env, client))
            .map_err(|_| anyhow::anyhow!("context shared"))?
            .allowing_images(vec!["evil.example.com/*".into()]),
    );
    reconcile(Arc::new(sale), ctx).await?;
    let calls = recorded(&log);
    let gateway = calls
        .iter()
        .find(|c| {
            c.method == "PATCH"
                && c.path
                    .ends_with(&format!("/deployments/{}-gateway", env.sale.name))
        })
        .ok_or_else(|| anyhow::anyhow!("no gateway: {:?}", summary(&calls)))?;
    assert_eq!(
        gateway.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "evil.example.com/steal:1"
    );
    env.cleanup().await
}

/// An object under one of the sale's names that belongs to someone else
/// (another sale's Service, a Secret made by hand) is never taken over:
/// the sale is Invalid, says which object, and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_sale_does_not_own_is_left_alone() -> anyhow::Result<()> {
    let env = Env::new("op-foreign").await?;
    let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let name = format!("{}-gateway", env.sale.name);
    let theirs = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": env.sale.namespace,
                     "ownerReferences": [{"apiVersion": "flashsale.io/v1alpha1", "kind": "FlashSale",
                                          "name": "another", "uid": "00000000-0000-4000-8000-00000000beef"}]},
        "spec": {"ports": [{"port": 80}]}
    });
    let (client, log) = mock(
        sale_json,
        Mock {
            serve: Some((format!("/services/{name}"), theirs)),
            ..Mock::default()
        },
    );
    reconcile(Arc::new(sale), context(&env, client)).await?;
    invalid_creating_nothing(
        &recorded(&log),
        &format!("metadata.name: Service {name} exists and does not belong to this sale"),
    )?;
    env.cleanup().await
}

/// Asked for NetworkPolicies, the operator gives each sale's gateways and
/// workers one of their own, owned by the sale like its other objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sale_gets_its_network_policies_when_asked() -> anyhow::Result<()> {
    let env = Env::new("op-netpol").await?;
    let sale_json = manifest(&env, now_ms() - 60_000, now_ms() + 3_600_000);
    let sale: FlashSale = serde_json::from_value(sale_json.clone())?;
    let (client, log) = mock_client(sale_json);
    let policy = serde_json::from_value(json!({
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    }))?;
    let ctx = Arc::new(
        Arc::try_unwrap(context(&env, client))
            .map_err(|_| anyhow::anyhow!("context shared"))?
            .with_network_policy(Some(policy)),
    );
    reconcile(Arc::new(sale), ctx).await?;
    let calls = recorded(&log);
    let applied: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path.contains("/networkpolicies/"))
        .collect();
    assert_eq!(applied.len(), 2, "{:?}", summary(&calls));
    for p in &applied {
        assert!(p.query.contains("fieldManager=flashsale-operator"));
        assert_eq!(
            p.body["metadata"]["ownerReferences"][0]["uid"],
            "6d1f3c2a-0000-4000-8000-000000000001"
        );
    }
    env.cleanup().await
}
