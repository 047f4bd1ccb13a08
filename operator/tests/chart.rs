//! Helm chart checks without a cluster: lint and render with the Helm v4
//! library (scripts/chart-render, PyPI helm-python-sdk) for the default
//! values and the value sets in `charts/flashsale/ci`, then parse every
//! rendered document into its typed Kubernetes struct, rejecting unknown
//! fields, so that a typo in a template fails here. The monitoring pieces
//! (scrape configs, alerts, dashboard) are checked against the metrics the
//! binaries export and the labels the operator puts on its pods.

use flashsale_api::sale::FlashSale;
use flashsale_api::sale::Phase;
use flashsale_common::amqp::QueueType;
use flashsale_operator::backends::BackendUrls;
use flashsale_operator::metrics::SaleDetailLabel;
use flashsale_operator::workloads::{self, Component, WorkloadDefaults};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    flashsale_harness::repo_root()
}

fn chart() -> PathBuf {
    root().join("charts/flashsale")
}

struct Rendered {
    lint: serde_json::Value,
    manifests: BTreeMap<String, String>,
    crds: Vec<serde_json::Value>,
}

/// The least an install names: its three data stores.
fn stores() -> PathBuf {
    chart().join("ci/stores-values.yaml")
}

/// A values file of the test's own: the stores, then `backends` lines and
/// other top-level lines.
fn values_file(dir: &Path, name: &str, backends: &str, rest: &str) -> PathBuf {
    let path = dir.join(name);
    let stores = std::fs::read_to_string(stores()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&path, format!("{stores}{backends}{rest}")).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn render(values: Option<&Path>) -> Result<Rendered, String> {
    // scripts/test exports FLASHSALE_PYTHON; its venv is the fallback.
    let cached = std::env::var("HOME")
        .map(|h| Path::new(&h).join(".cache/flashsale/venv/bin/python"))
        .ok()
        .filter(|p| p.exists());
    let python = std::env::var("FLASHSALE_PYTHON")
        .ok()
        .or_else(|| cached.map(|p| p.display().to_string()))
        .unwrap_or_else(|| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.arg(root().join("scripts/chart-render")).arg(chart());
    if let Some(v) = values {
        cmd.arg(v);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(Rendered {
        lint: v["lint"].clone(),
        manifests: serde_json::from_value(v["manifests"].clone()).map_err(|e| e.to_string())?,
        crds: serde_json::from_value(v["crds"].clone()).map_err(|e| e.to_string())?,
    })
}

// prometheus-operator kinds, as far as the chart uses them; unknown fields
// are refused like everywhere else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<Endpoint>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    honor_labels: Option<bool>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: PodMonitorSpec,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    namespace_selector: NamespaceSelector,
    selector: LabelSelector,
    pod_metrics_endpoints: Vec<PodEndpoint>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    any: Option<bool>,
    match_names: Option<Vec<String>>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PodEndpoint {
    port: String,
    path: String,
    interval: String,
    relabelings: Vec<Relabeling>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: RuleSpec,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Parses into `T`, failing on any field serde would have ignored.
fn strict<T: DeserializeOwned>(doc: &str) -> Result<T, String> {
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(doc);
    let value: T = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(format!("unknown fields: {unknown:?}"))
    }
}

/// Checks one document; returns its kind.
fn check_document(doc: &str) -> Result<String, String> {
    let head: serde_yaml::Value = serde_yaml::from_str(doc).map_err(|e| e.to_string())?;
    let kind = head
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    match kind.as_str() {
        "Deployment" => strict::<Deployment>(doc).map(|_| ()),
        "ServiceAccount" => strict::<ServiceAccount>(doc).map(|_| ()),
        "Secret" => strict::<Secret>(doc).map(|_| ()),
        "Service" => strict::<Service>(doc).map(|_| ()),
        "ClusterRole" => strict::<ClusterRole>(doc).map(|_| ()),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(doc).map(|_| ()),
        "Role" => strict::<Role>(doc).map(|_| ()),
        "RoleBinding" => strict::<RoleBinding>(doc).map(|_| ()),
        "NetworkPolicy" => strict::<NetworkPolicy>(doc).map(|_| ()),
        "ServiceMonitor" => strict::<ServiceMonitor>(doc).map(|_| ()),
        "PodMonitor" => strict::<PodMonitor>(doc).map(|_| ()),
        "ConfigMap" => strict::<ConfigMap>(doc).map(|_| ()),
        "PrometheusRule" => strict::<PrometheusRule>(doc).map(|_| ()),
        other => Err(format!(
            "the chart renders a kind this test does not know: {other:?}"
        )),
    }?;
    Ok(kind)
}

/// Every document of a render, by kind.
fn documents(r: &Rendered) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (template, text) in &r.manifests {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for doc in text.split("\n---") {
            let trimmed: String = doc
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            if trimmed.trim().is_empty() {
                continue;
            }
            let kind = check_document(doc).map_err(|e| format!("{template}: {e}\n{doc}"))?;
            out.push((kind, doc.to_owned()));
        }
    }
    Ok(out)
}

fn lint_is_clean(r: &Rendered) {
    let messages = r.lint["messages"].as_array().cloned().unwrap_or_default();
    let bad: Vec<_> = messages
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
        .collect();
    assert!(bad.is_empty(), "lint: {bad:?}");
    assert_eq!(
        r.lint["errors"].as_array().map(Vec::len),
        Some(0),
        "lint: {}",
        r.lint
    );
}

fn kinds(docs: &[(String, String)]) -> Vec<String> {
    let mut k: Vec<_> = docs.iter().map(|(k, _)| k.clone()).collect();
    k.sort();
    k
}

fn deployment(docs: &[(String, String)]) -> Deployment {
    let doc = docs
        .iter()
        .find(|(k, _)| k == "Deployment")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    strict::<Deployment>(&doc).unwrap_or_else(|e| panic!("deployment: {e}"))
}

fn env_of(d: &Deployment, name: &str) -> Option<String> {
    d.spec.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn default_values_render_a_least_privilege_cluster_wide_operator() {
    let r = render(Some(&stores())).unwrap_or_else(|e| panic!("{e}"));
    lint_is_clean(&r);
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kinds(&docs),
        vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    let d = deployment(&docs);
    let pod = d.spec.template.spec.clone().unwrap_or_default();
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap_or_default();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    assert_eq!(
        c.image.as_deref(),
        Some(concat!("localhost/flashsale:", env!("CARGO_PKG_VERSION")))
    );
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    assert_eq!(
        env_of(&d, "LEADER_ELECTION"),
        None,
        "one replica needs no election"
    );
    assert_eq!(env_of(&d, "WATCH_NAMESPACE"), None);

    let role = docs
        .iter()
        .find(|(k, _)| k == "ClusterRole")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let role: ClusterRole = strict(&role).unwrap_or_else(|e| panic!("{e}"));
    let rules = role.rules.unwrap_or_default();
    // Secrets: read a sale's own, write the one per sale that carries the
    // operator's URLs to its pods; never list or watch them all.
    let secret_verbs: Vec<String> = rules
        .iter()
        .filter(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
        .flat_map(|r| r.verbs.clone())
        .collect();
    assert_eq!(secret_verbs, vec!["get", "create", "patch"]);
    let resources: Vec<String> = rules
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    for needed in [
        "flashsales",
        "flashsales/status",
        "flashsales/finalizers",
        "deployments",
        "services",
        "poddisruptionbudgets",
        "events",
    ] {
        assert!(
            resources.iter().any(|r| r == needed),
            "missing {needed}: {resources:?}"
        );
    }
    assert!(
        !resources.iter().any(|r| r == "*" || r == "pods"),
        "{resources:?}"
    );
}

#[test]
fn namespaced_ha_values_use_a_role_and_leader_election() {
    let r = render(Some(&chart().join("ci/namespaced-ha-values.yaml")))
        .unwrap_or_else(|e| panic!("{e}"));
    lint_is_clean(&r);
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !kinds(&docs).iter().any(|k| k.starts_with("Cluster")),
        "{:?}",
        kinds(&docs)
    );
    let roles: Vec<Role> = docs
        .iter()
        .filter(|(k, _)| k == "Role")
        .filter_map(|(_, d)| strict(d).ok())
        .collect();
    // A Role and its binding in each watched namespace, none elsewhere.
    for ns in ["shop", "outlet"] {
        assert!(
            roles
                .iter()
                .any(|r| r.metadata.namespace.as_deref() == Some(ns)
                    && r.rules.iter().flatten().any(|rule| rule
                        .resources
                        .iter()
                        .flatten()
                        .any(|x| x == "secrets"))),
            "{ns}"
        );
        assert!(
            docs.iter()
                .filter(|(k, _)| k == "RoleBinding")
                .filter_map(|(_, d)| strict::<RoleBinding>(d).ok())
                .any(|b| b.metadata.namespace.as_deref() == Some(ns)),
            "{ns}"
        );
    }
    let d = deployment(&docs);
    assert_eq!(d.spec.replicas, Some(2));
    assert_eq!(env_of(&d, "LEADER_ELECTION").as_deref(), Some("true"));
    assert_eq!(
        env_of(&d, "WATCH_NAMESPACE").as_deref(),
        Some("shop,outlet")
    );
}

/// The text every component's `/metrics` starts with: each family with
/// at least one series, so that its `# TYPE` line is there.
fn exported_metrics() -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = flashsale_operator::metrics::OperatorMetrics::register(&mut registry);
    metrics.reconciled("Active");
    metrics.failed("Kube");
    let label = flashsale_operator::metrics::SaleLabel {
        namespace: "shop".into(),
        name: "sale".into(),
    };
    metrics.unstored_units.get_or_create(&label).set(0);
    metrics.ended_undrained.get_or_create(&label).set(0);
    metrics.queued_orders.get_or_create(&label).set(0);
    metrics.dead_letters.get_or_create(&label).set(0);
    metrics.redis_lost.get_or_create(&label).set(0);
    let sale = flashsale_common::SaleRef::new("shop", "sale").unwrap_or_else(|e| panic!("{e}"));
    let component = SaleDetailLabel::component(&sale, "gateway");
    metrics
        .units
        .get_or_create(&SaleDetailLabel::state(&sale, "stock"))
        .set(0);
    metrics
        .phase
        .get_or_create(&SaleDetailLabel::phase(&sale, Phase::Active))
        .set(0);
    metrics.desired_replicas.get_or_create(&component).set(0);
    metrics.available_replicas.get_or_create(&component).set(0);
    let gateway = flashsale_gateway::metrics::GatewayMetrics::register(&mut registry);
    let worker = flashsale_worker::metrics::WorkerMetrics::register(&mut registry);
    let mut exported = String::new();
    prometheus_client::encoding::text::encode(&mut exported, &registry)
        .unwrap_or_else(|e| panic!("{e}"));
    drop((metrics, gateway, worker));
    exported
}

/// The metric names a PromQL text reads (every word starting `flashsale_`).
fn metrics_read(promql: &str) -> Vec<&str> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("flashsale_"))
        .collect()
}

