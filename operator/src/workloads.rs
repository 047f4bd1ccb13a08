//! The Kubernetes objects one sale owns: gateway and worker Deployments, a
//! Service for the gateway, a PodDisruptionBudget for each Deployment and a
//! Secret with the sale's data-store URLs; all with an owner reference to
//! the FlashSale.
//!
//! The URLs carry passwords, so they reach the pods only through that
//! Secret, never as values in a Deployment that anyone allowed to read
//! Deployments could see. It holds the URLs the operator itself uses for
//! the sale: those of the sale's own Secret (`spec.backends`) where it has
//! them, the operator's elsewhere. Pods and operator therefore always talk
//! to the same stores, and a change to either rolls the pods.

use crate::backends::BackendUrls;
use flashsale_api::sale::{FlashSale, FlashSaleSpec, SpecProblem};
use flashsale_common::amqp::QueueType;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const GATEWAY_PORT: i32 = 8080;
/// The gateway's /healthz, /readyz and /metrics, apart from the buyers'
/// port so that its Service does not expose them.
pub const GATEWAY_OPS_PORT: i32 = 9090;
/// The worker serves nothing but /healthz, /readyz and /metrics.
pub const WORKER_PORT: i32 = 9091;
/// Name of the container port of /metrics (and the probes) on every pod
/// the operator makes; the chart's PodMonitor scrapes it.
pub const METRICS_PORT_NAME: &str = "metrics";

/// Operator-wide settings that shape the workloads.
#[derive(Debug, Clone)]
pub struct WorkloadDefaults {
    pub image: String,
    pub queue_type: QueueType,
    /// Images a FlashSale may name for its pods besides `image`: exact
    /// references, or prefixes ending in `*` (`registry.example.com/shop/*`).
    /// The pods get the stores' passwords, so the cluster admin chooses.
    pub allowed_images: Vec<String>,
    /// NetworkPolicies for each sale's pods, when the admin asks for them.
    pub network_policy: Option<SaleNetworkPolicy>,
}

/// Who may reach a sale's pods (the chart's `networkPolicy.sales`): the
/// gateways take buyers' requests from `gatewayFrom` only (your ingress
/// controller), the workers take no request at all, and both serve their
/// metrics port to `metricsFrom` (any pod when empty).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaleNetworkPolicy {
    pub gateway_from: Vec<NetworkPolicyPeer>,
    #[serde(default)]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// The NetworkPolicy of a sale's `component` pods.
