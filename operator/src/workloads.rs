//! The Kubernetes objects one sale owns: gateway and worker Deployments, a
//! Service for the gateway and a PodDisruptionBudget for each Deployment,
//! all with an owner reference to the FlashSale.

use crate::backends::BackendUrls;
use flashsale_common::amqp::QueueType;
use flashsale_common::sale::FlashSale;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;

pub const GATEWAY_PORT: i32 = 8080;
pub const WORKER_PORT: i32 = 9091;

/// Operator-wide settings that shape the workloads.
#[derive(Debug, Clone)]
pub struct WorkloadDefaults {
    pub image: String,
    /// Passed to pods of sales without `spec.backends`, the CA
    /// certificates as `TLS_CA_PEM`.
    pub urls: BackendUrls,
    pub queue_type: QueueType,
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
    let suffix = component.as_str();
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
) -> Deployment {
    let ns = sale.metadata.namespace.clone().unwrap_or_default();
    let name = sale.metadata.name.clone().unwrap_or_default();
    let spec = &sale.spec;
    let (binary, port, image, resources) = match component {
        Component::Gateway => (
            "flashsale-gateway",
            GATEWAY_PORT,
            spec.gateway.image.clone(),
            spec.gateway.resources.clone(),
        ),
        Component::Worker => (
            "flashsale-worker",
            WORKER_PORT,
            spec.worker.image.clone(),
            spec.worker.resources.clone(),
        ),
    };
    let mut vars = vec![
        env("SALES", format!("{ns}/{name}")),
        env("LISTEN_ADDR", format!("0.0.0.0:{port}")),
        env("LOG_FORMAT", "json"),
        env("QUEUE_TYPE", d.queue_type.as_str()),
    ];
    if component == Component::Worker {
        vars.push(env("BATCH_SIZE", spec.worker.batch_size.to_string()));
    }
    // A sale's own Secret wins; the operator's defaults fill the rest.
    let env_from = spec.backends.as_ref().map(|b| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: b.secret_name.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    if env_from.is_none() {
        vars.push(env("REDIS_URL", d.urls.redis_url.clone()));
        vars.push(env("AMQP_URL", d.urls.amqp_url.clone()));
        if component == Component::Worker {
            vars.push(env("DATABASE_URL", d.urls.database_url.clone()));
        }
        if let Some(pem) = &d.urls.tls_ca_pem {
            vars.push(env("TLS_CA_PEM", pem.clone()));
        }
    }
    let labels = labels(sale, component);
    let container = Container {
        name: component.as_str().to_owned(),
        image: Some(image.unwrap_or_else(|| d.image.clone())),
        command: Some(vec![format!("/usr/local/bin/{binary}")]),
        env: Some(vars),
        env_from,
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/healthz", port, 10)),
        readiness_probe: Some(probe("/readyz", port, 2)),
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
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(pod_security()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
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

    fn defaults(tls_ca_pem: Option<&str>) -> WorkloadDefaults {
        WorkloadDefaults {
            image: "img".into(),
            urls: BackendUrls {
                redis_url: "rediss://redis:6380".into(),
                amqp_url: "amqps://u:p@rabbitmq:5671/%2f".into(),
                database_url: "postgres://pg/flashsale?sslmode=verify-full".into(),
                tls_ca_pem: tls_ca_pem.map(str::to_owned),
            },
            queue_type: QueueType::Quorum,
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

    fn env_value(d: &Deployment, name: &str) -> Option<String> {
        let pod = d.spec.template.spec.as_ref()?;
        pod.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
    }

    #[test]
    fn the_operators_ca_goes_to_pods_with_its_urls() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for component in [Component::Gateway, Component::Worker] {
            let with = deployment(&sale(""), component, 1, &defaults(Some(pem)));
            assert_eq!(env_value(&with, "TLS_CA_PEM").as_deref(), Some(pem));
            assert_eq!(
                env_value(&with, "REDIS_URL").as_deref(),
                Some("rediss://redis:6380")
            );
            let without = deployment(&sale(""), component, 1, &defaults(None));
            assert_eq!(env_value(&without, "TLS_CA_PEM"), None);
            // A sale's own Secret carries its URLs and, if needed, its CA.
            let own = deployment(
                &sale("backends: {secretName: shop-stores}"),
                component,
                1,
                &defaults(Some(pem)),
            );
            assert_eq!(env_value(&own, "TLS_CA_PEM"), None);
            assert_eq!(env_value(&own, "REDIS_URL"), None);
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
    }
}