/// Fails when `promql` (rules or panels, named by `what`) reads a metric
/// no component exports, or matches an outcome the gateway never counts.
fn assert_reads_what_exists(what: &str, promql: &str, exported: &str) {
    for name in metrics_read(promql) {
        let base = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {base} ")),
            "{what} reads {name}, which no component exports:\n{exported}"
        );
    }
    for quote in ["outcome=~\"", "outcome=\""] {
        for matcher in promql.split(quote).skip(1) {
            let alternatives = matcher.split('"').next().unwrap_or_default();
            for outcome in alternatives.split('|') {
                let counted = flashsale_gateway::metrics::OUTCOMES.contains(&outcome)
                    || flashsale_gateway::publish::PublishError::LABELS.contains(&outcome);
                assert!(
                    counted,
                    "{what} matches outcome {outcome:?}, which the gateway never counts"
                );
            }
        }
    }
}

/// Fails unless `expr` is valid PromQL, as Prometheus's own grammar reads
/// it (promql-parser), with values put in for the Grafana variables a
/// dashboard query may use.
fn assert_valid_promql(what: &str, expr: &str) {
    let concrete = expr
        .replace("$__rate_interval", "1m")
        .replace("$namespace", ".*")
        .replace("$sale", ".*");
    if let Err(e) = promql_parser::parser::parse(&concrete) {
        panic!("{what}: {expr:?} is not valid PromQL: {e}");
    }
}