pub fn network_policy(
    sale: &FlashSale,
    component: Component,
    policy: &SaleNetworkPolicy,
) -> NetworkPolicy {
    let port = |n: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(n)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let from = |peers: &[NetworkPolicyPeer]| (!peers.is_empty()).then(|| peers.to_vec());
    let metrics_port = match component {
        Component::Gateway => GATEWAY_OPS_PORT,
        Component::Worker => WORKER_PORT,
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: from(&policy.metrics_from),
        ports: Some(vec![port(metrics_port)]),
    }];
    if component == Component::Gateway {
        ingress.push(NetworkPolicyIngressRule {
            // No peer at all would admit everyone: an empty list admits no one.
            from: Some(policy.gateway_from.clone()),
            ports: Some(vec![port(GATEWAY_PORT)]),
        });
    }
    NetworkPolicy {
        metadata: meta(sale, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(sale, component)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

impl WorkloadDefaults {
    /// The images `spec` names that the admin does not allow.
    pub fn refused_images(&self, spec: &FlashSaleSpec) -> Vec<SpecProblem> {
        [
            ("spec.gateway.image", &spec.gateway.image),
            ("spec.worker.image", &spec.worker.image),
        ]
        .into_iter()
        .filter_map(|(field, image)| Some((field, image.as_deref()?)))
        .filter(|(_, image)| !self.allows(image))
        .map(|(field, image)| SpecProblem {
            field,
            message: format!(
                "image {image:?} is not allowed: its pods would get the data stores' passwords; the cluster admin allows images with the chart's allowedImages (now: {})",
                std::iter::once(self.image.as_str())
                    .chain(self.allowed_images.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect()
    }

    fn allows(&self, image: &str) -> bool {
        image == self.image
            || self
                .allowed_images
                .iter()
                .any(|a| match a.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => image == a,
                })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Gateway,
    Worker,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Worker => "worker",
        }
    }
}

/// `<sale>-<component>`, shortened with a stable hash to stay a valid
/// DNS label (Service names are at most 63 characters).
pub fn child_name(sale: &str, component: Component) -> String {
    suffixed(sale, component.as_str())
}

/// The name of the Secret the operator writes for a sale without
/// `spec.backends`.
pub fn backends_secret_name(sale: &str) -> String {
    suffixed(sale, "backends")
}

fn suffixed(sale: &str, suffix: &str) -> String {
    let full = format!("{sale}-{suffix}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in sale.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let keep = 63 - suffix.len() - 10;
    let head = sale[..keep].trim_end_matches(['-', '.']).replace('.', "-");
    format!("{head}-{h:08x}-{suffix}")
}

pub fn labels(sale: &FlashSale, component: Component) -> BTreeMap<String, String> {
    let name = sale.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "flashsale".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
        (
            "app.kubernetes.io/instance".to_owned(),
            child_name(&name, component),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "flashsale-operator".to_owned(),
        ),
        ("flashsale.io/sale".to_owned(), truncate_label(&name)),
    ])
}

fn truncate_label(v: &str) -> String {
    v.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

/// The keys of the backends Secret each component reads.
fn backend_keys(component: Component) -> Vec<&'static str> {
    use flashsale_common::backend_keys as k;
    use flashsale_common::tls::Store;
    let (stores, urls, own): (&[Store], &[&str], &[&str]) = match component {
        Component::Gateway => (
            &[Store::Redis, Store::Amqp],
            &[k::REDIS_URL, k::AMQP_URL],
            &[k::CONFIRM_TOKEN, k::REDIS_WAIT_REPLICAS, k::PASS_KEY],
        ),
        Component::Worker => (
            &[Store::Amqp, Store::Database],
            &[k::AMQP_URL, k::DATABASE_URL],
            &[],
        ),
    };
    let mut keys = urls.to_vec();
    keys.extend([k::TLS_CA_PEM, k::TLS_CLIENT_CERT_PEM, k::TLS_CLIENT_KEY_PEM]);
    for store in stores {
        let (cert, key) = store.identity_keys();
        keys.extend([cert, key]);
    }
    keys.extend(own);
    keys
}

fn backend_data(urls: &BackendUrls) -> BTreeMap<String, ByteString> {
    use flashsale_common::backend_keys as k;
    let mut data = BTreeMap::from([
        (k::REDIS_URL, urls.redis_url.clone()),
        (k::AMQP_URL, urls.amqp_url.clone()),
        (k::DATABASE_URL, urls.database_url.clone()),
    ]);
    for (key, pem) in [
        (k::TLS_CA_PEM, &urls.tls_ca_pem),
        (k::TLS_CLIENT_CERT_PEM, &urls.tls_client_cert_pem),
        (k::TLS_CLIENT_KEY_PEM, &urls.tls_client_key_pem),
        (k::CONFIRM_TOKEN, &urls.confirm_token),
        (k::PASS_KEY, &urls.pass_key),
        (k::LOTTERY_SEED, &urls.lottery_seed),
    ] {
        if let Some(pem) = pem {
            data.insert(key, pem.clone());
        }
    }
    if let Some(n) = urls.redis_wait_replicas {
        data.insert(k::REDIS_WAIT_REPLICAS, n.to_string());
    }
    data.into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(urls.own_client_certs.clone())
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

/// The Secret `<sale>-backends` with the sale's data-store URLs, CA
/// certificates and client certificate, for its pods.
pub fn backends_secret(sale: &FlashSale, urls: &BackendUrls) -> Secret {
    let name = sale.metadata.name.clone().unwrap_or_default();
    let mut labels = labels(sale, Component::Gateway);
    labels.remove("app.kubernetes.io/component");
    labels.insert(
        "app.kubernetes.io/instance".to_owned(),
        backends_secret_name(&name),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(backends_secret_name(&name)),
            namespace: sale.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: owner(sale).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(backend_data(urls)),
        ..Secret::default()
    }
}

/// A digest of the backends Secret's keys a component reads, as a
/// pod-template annotation: when one of them changes, the pods roll, as
/// they would if the values were in the Deployment itself.
fn backends_checksum(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(&v.0);
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn owner(sale: &FlashSale) -> Option<OwnerReference> {
    sale.controller_owner_ref(&())
}

fn meta(sale: &FlashSale, component: Component) -> ObjectMeta {
    let name = sale.metadata.name.clone().unwrap_or_default();
    ObjectMeta {
        name: Some(child_name(&name, component)),
        namespace: sale.metadata.namespace.clone(),
        labels: Some(labels(sale, component)),
        owner_references: owner(sale).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// `name`, read from the key of the same name in `secret`, which must
/// hold it.
fn env_secret(name: &str, secret: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: name.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Waits for the process to listen (it connects to its stores first)
/// before the other probes start: a first probe sent before that would be
/// refused and show as a warning on every healthy rollout. Two seconds,
/// then every second for up to two minutes.
fn startup_probe(port: i32) -> Probe {
    Probe {
        initial_delay_seconds: Some(2),
        failure_threshold: Some(120),
        ..probe("/healthz", port, 1)
    }
}

fn default_resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, no
/// capabilities, the runtime's default seccomp profile.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

pub fn deployment(
    sale: &FlashSale,
    component: Component,
    replicas: i32,
    d: &WorkloadDefaults,
    urls: &BackendUrls,
) -> Deployment {
    let ns = sale.metadata.namespace.clone().unwrap_or_default();
    let name = sale.metadata.name.clone().unwrap_or_default();
    let spec = &sale.spec;
    let (binary, port, image, resources, scheduling) = match component {
        Component::Gateway => (
            "flashsale-gateway",
            GATEWAY_PORT,
            spec.gateway.image.clone(),
            spec.gateway.resources.clone(),
            spec.gateway.scheduling.clone(),
        ),
        Component::Worker => (
            "flashsale-worker",
            WORKER_PORT,
            spec.worker.image.clone(),
            spec.worker.resources.clone(),
            spec.worker.scheduling.clone(),
        ),
    };
    let scheduling = scheduling.unwrap_or_default();
    let mut vars = vec![
        env("SALES", format!("{ns}/{name}")),
        env("LISTEN_ADDR", format!("0.0.0.0:{port}")),
        env("LOG_FORMAT", "json"),
        env("QUEUE_TYPE", d.queue_type.as_str()),
    ];
    let container_port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let (ports, ops_port) = match component {
        Component::Gateway => {
            vars.push(env(
                "OPS_LISTEN_ADDR",
                format!("0.0.0.0:{GATEWAY_OPS_PORT}"),
            ));
            (
                vec![
                    container_port("http", port),
                    container_port(METRICS_PORT_NAME, GATEWAY_OPS_PORT),
                ],
                GATEWAY_OPS_PORT,
            )
        }
        Component::Worker => (vec![container_port(METRICS_PORT_NAME, port)], port),
    };
    if component == Component::Worker {
        vars.push(env("BATCH_SIZE", spec.worker.batch_size.to_string()));
    }
    if component == Component::Gateway
        && let Some(header) = &spec.gateway.user_header
    {
        vars.push(env("USER_HEADER", header.clone()));
    }
    if component == Component::Gateway {
        for (name, value) in [
            ("MAX_CONNECTIONS", spec.gateway.max_connections),
            ("MAX_STREAMS", spec.gateway.max_streams),
        ] {
            if let Some(v) = value {
                vars.push(env(name, v.to_string()));
            }
        }
    }
    if component == Component::Gateway
        && let Some(limit) = &spec.gateway.rate_limit
    {
        vars.push(env("RATE_LIMIT_KEY", limit.key.as_flag()));
        vars.push(env("TRUSTED_PROXIES", limit.trusted_proxies.to_string()));
    }
    // Each key the component reads that the Secret holds; only these
    // count in its digest, so a change the component never sees (a Redis
    // password, for a worker) does not roll it.
    let mut data = backend_data(urls);
    let keys = backend_keys(component);
    data.retain(|key, _| keys.contains(&key.as_str()));
    let secret = backends_secret_name(&name);
    for key in data.keys() {
        vars.push(env_secret(key, &secret));
    }
    let annotations = BTreeMap::from([(
        "flashsale.io/backends-checksum".to_owned(),
        backends_checksum(&data),
    )]);
    let labels = labels(sale, component);
    let spread = if scheduling.topology_spread_constraints.is_empty() {
        default_spread(&labels)
    } else {
        scheduling.topology_spread_constraints
    };
    let container = Container {
        name: component.as_str().to_owned(),
        image: Some(image.unwrap_or_else(|| d.image.clone())),
        command: Some(vec![format!("/usr/local/bin/{binary}")]),
        env: Some(vars),
        ports: Some(ports),
        startup_probe: Some(startup_probe(ops_port)),
        liveness_probe: Some(probe("/healthz", ops_port, 10)),
        readiness_probe: Some(probe("/readyz", ops_port, 2)),
        resources: Some(resources.unwrap_or_else(|| match component {
            Component::Gateway => default_resources("250m", "128Mi"),
            Component::Worker => default_resources("100m", "128Mi"),
        })),
        security_context: Some(container_security()),
        ..Container::default()
    };
    Deployment {
        metadata: meta(sale, component),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    node_selector: Some(scheduling.node_selector)
                        .filter(|selector| !selector.is_empty()),
                    tolerations: Some(scheduling.tolerations).filter(|t| !t.is_empty()),
                    affinity: scheduling.affinity,
                    topology_spread_constraints: Some(spread),
                    priority_class_name: scheduling.priority_class_name,
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// At most one pod of a component more on any node, and in any zone, than
/// on another, where the scheduler can place them so (`ScheduleAnyway`):
/// one node or zone lost takes as few of the sale's pods as it can, and a
/// cluster too small to spread still runs them all.
fn default_spread(labels: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

pub fn gateway_service(sale: &FlashSale) -> Service {
    Service {
        metadata: meta(sale, Component::Gateway),
        spec: Some(ServiceSpec {
            selector: Some(labels(sale, Component::Gateway)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn disruption_budget(sale: &FlashSale, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(sale, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels(sale, component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sales_gateways_take_requests_only_from_the_ingress_and_its_workers_none() {
        let policy: SaleNetworkPolicy = serde_json::from_str(
            r#"{"gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}"#,
        )
        .expect("valid policy");
        let s = sale("");
        let rules = |c: Component| {
            let p = network_policy(&s, c, &policy);
            assert_eq!(p.metadata.name, Some(child_name("drop", c)));
            let spec = p.spec.expect("spec");
            assert_eq!(
                spec.pod_selector.and_then(|l| l.match_labels),
                Some(labels(&s, c))
            );
            spec.ingress
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    let ports: Vec<_> = r
                        .ports
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| p.port)
                        .collect();
                    (ports, r.from.unwrap_or_default().len())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rules(Component::Gateway),
            vec![
                (vec![IntOrString::Int(GATEWAY_OPS_PORT)], 1),
                (vec![IntOrString::Int(GATEWAY_PORT)], 1)
            ]
        );
        assert_eq!(
            rules(Component::Worker),
            vec![(vec![IntOrString::Int(WORKER_PORT)], 1)],
            "a worker takes no request but its metrics scrape"
        );
    }

    #[test]
    fn only_the_images_the_admin_allows_may_run_a_sale() {
        let d = WorkloadDefaults {
            allowed_images: vec![
                "registry.example.com/shop/*".into(),
                "mirror/flashsale:1".into(),
            ],
            ..defaults()
        };
        let refused = |yaml: &str| {
            d.refused_images(&sale(yaml).spec)
                .into_iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
        };
        assert!(refused("").is_empty());
        assert!(
            refused("gateway: {image: img}").is_empty(),
            "the operator's own"
        );
        assert!(refused("gateway: {image: registry.example.com/shop/gw:2}").is_empty());
        assert!(refused("worker: {image: mirror/flashsale:1}").is_empty());
        assert_eq!(
            refused("gateway: {image: evil.example.com/x:1}"),
            vec!["spec.gateway.image"]
        );
        assert_eq!(
            refused("worker: {image: registry.example.com/shopping/x}"),
            vec!["spec.worker.image"]
        );
    }

    fn defaults() -> WorkloadDefaults {
        WorkloadDefaults {
            image: "img".into(),
            queue_type: QueueType::Quorum,
            allowed_images: Vec::new(),
            network_policy: None,
        }
    }

    fn urls(tls_ca_pem: Option<&str>) -> BackendUrls {
        BackendUrls {
            redis_url: "rediss://redis:6380".into(),
            amqp_url: "amqps://u:p@rabbitmq:5671/%2f".into(),
            database_url: "postgres://pg/flashsale?sslmode=verify-full".into(),
            tls_ca_pem: tls_ca_pem.map(str::to_owned),
            ..BackendUrls::default()
        }
    }

    fn sale(backends: &str) -> FlashSale {
        let yaml = format!(
            r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {{name: drop, namespace: shop, uid: "0000-1111"}}
spec:
  product: {{sku: SKU-1, name: Thing, price: "9.99", currency: EUR}}
  stock: 100
  window: {{start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}}
  {backends}
"#
        );
        FlashSale::from_yaml_documents(&yaml).expect("valid")[0].clone()
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec.template.spec.as_ref().expect("pod spec").containers[0]
    }

    fn env_var<'a>(d: &'a Deployment, name: &str) -> Option<&'a EnvVar> {
        container(d).env.as_ref()?.iter().find(|v| v.name == name)
    }

    /// The Secret and key an environment variable is read from.
    fn secret_ref(d: &Deployment, name: &str) -> Option<(String, String)> {
        let r = env_var(d, name)?
            .value_from
            .as_ref()?
            .secret_key_ref
            .as_ref()?;
        Some((r.name.clone(), r.key.clone()))
    }

    fn checksum(d: &Deployment) -> Option<String> {
        d.spec
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get("flashsale.io/backends-checksum")
            .cloned()
    }

    fn secret_text(s: &Secret, key: &str) -> Option<String> {
        let v = s.data.as_ref()?.get(key)?;
        Some(String::from_utf8(v.0.clone()).expect("UTF-8"))
    }

    /// The port of an `…_ADDR` variable's `host:port`.
    fn env_port(d: &Deployment, name: &str) -> Option<i32> {
        let value = env_var(d, name)?.value.as_deref()?;
        value.rsplit_once(':')?.1.parse().ok()
    }

    fn named_port(d: &Deployment, name: &str) -> Option<i32> {
        container(d)
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }

    fn probe_port(probe: Option<&Probe>) -> Option<IntOrString> {
        probe?.http_get.as_ref().map(|g| g.port.clone())
    }

    #[test]
    fn buyers_reach_the_api_only_and_probes_and_scrapes_the_operational_port() {
        let (d, u) = (defaults(), urls(None));
        let gateway = deployment(&sale(""), Component::Gateway, 1, &d, &u);
        let worker = deployment(&sale(""), Component::Worker, 1, &d, &u);
        // The gateway serves the API on LISTEN_ADDR ("http") and its
        // operational endpoints on OPS_LISTEN_ADDR ("metrics").
        assert_eq!(env_port(&gateway, "LISTEN_ADDR"), Some(GATEWAY_PORT));
        assert_eq!(named_port(&gateway, "http"), Some(GATEWAY_PORT));
        assert_eq!(
            env_port(&gateway, "OPS_LISTEN_ADDR"),
            Some(GATEWAY_OPS_PORT)
        );
        assert_eq!(
            named_port(&gateway, METRICS_PORT_NAME),
            Some(GATEWAY_OPS_PORT)
        );
        // The worker has only operational endpoints, on LISTEN_ADDR.
        assert_eq!(env_port(&worker, "OPS_LISTEN_ADDR"), None);
        assert_eq!(named_port(&worker, METRICS_PORT_NAME), Some(WORKER_PORT));
        assert_eq!(env_port(&worker, "LISTEN_ADDR"), Some(WORKER_PORT));
        for (d, ops) in [(&gateway, GATEWAY_OPS_PORT), (&worker, WORKER_PORT)] {
            let c = container(d);
            let startup = c.startup_probe.as_ref();
            assert!(
                startup.and_then(|p| p.initial_delay_seconds) > Some(0),
                "probes wait until the process listens"
            );
            for probe in [
                startup,
                c.liveness_probe.as_ref(),
                c.readiness_probe.as_ref(),
            ] {
                assert_eq!(probe_port(probe), Some(IntOrString::Int(ops)));
            }
        }
        // The Service buyers reach leads to the API's port only.
        let service = gateway_service(&sale(""));
        let targets: Vec<IntOrString> = service
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.target_port)
            .collect();
        assert_eq!(targets, vec![IntOrString::String("http".to_owned())]);
    }

    #[test]
    fn urls_reach_pods_through_the_sales_secret_never_as_values() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let (d, with_ca) = (defaults(), urls(Some(pem)));
        let secret = backends_secret(&sale(""), &with_ca);
        assert_eq!(secret.metadata.name.as_deref(), Some("drop-backends"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("shop"));
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("FlashSale", Some(true))
        );
        assert_eq!(
            secret_text(&secret, "AMQP_URL").as_deref(),
            Some("amqps://u:p@rabbitmq:5671/%2f")
        );
        assert_eq!(secret_text(&secret, "TLS_CA_PEM").as_deref(), Some(pem));
        assert_eq!(
            secret_text(&backends_secret(&sale(""), &urls(None)), "TLS_CA_PEM"),
            None
        );

        for (component, keys) in [
            (
                Component::Gateway,
                vec!["REDIS_URL", "AMQP_URL", "TLS_CA_PEM"],
            ),
            (
                Component::Worker,
                vec!["AMQP_URL", "DATABASE_URL", "TLS_CA_PEM"],
            ),
        ] {
            // The same for a sale with a Secret of its own: the operator
            // merges it with its defaults into <sale>-backends.
            for sale in [sale(""), sale("backends: {secretName: shop-stores}")] {
                let dep = deployment(&sale, component, 1, &d, &with_ca);
                for key in ["REDIS_URL", "AMQP_URL", "DATABASE_URL", "TLS_CA_PEM"] {
                    let want = keys
                        .contains(&key)
                        .then(|| ("drop-backends".to_owned(), key.to_owned()));
                    assert_eq!(secret_ref(&dep, key), want, "{component:?} {key}");
                    assert_eq!(env_var(&dep, key).and_then(|v| v.value.clone()), None);
                }
                // No password anywhere in the Deployment.
                let text = serde_json::to_string(&dep).expect("json");
                assert!(!text.contains("u:p@"), "{text}");
                assert!(!text.contains("MIIB"), "{text}");
            }

            // Without a CA there is no TLS_CA_PEM, and another CA (or URL)
            // rolls the pods.
            let dep = deployment(&sale(""), component, 1, &d, &with_ca);
            let plain = deployment(&sale(""), component, 1, &d, &urls(None));
            assert_eq!(secret_ref(&plain, "TLS_CA_PEM"), None);
            assert!(checksum(&plain).is_some());
            assert_ne!(checksum(&plain), checksum(&dep));
            assert_eq!(
                checksum(&dep),
                checksum(&deployment(&sale(""), component, 3, &d, &with_ca)),
                "stable"
            );

            // A client certificate and its key travel the same way.
            let mutual = BackendUrls {
                tls_client_cert_pem: Some("CLIENT CERT".into()),
                tls_client_key_pem: Some("CLIENT KEY".into()),
                ..urls(None)
            };
            let secret = backends_secret(&sale(""), &mutual);
            assert_eq!(
                secret_text(&secret, "TLS_CLIENT_KEY_PEM").as_deref(),
                Some("CLIENT KEY")
            );
            let dep = deployment(&sale(""), component, 1, &d, &mutual);
            for key in ["TLS_CLIENT_CERT_PEM", "TLS_CLIENT_KEY_PEM"] {
                assert_eq!(
                    secret_ref(&dep, key),
                    Some(("drop-backends".to_owned(), key.to_owned()))
                );
            }
            let text = serde_json::to_string(&dep).expect("json");
            assert!(!text.contains("CLIENT KEY"), "{text}");
            assert_ne!(checksum(&dep), checksum(&plain));
        }
    }

    #[test]
    fn only_a_store_a_component_uses_rolls_its_pods() {
        let d = defaults();
        let before = urls(None);
        let new_redis = BackendUrls {
            redis_url: "rediss://:new-password@redis:6380".into(),
            ..urls(None)
        };
        let new_db = BackendUrls {
            database_url: "postgres://app:new-password@pg/flashsale".into(),
            ..urls(None)
        };
        let new_amqp = BackendUrls {
            amqp_url: "amqps://u:new-password@rabbitmq:5671/%2f".into(),
            ..urls(None)
        };
        let digest =
            |component, u: &BackendUrls| checksum(&deployment(&sale(""), component, 1, &d, u));
        let (gw, wk) = (Component::Gateway, Component::Worker);
        assert_ne!(digest(gw, &new_redis), digest(gw, &before));
        assert_eq!(
            digest(wk, &new_redis),
            digest(wk, &before),
            "workers never use Redis"
        );
        assert_ne!(digest(wk, &new_db), digest(wk, &before));
        assert_eq!(
            digest(gw, &new_db),
            digest(gw, &before),
            "gateways never use PostgreSQL"
        );
        assert_ne!(digest(gw, &new_amqp), digest(gw, &before));
        assert_ne!(digest(wk, &new_amqp), digest(wk, &before));
        let new_token = BackendUrls {
            confirm_token: Some("pay-service-token".into()),
            ..urls(None)
        };
        assert_ne!(digest(gw, &new_token), digest(gw, &before));
        assert_eq!(
            digest(wk, &new_token),
            digest(wk, &before),
            "workers never confirm orders"
        );
    }

    #[test]
    fn a_stores_own_client_certificate_reaches_only_the_components_that_use_it() {
        let mut own = BTreeMap::new();
        for store in ["REDIS", "AMQP", "DATABASE"] {
            own.insert(
                format!("{store}_TLS_CLIENT_CERT_PEM"),
                format!("{store} CERT"),
            );
            own.insert(
                format!("{store}_TLS_CLIENT_KEY_PEM"),
                format!("{store} KEY"),
            );
        }
        let urls = BackendUrls {
            own_client_certs: own,
            ..urls(None)
        };
        let secret = backends_secret(&sale(""), &urls);
        assert_eq!(
            secret_text(&secret, "DATABASE_TLS_CLIENT_KEY_PEM").as_deref(),
            Some("DATABASE KEY")
        );
        for (component, stores, not) in [
            (Component::Gateway, ["REDIS", "AMQP"], "DATABASE"),
            (Component::Worker, ["AMQP", "DATABASE"], "REDIS"),
        ] {
            let dep = deployment(&sale(""), component, 1, &defaults(), &urls);
            for store in stores {
                for part in ["CERT", "KEY"] {
                    let key = format!("{store}_TLS_CLIENT_{part}_PEM");
                    assert_eq!(
                        secret_ref(&dep, &key),
                        Some(("drop-backends".to_owned(), key.clone())),
                        "{component:?}"
                    );
                }
            }
            assert_eq!(
                secret_ref(&dep, &format!("{not}_TLS_CLIENT_CERT_PEM")),
                None,
                "{component:?}"
            );
            let text = serde_json::to_string(&dep).expect("json");
            assert!(!text.contains(" KEY\""), "{text}");
        }
    }

    #[test]
    fn the_replicas_to_wait_for_reach_the_gateways_through_the_secret() {
        let waiting = BackendUrls {
            redis_wait_replicas: Some(1),
            ..urls(None)
        };
        let secret = backends_secret(&sale(""), &waiting);
        assert_eq!(
            secret_text(&secret, "REDIS_WAIT_REPLICAS").as_deref(),
            Some("1")
        );
        assert_eq!(
            secret_text(
                &backends_secret(&sale(""), &urls(None)),
                "REDIS_WAIT_REPLICAS"
            ),
            None
        );
        let gw = deployment(&sale(""), Component::Gateway, 1, &defaults(), &waiting);
        assert_eq!(
            secret_ref(&gw, "REDIS_WAIT_REPLICAS"),
            Some(("drop-backends".to_owned(), "REDIS_WAIT_REPLICAS".to_owned()))
        );
        let wk = deployment(&sale(""), Component::Worker, 1, &defaults(), &waiting);
        assert_eq!(secret_ref(&wk, "REDIS_WAIT_REPLICAS"), None);
    }

    #[test]
    fn the_confirm_token_reaches_the_gateways_only_through_the_secret() {
        let with_token = BackendUrls {
            confirm_token: Some("pay-service-token".into()),
            ..urls(None)
        };
        let secret = backends_secret(&sale(""), &with_token);
        assert_eq!(
            secret_text(&secret, "CONFIRM_TOKEN").as_deref(),
            Some("pay-service-token")
        );
        assert_eq!(
            secret_text(&backends_secret(&sale(""), &urls(None)), "CONFIRM_TOKEN"),
            None
        );
        let gw = deployment(&sale(""), Component::Gateway, 1, &defaults(), &with_token);
        assert_eq!(
            secret_ref(&gw, "CONFIRM_TOKEN"),
            Some(("drop-backends".to_owned(), "CONFIRM_TOKEN".to_owned()))
        );
        let text = serde_json::to_string(&gw).expect("json");
        assert!(!text.contains("pay-service-token"), "{text}");
        let wk = deployment(&sale(""), Component::Worker, 1, &defaults(), &with_token);
        assert_eq!(secret_ref(&wk, "CONFIRM_TOKEN"), None);
    }

    /// The pass key reaches the gateways through the Secret; the lottery
    /// seed stays in the Secret: no pod gets it before it is revealed.
    #[test]
    fn the_pass_key_reaches_the_gateways_and_the_seed_no_pod() {
        let keyed = BackendUrls {
            pass_key: Some("p".repeat(64)),
            lottery_seed: Some("5".repeat(64)),
            ..urls(None)
        };
        let secret = backends_secret(&sale(""), &keyed);
        assert_eq!(secret_text(&secret, "PASS_KEY"), keyed.pass_key);
        assert_eq!(secret_text(&secret, "LOTTERY_SEED"), keyed.lottery_seed);
        let gw = deployment(&sale(""), Component::Gateway, 1, &defaults(), &keyed);
        assert_eq!(
            secret_ref(&gw, "PASS_KEY"),
            Some(("drop-backends".to_owned(), "PASS_KEY".to_owned()))
        );
        let wk = deployment(&sale(""), Component::Worker, 1, &defaults(), &keyed);
        assert_eq!(secret_ref(&wk, "PASS_KEY"), None);
        for d in [&gw, &wk] {
            assert!(env_var(d, "LOTTERY_SEED").is_none());
            let text = serde_json::to_string(d).expect("json");
            assert!(!text.contains(&"5".repeat(64)) && !text.contains(&"p".repeat(64)));
        }
    }

    #[test]
    fn long_names_stay_valid_labels() {
        let long = "a".repeat(100);
        let n = child_name(&long, Component::Gateway);
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-gateway"));
        assert_eq!(n, child_name(&long, Component::Gateway), "stable");
        assert_ne!(n, child_name(&"a".repeat(101), Component::Gateway));
        assert_eq!(child_name("drop", Component::Worker), "drop-worker");
        let secret = backends_secret_name(&long);
        assert!(
            secret.len() <= 63 && secret.ends_with("-backends"),
            "{secret}"
        );
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.template.spec.as_ref().expect("pod spec")
    }

    #[test]
    fn pods_spread_over_nodes_and_zones_unless_told_otherwise() {
        let s = sale("");
        for component in [Component::Gateway, Component::Worker] {
            let d = deployment(&s, component, 3, &defaults(), &urls(None));
            let p = pod(&d);
            let spread = p.topology_spread_constraints.as_deref().unwrap_or_default();
            let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
            assert_eq!(
                keys,
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
            );
            for c in spread {
                assert_eq!(c.max_skew, 1);
                assert_eq!(
                    c.when_unsatisfiable, "ScheduleAnyway",
                    "a small cluster must still run every pod"
                );
                let selector = c
                    .label_selector
                    .as_ref()
                    .and_then(|l| l.match_labels.as_ref());
                assert_eq!(selector, Some(&labels(&s, component)), "{component:?}");
            }
            assert_eq!(p.node_selector, None);
            assert_eq!(p.tolerations, None);
            assert_eq!(p.affinity, None);
            assert_eq!(p.priority_class_name, None);
        }
    }

    #[test]
    fn scheduling_of_the_spec_reaches_the_pods_as_written() {
        let s = sale(
            r#"gateway:
    scheduling:
      nodeSelector: {pool: flash}
      tolerations: [{key: dedicated, operator: Equal, value: flash, effect: NoSchedule}]
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms: [{matchExpressions: [{key: arch, operator: In, values: [amd64]}]}]
      topologySpreadConstraints:
        - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule}
      priorityClassName: flash-critical"#,
        );
        let scheduling = s.spec.gateway.scheduling.clone().expect("parsed");
        let gw = deployment(&s, Component::Gateway, 3, &defaults(), &urls(None));
        let p = pod(&gw);
        assert_eq!(
            p.node_selector,
            Some(BTreeMap::from([("pool".to_owned(), "flash".to_owned())]))
        );
        assert_eq!(p.tolerations.as_ref(), Some(&scheduling.tolerations));
        assert_eq!(
            p.tolerations.as_deref().unwrap_or_default()[0]
                .effect
                .as_deref(),
            Some("NoSchedule")
        );
        assert_eq!(p.affinity, scheduling.affinity);
        assert!(
            p.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .is_some()
        );
        let spread = p.topology_spread_constraints.as_deref().unwrap_or_default();
        assert_eq!(
            spread.len(),
            1,
            "the spec's constraints replace the default"
        );
        assert_eq!(spread[0].max_skew, 2);
        assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
        assert_eq!(p.priority_class_name.as_deref(), Some("flash-critical"));

        // The worker was given none of it.
        let wk = deployment(&s, Component::Worker, 1, &defaults(), &urls(None));
        assert_eq!(pod(&wk).node_selector, None);
        assert_eq!(pod(&wk).priority_class_name, None);
        assert_eq!(
            pod(&wk).topology_spread_constraints.as_ref().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn the_user_header_reaches_the_gateways() {
        let s = sale("gateway: {userHeader: X-Authenticated-User}");
        let gw = deployment(&s, Component::Gateway, 2, &defaults(), &urls(None));
        assert_eq!(
            env_var(&gw, "USER_HEADER").and_then(|v| v.value.as_deref()),
            Some("X-Authenticated-User")
        );
        let wk = deployment(&s, Component::Worker, 1, &defaults(), &urls(None));
        assert!(env_var(&wk, "USER_HEADER").is_none());
        let plain = deployment(&sale(""), Component::Gateway, 2, &defaults(), &urls(None));
        assert!(env_var(&plain, "USER_HEADER").is_none());
    }

    #[test]
    fn the_rate_limit_key_and_trusted_proxies_reach_the_gateways() {
        let s = sale(
            "gateway: {rateLimit: {perClientPerSecond: 5, burst: 5, key: userAndIp, trustedProxies: 2}}",
        );
        let gw = deployment(&s, Component::Gateway, 2, &defaults(), &urls(None));
        let value = |name| env_var(&gw, name).and_then(|v| v.value.clone());
        assert_eq!(value("RATE_LIMIT_KEY").as_deref(), Some("user-and-ip"));
        assert_eq!(value("TRUSTED_PROXIES").as_deref(), Some("2"));
        let plain = deployment(&sale(""), Component::Gateway, 2, &defaults(), &urls(None));
        assert!(env_var(&plain, "TRUSTED_PROXIES").is_none());
    }

    #[test]
    fn connection_and_stream_caps_reach_the_gateways() {
        let s = sale("gateway: {maxConnections: 500, maxStreams: 40}");
        let gw = deployment(&s, Component::Gateway, 2, &defaults(), &urls(None));
        let value = |name| env_var(&gw, name).and_then(|v| v.value.clone());
        assert_eq!(value("MAX_CONNECTIONS").as_deref(), Some("500"));
        assert_eq!(value("MAX_STREAMS").as_deref(), Some("40"));
    }

    #[test]
    fn unknown_scheduling_fields_are_refused() {
        let yaml = r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {name: drop, namespace: shop}
spec:
  product: {sku: SKU-1, name: Thing, price: "9.99", currency: EUR}
  stock: 100
  window: {start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}
  worker: {scheduling: {nodeSelecter: {pool: flash}}}
"#;
        let err = FlashSale::from_yaml_documents(yaml).expect_err("a typo must not pass");
        assert!(format!("{err:#}").contains("nodeSelecter"), "{err:#}");
    }
}