/// Whether a label selector (matchLabels and matchExpressions) selects
/// an object with these labels.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    by_label && by_expression
}

/// The gateway or worker Deployment the operator makes for the example sale.
fn sale_deployment(component: Component) -> Deployment {
    let text = std::fs::read_to_string(root().join("examples/flashsale.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sale: FlashSale = FlashSale::from_yaml_documents(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    let defaults = WorkloadDefaults {
        image: "flashsale:test".into(),
        queue_type: QueueType::Quorum,
        allowed_images: Vec::new(),
        network_policy: None,
    };
    workloads::deployment(&sale, component, 1, &defaults, &BackendUrls::default())
}

fn pod_monitor(docs: &[(String, String)]) -> PodMonitor {
    let doc = docs
        .iter()
        .find(|(k, _)| k == "PodMonitor")
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no PodMonitor among {:?}", kinds(docs)));
    strict(&doc).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn monitoring_values_add_service_monitor_rules_and_network_policy() {
    let r =
        render(Some(&chart().join("ci/monitoring-values.yaml"))).unwrap_or_else(|e| panic!("{e}"));
    lint_is_clean(&r);
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    let k = kinds(&docs);
    for needed in [
        "ConfigMap",
        "NetworkPolicy",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ] {
        assert!(k.iter().any(|x| x == needed), "{k:?}");
    }
    // Each sale's pods get a NetworkPolicy of the operator's: it is told
    // whom to admit, and may manage NetworkPolicies.
    let policy = env_of(&deployment(&docs), "FLASHSALE_SALE_NETWORK_POLICY")
        .unwrap_or_else(|| panic!("no per-sale network policy"));
    let policy: flashsale_operator::workloads::SaleNetworkPolicy =
        serde_json::from_str(&policy).unwrap_or_else(|e| panic!("{e}: {policy}"));
    assert_eq!(
        (policy.gateway_from.len(), policy.metrics_from.len()),
        (1, 1)
    );
    let role = docs
        .iter()
        .find(|(k, _)| k == "ClusterRole")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    assert!(role.contains("networkpolicies"), "{role}");
    // The operator's per-sale series name the sale's namespace in their own
    // `namespace` label; without honorLabels Prometheus would rename it to
    // `exported_namespace` and the alerts would name the operator's.
    let monitor = docs
        .iter()
        .find(|(k, _)| k == "ServiceMonitor")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let monitor: ServiceMonitor = strict(&monitor).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        monitor
            .spec
            .endpoints
            .iter()
            .all(|e| e.honor_labels == Some(true))
    );

    let exported = exported_metrics();
    let rules = r
        .manifests
        .iter()
        .find(|(template, _)| template.ends_with("prometheusrule.yaml"))
        .map(|(_, text)| text.as_str())
        .unwrap_or_default();
    let read = metrics_read(rules);
    for needed in [
        "flashsale_operator_sale_ended_undrained",
        "flashsale_gateway_publish_failures_total",
        "flashsale_worker_store_errors_total",
        "flashsale_worker_dead_letters_total",
        "flashsale_gateway_orders_total",
    ] {
        assert!(read.contains(&needed), "no rule reads {needed}:\n{rules}");
    }
    assert_reads_what_exists("the rules", rules, &exported);
    let rule_doc = docs
        .iter()
        .find(|(k, _)| k == "PrometheusRule")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let rule: PrometheusRule = strict(&rule_doc).unwrap_or_else(|e| panic!("{e}"));
    for r in rule.spec.groups.iter().flat_map(|g| &g.rules) {
        assert_valid_promql(&r.alert, &r.expr);
    }
}

#[test]
fn the_pod_monitor_scrapes_every_sales_gateways_and_workers_and_nothing_else() {
    let r =
        render(Some(&chart().join("ci/monitoring-values.yaml"))).unwrap_or_else(|e| panic!("{e}"));
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    let monitor = pod_monitor(&docs);
    assert_eq!(monitor.spec.namespace_selector.any, Some(true));
    for component in [Component::Gateway, Component::Worker] {
        let d = sale_deployment(component);
        let pod = d.spec.template;
        let labels = pod.metadata.and_then(|m| m.labels).unwrap_or_default();
        assert!(
            selects(&monitor.spec.selector, &labels),
            "the PodMonitor misses the {component:?} pods: {labels:?}"
        );
        let ports: Vec<String> = pod
            .spec
            .unwrap_or_default()
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default())
            .filter_map(|p| p.name)
            .collect();
        for endpoint in &monitor.spec.pod_metrics_endpoints {
            assert_eq!(endpoint.port, workloads::METRICS_PORT_NAME);
            assert!(
                ports.contains(&endpoint.port),
                "the {component:?} pods have no port {:?}: {ports:?}",
                endpoint.port
            );
            assert_eq!(endpoint.path, "/metrics");
            // Each relabeling reads a label the pods carry (Prometheus
            // turns every character but letters and digits into `_`).
            for relabel in &endpoint.relabelings {
                for source in &relabel.source_labels {
                    let carried = labels.keys().any(|key| {
                        let meta: String = key
                            .chars()
                            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                            .collect();
                        *source == format!("__meta_kubernetes_pod_label_{meta}")
                    });
                    assert!(carried, "no {component:?} pod label gives {source}");
                }
            }
        }
    }
    let targets: Vec<&str> = monitor
        .spec
        .pod_metrics_endpoints
        .iter()
        .flat_map(|e| e.relabelings.iter().map(|r| r.target_label.as_str()))
        .collect();
    assert!(targets.contains(&"sale"), "{targets:?}");
    // The operator's own pod is the ServiceMonitor's, not scraped twice.
    let operator = deployment(&docs);
    let operator_labels = operator
        .spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(!selects(&monitor.spec.selector, &operator_labels));

    // An operator that watches some namespaces scrapes only there.
    let r = render(Some(&chart().join("ci/namespaced-ha-values.yaml")))
        .unwrap_or_else(|e| panic!("{e}"));
    let monitor = pod_monitor(&documents(&r).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(monitor.spec.namespace_selector.any, None);
    assert_eq!(
        monitor.spec.namespace_selector.match_names,
        Some(vec!["shop".to_owned(), "outlet".to_owned()])
    );
}

#[test]
fn the_dashboard_reads_only_what_the_components_export() {
    let r =
        render(Some(&chart().join("ci/monitoring-values.yaml"))).unwrap_or_else(|e| panic!("{e}"));
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    let map = docs
        .iter()
        .find(|(k, _)| k == "ConfigMap")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let map: ConfigMap = strict(&map).unwrap_or_else(|e| panic!("{e}"));
    let meta = &map.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("monitoring"));
    assert_eq!(
        meta.labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard")),
        Some(&"1".to_owned())
    );
    let json = map
        .data
        .as_ref()
        .and_then(|d| d.get("flashsale.json"))
        .unwrap_or_else(|| panic!("no flashsale.json in {meta:?}"));
    // The chart ships the file as it is in the repository.
    let shipped = std::fs::read_to_string(chart().join("dashboards/flashsale.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json.trim_end(), shipped.trim_end());
    let dashboard: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("the dashboard: {e}"));
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let variables: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let mut ids = Vec::new();
    let mut exprs = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        ids.push(panel["id"].as_i64().unwrap_or_default());
        let grid = &panel["gridPos"];
        let right = grid["x"].as_i64().unwrap_or(-1) + grid["w"].as_i64().unwrap_or(-1);
        assert!((1..=24).contains(&right), "panel {title:?} off the grid");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} shows nothing");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default().to_owned();
            assert_valid_promql(title, &expr);
            assert!(
                !metrics_read(&expr).is_empty(),
                "panel {title:?}: {expr:?} reads no FlashSale metric"
            );
            exprs.push(expr);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    let promql = exprs.join("\n");
    assert_reads_what_exists("the dashboard", &promql, &exported_metrics());
    // Every variable a query uses is defined.
    for word in promql.split('$').skip(1) {
        let name: String = word
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            name.starts_with("__") || variables.contains(&name),
            "a panel uses ${name}, which is no variable: {variables:?}"
        );
    }
    // Each of the three components' metrics is on the dashboard.
    for component in ["operator", "gateway", "worker"] {
        let prefix = format!("flashsale_{component}_");
        assert!(
            metrics_read(&promql).iter().any(|m| m.starts_with(&prefix)),
            "no panel reads a {component} metric"
        );
    }
}

#[test]
fn every_metric_the_docs_name_is_exported() {
    let readme =
        std::fs::read_to_string(root().join("docs/api.md")).unwrap_or_else(|e| panic!("{e}"));
    let exported = exported_metrics();
    let mut named = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `flashsale_")) {
        let cell = row.split('|').nth(1).unwrap_or_default();
        let mut prefix = String::new();
        for name in cell.split('`').skip(1).step_by(2) {
            let name = name.split('{').next().unwrap_or_default();
            let name = match name.strip_prefix("…_") {
                Some(rest) => format!("{prefix}_{rest}"),
                None => {
                    prefix = name.splitn(3, '_').take(2).collect::<Vec<_>>().join("_");
                    name.to_owned()
                }
            };
            named.push(name);
        }
    }
    assert!(
        named.len() > 20,
        "the metrics table of docs/api.md: {named:?}"
    );
    for name in &named {
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {base} ")),
            "docs/api.md names {name}, which no component exports"
        );
    }
    // And the other way round: every exported family is in the table.
    for line in exported.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let family = family.split(' ').next().unwrap_or_default();
            assert!(
                named
                    .iter()
                    .any(|n| n.strip_suffix("_total").unwrap_or(n) == family),
                "{family} is exported but not in the metrics table of docs/api.md"
            );
        }
    }
}

#[test]
fn existing_secret_values_create_no_secret_and_use_it() {
    let r = render(Some(&chart().join("ci/existing-secret-values.yaml")))
        .unwrap_or_else(|e| panic!("{e}"));
    lint_is_clean(&r);
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    let k = kinds(&docs);
    assert!(
        !k.iter().any(|x| x == "Secret" || x == "ServiceAccount"),
        "{k:?}"
    );
    let d = deployment(&docs);
    let pod = d.spec.template.spec.clone().unwrap_or_default();
    assert_eq!(pod.service_account_name.as_deref(), Some("flashsale"));
    let from = pod.containers[0].env_from.clone().unwrap_or_default();
    assert_eq!(
        from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("flashsale-backends")
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.com/shop/flashsale:0.1.0-rc1")
    );
    assert_eq!(
        env_of(&d, "FLASHSALE_IMAGE").as_deref(),
        Some("registry.example.com/shop/flashsale-data:0.1.0")
    );
    assert_eq!(env_of(&d, "QUEUE_TYPE").as_deref(), Some("classic"));
    assert_eq!(
        env_of(&d, "FLASHSALE_ALLOWED_IMAGES").as_deref(),
        Some("registry.example.com/shop/*,mirror.example.com/flashsale:0.1.0")
    );
}

#[test]
fn tls_values_put_the_ca_and_client_certificate_beside_the_urls() {
    let data = secret_data(Some(&chart().join("ci/tls-values.yaml")));
    let tls = data.clone();
    assert_eq!(
        data.get("REDIS_URL").map(String::as_str),
        Some("rediss://redis-master:6380")
    );
    assert!(
        data.get("AMQP_URL")
            .is_some_and(|u| u.starts_with("amqps://")),
        "{data:?}"
    );
    assert!(
        data.get("TLS_CA_PEM")
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
        "{data:?}"
    );
    assert!(
        data.get("TLS_CLIENT_CERT_PEM")
            .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")),
        "{data:?}"
    );
    assert!(
        data.get("TLS_CLIENT_KEY_PEM")
            .is_some_and(|p| p.starts_with("-----BEGIN PRIVATE KEY-----")),
        "{data:?}"
    );
    // Without a CA, the Secret has no such key (the system's roots apply).
    let data = secret_data(Some(&stores()));
    for key in [
        "DATABASE_TLS_CLIENT_CERT_PEM",
        "DATABASE_TLS_CLIENT_KEY_PEM",
    ] {
        assert!(
            tls.get(key).is_some_and(|p| p.contains("MIIBdatabase")),
            "{key}: {tls:?}"
        );
    }
    assert!(!tls.contains_key("REDIS_TLS_CLIENT_CERT_PEM"), "{tls:?}");
    for key in [
        "TLS_CA_PEM",
        "TLS_CLIENT_CERT_PEM",
        "TLS_CLIENT_KEY_PEM",
        "DATABASE_TLS_CLIENT_CERT_PEM",
    ] {
        assert!(!data.contains_key(key), "{key} without a value");
    }
}

#[test]
fn a_typo_in_values_or_in_a_template_is_caught() {
    let dir = std::env::temp_dir().join(format!("fs-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.join("typo.yaml");
    std::fs::write(&bad, "replicaCont: 2\n").unwrap_or_else(|e| panic!("{e}"));
    let err = render(Some(&bad)).err().unwrap_or_default();
    assert!(
        err.contains("replicaCont"),
        "the schema must refuse unknown values: {err}"
    );
    let not_pem = dir.join("not-pem.yaml");
    std::fs::write(&not_pem, "backends:\n  tlsCa: /etc/ssl/ca.pem\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = render(Some(&not_pem)).err().unwrap_or_default();
    assert!(
        err.contains("tlsCa"),
        "a path instead of the PEM text must be refused: {err}"
    );
    let half = values_file(
        &dir,
        "cert-without-key.yaml",
        "  tlsClientCert: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"\n",
        "",
    );
    let err = render(Some(&half)).err().unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        err.contains("needs backends.tlsClientKey"),
        "a client certificate without its key must be refused: {err}"
    );

    let typo = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  selector: {}\n  template:\n    spec:\n      containers:\n        - name: c\n          imagePullPolicy: Always\n          imagePulPolicy: Always\n";
    let err = check_document(typo).err().unwrap_or_default();
    assert!(err.contains("imagePulPolicy"), "{err}");
}

#[test]
fn the_chart_carries_the_generated_crd_and_the_crate_version() {
    let r = render(Some(&stores())).unwrap_or_else(|e| panic!("{e}"));
    let generated = std::fs::read_to_string(root().join("crds/flashsale.yaml")).unwrap_or_default();
    assert_eq!(r.crds.len(), 1);
    assert!(
        r.crds[0]["data"].as_str() == Some(generated.as_str()),
        "charts/flashsale/crds/flashsale.yaml differs from crds/flashsale.yaml"
    );
    let on_disk = std::fs::read_to_string(chart().join("crds/flashsale.yaml")).unwrap_or_default();
    assert!(
        on_disk == generated,
        "copy crds/flashsale.yaml to charts/flashsale/crds/"
    );
    let chart_yaml: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("Chart.yaml")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_confirm_token_goes_into_the_backends_secret() {
    let with = secret_data(Some(&chart().join("ci/confirm-token-values.yaml")));
    assert_eq!(
        with.get("CONFIRM_TOKEN").map(String::as_str),
        Some("s3cret-from-the-payment-service")
    );
    assert!(!secret_data(Some(&stores())).contains_key("CONFIRM_TOKEN"));

    // Without a token, the install notes say what that leaves open.
    let notes = |values: Option<&Path>| {
        let r = render(values).unwrap_or_else(|e| panic!("{e}"));
        r.manifests
            .iter()
            .find(|(template, _)| template.ends_with("NOTES.txt"))
            .map(|(_, text)| text.clone())
            .unwrap_or_else(|| panic!("no NOTES.txt"))
    };
    assert!(notes(Some(&stores())).contains("backends.confirmToken is empty"));
    assert!(
        !notes(Some(&chart().join("ci/confirm-token-values.yaml")))
            .contains("confirmToken is empty")
    );
}

#[test]
fn a_sentinel_url_and_replica_acks_go_into_the_backends_secret_and_other_schemes_are_refused() {
    let data = secret_data(Some(&chart().join("ci/sentinel-values.yaml")));
    assert!(
        data.get("REDIS_URL")
            .is_some_and(|u| u.starts_with("redis+sentinel://")
                && u.ends_with("/mymaster?sentinel_password=s3cret")),
        "{data:?}"
    );
    assert_eq!(
        data.get("REDIS_WAIT_REPLICAS").map(String::as_str),
        Some("1")
    );
    assert!(!secret_data(Some(&stores())).contains_key("REDIS_WAIT_REPLICAS"));
    let notes = |values: &Path| {
        let r = render(Some(values)).unwrap_or_else(|e| panic!("{e}"));
        r.manifests
            .iter()
            .find(|(template, _)| template.ends_with("NOTES.txt"))
            .map(|(_, text)| text.clone())
            .unwrap_or_default()
    };
    assert!(!notes(&chart().join("ci/sentinel-values.yaml")).contains("redisWaitReplicas is 0"));
    let dir = std::env::temp_dir().join(format!("fs-chart-scheme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let no_wait = dir.join("sentinel-no-wait.yaml");
    std::fs::write(
        &no_wait,
        "backends:\n  redisUrl: redis+sentinel://redis:26379/mymaster\n  amqpUrl: amqp://flashsale:s3cret@rabbitmq:5672/%2f\n  databaseUrl: postgres://flashsale@postgresql:5432/flashsale\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(notes(&no_wait).contains("backends.redisWaitReplicas is 0"));
    let bad = dir.join("http.yaml");
    std::fs::write(&bad, "backends:\n  redisUrl: http://redis:6379\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = render(Some(&bad)).err().unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        err.contains("redisUrl"),
        "an http:// Redis URL must be refused: {err}"
    );
}

/// The keys of the chart's backends Secret are the ones the binaries and
/// the operator read (`flashsale_common::backend_keys`): a key spelt
/// differently in the template would never reach anyone.
#[test]
fn the_charts_secret_keys_are_the_ones_the_binaries_read() {
    use flashsale_common::backend_keys::SECRET_KEYS;
    let dir = std::env::temp_dir().join(format!("fs-chart-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let pair = "{cert: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\", key: \"-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----\\n\"}";
    let every_store = values_file(
        &dir,
        "every-store.yaml",
        &format!("  storeClientCerts: {{redis: {pair}, amqp: {pair}, database: {pair}}}\n"),
        "",
    );
    let mut seen = std::collections::BTreeSet::new();
    for values in [
        chart().join("ci/tls-values.yaml"),
        chart().join("ci/confirm-token-values.yaml"),
        chart().join("ci/sentinel-values.yaml"),
        every_store,
    ] {
        for key in secret_data(Some(&values)).into_keys() {
            assert!(
                SECRET_KEYS.contains(&key.as_str()),
                "{}: {key}",
                values.display()
            );
            seen.insert(key);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    for key in SECRET_KEYS {
        assert!(seen.contains(key), "no value set renders {key}");
    }
}

/// The chart ships no credential: an install that names no stores (and
/// no existing Secret) stops with an error saying what to set.
#[test]
fn an_install_must_name_its_stores() {
    let err = render(None).err().unwrap_or_default();
    assert!(
        err.contains("backends.redisUrl is required (or backends.existingSecret)"),
        "{err}"
    );
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap_or_default();
    assert!(
        !values.contains("guest"),
        "no default account in values.yaml"
    );
    render(Some(&chart().join("ci/existing-secret-values.yaml")))
        .unwrap_or_else(|e| panic!("an existing Secret names them: {e}"));
}

/// The backends Secret the chart renders with `values`, after a clean lint.
fn secret_data(values: Option<&Path>) -> BTreeMap<String, String> {
    let r = render(values).unwrap_or_else(|e| panic!("{e}"));
    lint_is_clean(&r);
    let docs = documents(&r).unwrap_or_else(|e| panic!("{e}"));
    let secret: Secret = docs
        .iter()
        .find(|(k, _)| k == "Secret")
        .map(|(_, d)| strict(d).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|| panic!("no Secret: {:?}", kinds(&docs)));
    secret.string_data.unwrap_or_default()
}
