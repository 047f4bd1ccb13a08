//! The `FlashSale` custom resource (`flashsale.io/v1alpha1`).
//!
//! The schema carries every rule the API server can check (ranges, patterns,
//! CEL `x-kubernetes-validations`); [`FlashSaleSpec::problems`] checks the
//! rest and names the field and the fix, for the `Invalid` phase.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A flash sale: one product, a fixed stock and a time window.
// Each printer column repeats `name`/`type_`, which clippy mistakes for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "flashsale.io",
    version = "v1alpha1",
    kind = "FlashSale",
    plural = "flashsales",
    singular = "flashsale",
    shortname = "fs",
    category = "flashsale",
    namespaced,
    status = "FlashSaleStatus",
    derive = "PartialEq",
    doc = "A flash sale: a product, its stock and a time window, run by the FlashSale operator.",
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE),
    printcolumn(name = "Product", type_ = "string", json_path = ".spec.product.sku"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Remaining", type_ = "integer", json_path = ".status.remaining"),
    printcolumn(name = "Stock", type_ = "integer", json_path = ".spec.stock"),
    printcolumn(name = "Persisted", type_ = "integer", json_path = ".status.persisted"),
    printcolumn(name = "Waiting", type_ = "integer", json_path = ".status.queue.waiting"),
    printcolumn(name = "Opens", type_ = "string", json_path = ".spec.window.start"),
    printcolumn(name = "Closes", type_ = "string", json_path = ".spec.window.end"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reserved",
        type_ = "integer",
        json_path = ".status.reserved",
        priority = 1
    ),
    printcolumn(
        name = "Sold",
        type_ = "integer",
        json_path = ".status.sold",
        priority = 1
    ),
    printcolumn(
        name = "DeadLetters",
        type_ = "integer",
        json_path = ".status.deadLetters",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.window.end > self.window.start").message("window.end must be after window.start"))]
#[x_kube(validation = Rule::new("self.limits.perOrder <= self.limits.perUser").message("limits.perOrder must not exceed limits.perUser"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlashSaleSpec {
    /// What is on sale.
    pub product: Product,
    /// Total units. Raising it restocks; lowering it below what is reserved
    /// and sold is refused (phase stays, condition Seeded=False says why).
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub stock: i64,
    /// When buyers may reserve: from `start` (inclusive) to `end` (exclusive).
    pub window: Window,
    /// Units one user may hold in all and per order.
    #[serde(default)]
    pub limits: Limits,
    /// The kill switch: `true` closes the sale at once; `false` reopens it
    /// if the window is still open.
    #[serde(default)]
    pub paused: bool,
    /// Unpaid reservations and how long they are held.
    #[serde(default)]
    pub hold: Hold,
    /// The gateway Deployment that takes buyers' requests.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// The worker Deployment that writes orders to PostgreSQL.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// Where Redis, RabbitMQ and PostgreSQL are; the operator's defaults
    /// apply when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Backends>,
    /// The waiting room: buyers join a line before the sale opens and are
    /// let through at a pace the stock can serve, each with a signed pass.
    /// Omitted: no line (as `mode: open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

/// How buyers are let through to buy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// No line: whoever asks first buys first.
    #[default]
    Open,
    /// Admitted in the order the joins reached Redis.
    Fifo,
    /// Everyone who joined before `window.start` is admitted in a random
    /// order drawn at the start; later arrivals go behind them in order of
    /// arrival. The draw is committed to before the line opens and
    /// revealed after (`status.lottery`).
    Lottery,
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Open => "open",
            AdmissionMode::Fifo => "fifo",
            AdmissionMode::Lottery => "lottery",
        }
    }

    pub fn parse(text: &str) -> Option<AdmissionMode> {
        [
            AdmissionMode::Open,
            AdmissionMode::Fifo,
            AdmissionMode::Lottery,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

/// The waiting room of a sale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("duration(self.queueOpensBefore) <= duration('168h')").message("admission.queueOpensBefore must be at most a week"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admission {
    /// `open` (no line), `fifo` or `lottery`.
    #[serde(default)]
    pub mode: AdmissionMode,
    /// How long before `window.start` buyers may join the line: a number
    /// and `s`, `m` or `h`, at most a week (e.g. `30m`).
    #[serde(default = "default_queue_opens_before")]
    #[schemars(length(max = 7), regex(pattern = r"^[0-9]{1,6}[smh]$"))]
    pub queue_opens_before: String,
    /// The most buyers let through per second; fewer while the stock left
    /// (plus the units on hold) cannot serve more passes.
    #[serde(default = "default_admit_per_second")]
    #[schemars(range(min = 1, max = 100_000))]
    pub admit_per_second: u32,
    /// Seconds an admission pass stays valid; unused, its place goes to
    /// the next in line.
    #[serde(default = "default_pass_seconds")]
    #[schemars(range(min = 10, max = 3_600))]
    pub pass_seconds: u32,
    /// Proof-of-work difficulty in bits that joining the line costs (each
    /// bit doubles the work); 0 turns it off.
    #[serde(default = "default_challenge")]
    #[schemars(range(min = 0, max = 32))]
    pub challenge: u8,
}

fn default_queue_opens_before() -> String {
    "15m".to_owned()
}
fn default_admit_per_second() -> u32 {
    50
}
fn default_pass_seconds() -> u32 {
    120
}
fn default_challenge() -> u8 {
    16
}

/// Longest `queueOpensBefore`: a week.
pub const MAX_QUEUE_LEAD_MS: i64 = 7 * 24 * 3_600_000;

impl Admission {
    /// `queueOpensBefore` in milliseconds; None when it does not parse.
    pub fn queue_lead_ms(&self) -> Option<i64> {
        let text = self.queue_opens_before.trim();
        let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
        let n: i64 = digits.parse().ok()?;
        let ms = match unit {
            "s" => n.checked_mul(1_000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            _ => return None,
        };
        (0..=MAX_QUEUE_LEAD_MS).contains(&ms).then_some(ms)
    }

    /// Whether buyers wait in a line at all.
    pub fn queued(&self) -> bool {
        self.mode != AdmissionMode::Open
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Product {
    /// Stock-keeping unit; immutable once set.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("product.sku is immutable"))]
    pub sku: String,
    /// Display name.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// Unit price as a decimal string, e.g. "999.00".
    #[schemars(regex(pattern = r"^[0-9]{1,12}(\.[0-9]{1,4})?$"))]
    pub price: String,
    /// ISO 4217 currency code.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    /// Opening instant, RFC 3339.
    pub start: Timestamp,
    /// Closing instant, RFC 3339; must be after `start`.
    pub end: Timestamp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Units one user may hold across all their orders (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub per_user: u32,
    /// Units in one order; at most `perUser` (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub per_order: u32,
}

fn one() -> u32 {
    1
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_user: 1,
            per_order: 1,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hold {
    /// Seconds an unpaid reservation is kept before its units return to
    /// stock. 0 means no payment step: orders are confirmed at once.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86_400))]
    pub seconds: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Gateway pods while the sale runs.
    #[serde(default = "default_gateway_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container image; the operator's own image when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory for each gateway pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Token bucket per client; no limit when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Header in which the proxy in front of the gateways names the
    /// signed-in buyer (e.g. X-Authenticated-User). Purchases without it
    /// are refused, and per-user limits hold per signed-in buyer whatever
    /// the body says. Without it the body's `user` is the buyer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub user_header: Option<String>,
    /// Where the gateway pods run. Without topology spread constraints of
    /// its own, a sale's gateway pods spread over nodes and zones where
    /// they can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Buyers' connections one gateway pod holds open at most (default
    /// 10000, lowered to what its open-file limit allows); beyond it a
    /// connection is answered `503` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: Option<u32>,
    /// Live-stock (SSE) streams one gateway pod serves at most (default
    /// 2000, about 30 KiB each); beyond it `503` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_streams: Option<u32>,
}

fn default_gateway_replicas() -> i32 {
    2
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            replicas: default_gateway_replicas(),
            image: None,
            resources: None,
            rate_limit: None,
            user_header: None,
            scheduling: None,
            max_connections: None,
            max_streams: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained purchase attempts per client per second.
    #[schemars(range(min = 1, max = 100_000))]
    pub per_client_per_second: u32,
    /// Attempts a client may make at once after being idle.
    #[schemars(range(min = 1, max = 100_000))]
    pub burst: u32,
    /// What a client is: `user` (the buyer), `ip` (its address) or
    /// `userAndIp` (default `user`).
    #[serde(default)]
    pub key: RateLimitKey,
    /// Proxies in front of the gateways that append the address they saw
    /// to `X-Forwarded-For` (default 0: the connection's address is the
    /// client's). With N, the client's address is the N-th entry from the
    /// right; entries a client wrote further left are ignored.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub trusted_proxies: u8,
}

/// Which identity a client's token bucket is keyed by; the gateway's
/// `--rate-limit-key` takes the same values, kebab-cased.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    /// The buyer.
    #[default]
    User,
    /// The client's IP address.
    Ip,
    /// Buyer and IP address together.
    UserAndIp,
}

impl RateLimitKey {
    /// The value of the gateway's `--rate-limit-key`.
    pub fn as_flag(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerSpec {
    /// Worker pods while orders flow.
    #[serde(default = "default_worker_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Orders written to PostgreSQL in one transaction at most.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10_000))]
    pub batch_size: u32,
    /// Container image; the operator's own image when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory for each worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the worker pods run, as for the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
}

fn default_worker_replicas() -> i32 {
    1
}

fn default_batch_size() -> u32 {
    500
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            replicas: default_worker_replicas(),
            batch_size: default_batch_size(),
            image: None,
            resources: None,
            scheduling: None,
        }
    }
}

/// Where a component's pods run: the scheduling fields of a Kubernetes pod
/// spec, copied into the pods as they are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scheduling {
    /// Labels a node must carry, e.g. a node pool kept for the sale.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate, e.g. those of a dedicated node pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replaces the default spread (at most one pod more on any node or in
    /// any zone than on another, where the scheduler can).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// A PriorityClass, so that other pods are preempted before these
    /// during the sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub priority_class_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backends {
    /// A Secret in the sale's namespace with keys `REDIS_URL`, `AMQP_URL`
    /// and `DATABASE_URL` (each key present overrides the operator default)
    /// and, for data stores whose certificates a private CA signs,
    /// `TLS_CA_PEM`. The operator copies the URLs it uses into the sale's
    /// `<sale>-backends` Secret, which the pods read.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// The human summary of where a sale stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Scheduled,
    Active,
    SoldOut,
    Paused,
    Ended,
    Invalid,
}

/// Where a sale stands at an instant: everything [`Phase::at`] decides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    pub now_ms: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub paused: bool,
    /// Closed by the operator (deleted, or a spec it cannot run).
    pub closed: bool,
    pub remaining: i64,
}

impl Phase {
    /// The one definition of a sale's phase, in this order: closed or past
    /// its end, paused, before its start, sold out, active. The status, the
    /// gateways' view and the reservation script (`reserve.lua`, whose
    /// refusals a table test holds to this) all decide by it.
    pub fn at(m: Moment) -> Phase {
        if m.closed || m.now_ms >= m.end_ms {
            Phase::Ended
        } else if m.paused {
            Phase::Paused
        } else if m.now_ms < m.start_ms {
            Phase::Scheduled
        } else if m.remaining <= 0 {
            Phase::SoldOut
        } else {
            Phase::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "Scheduled",
            Phase::Active => "Active",
            Phase::SoldOut => "SoldOut",
            Phase::Paused => "Paused",
            Phase::Ended => "Ended",
            Phase::Invalid => "Invalid",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlashSaleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Units still available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Units held by unpaid reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<i64>,
    /// Units sold (confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sold: Option<i64>,
    /// Units whose hold expired and went back to stock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<i64>,
    /// Orders stored in PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<i64>,
    /// Messages in the sale's dead-letter queue: what a worker could never
    /// store, each with its reason (`flashsale-operator redrive` returns
    /// them once the cause is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<Timestamp>,
    /// The waiting room's counts, for a sale with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// A lottery's commitment and, once drawn, its seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lottery: Option<LotteryStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Buyers in the waiting room.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// In line, not yet let through.
    pub waiting: i64,
    /// Let through (given a pass) so far.
    pub admitted: i64,
    /// Passes that bought.
    pub used: i64,
    /// Passes that ran out unused; their places went to the next in line.
    pub expired: i64,
}

/// The lottery's draw, auditable: `commitment` is the SHA-256 (hex) of
/// the seed, written before the line opens; `seed` is revealed once the
/// draw is made (`flashsale-operator verify-lottery` checks both).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LotteryStatus {
    pub commitment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// Tickets in the draw (everyone who joined before the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn: Option<i64>,
}

/// The CEL rule the API server holds a FlashSale's name to: a DNS label
/// that starts with a letter, as the name of the sale's Service must be
/// (`<name>-gateway`, shortened with a hash past 63 characters). [`name_problem`]
/// checks the same for manifests the API server never saw.
pub const NAME_RULE: &str =
    "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
pub const NAME_MESSAGE: &str = "metadata.name must be at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (no dots): the sale's Service is named after it";

/// What is wrong with `name` as a FlashSale's name, if anything.
pub fn name_problem(name: &str) -> Option<SpecProblem> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (!ok).then(|| SpecProblem {
        field: "metadata.name",
        message: format!("{name:?}: {NAME_MESSAGE}"),
    })
}

/// The CustomResourceDefinition, with formats the API server knows: an
/// unsigned field's `uint8` or `uint32` (which every install would warn
/// about) becomes `int64`, whose range holds it.
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = FlashSale::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            known_formats(schema);
        }
    }
    crd
}

fn known_formats(schema: &mut JSONSchemaProps) {
    if schema
        .format
        .as_deref()
        .is_some_and(|f| f.starts_with("uint"))
    {
        schema.format = Some("int64".to_owned());
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        known_formats(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        known_formats(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(more)) = schema.additional_properties.as_mut() {
        known_formats(more);
    }
}

/// A problem in a spec that the schema cannot express: which field, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub field: &'static str,
    pub message: String,
}

impl FlashSaleSpec {
    /// Checks the rules the API server may not have enforced (manifests read
    /// from files, clusters without CEL). Empty when the spec is valid.
    pub fn problems(&self) -> Vec<SpecProblem> {
        let mut out = Vec::new();
        let mut bad =
            |field: &'static str, message: String| out.push(SpecProblem { field, message });
        if self.stock < 0 {
            bad(
                "spec.stock",
                format!("stock is {}; set it to 0 or more", self.stock),
            );
        }
        if self.window.end <= self.window.start {
            bad(
                "spec.window.end",
                format!(
                    "window.end ({}) must be after window.start ({})",
                    self.window.end, self.window.start
                ),
            );
        }
        if self.limits.per_user < 1 {
            bad("spec.limits.perUser", "perUser must be at least 1".into());
        }
        if self.limits.per_order < 1 {
            bad("spec.limits.perOrder", "perOrder must be at least 1".into());
        }
        if self.limits.per_order > self.limits.per_user {
            bad(
                "spec.limits.perOrder",
                format!(
                    "perOrder ({}) exceeds perUser ({}); lower perOrder or raise perUser",
                    self.limits.per_order, self.limits.per_user
                ),
            );
        }
        if let Some(a) = &self.admission
            && a.queue_lead_ms().is_none()
        {
            bad(
                "spec.admission.queueOpensBefore",
                format!(
                    "{:?} is not a duration of at most a week: a number and s, m or h, e.g. 30m",
                    a.queue_opens_before
                ),
            );
        }
        if self.product.sku.trim().is_empty() {
            bad("spec.product.sku", "sku must not be empty".into());
        }
        if let Some(rl) = &self.gateway.rate_limit
            && (rl.per_client_per_second < 1 || rl.burst < 1)
        {
            bad(
                "spec.gateway.rateLimit",
                "perClientPerSecond and burst must both be at least 1; remove rateLimit to disable it"
                    .into(),
            );
        }
        if self.gateway.replicas < 0 || self.worker.replicas < 0 {
            bad("spec.gateway.replicas", "replicas must be 0 or more".into());
        }
        out
    }
}

impl FlashSale {
    /// Reads manifests (one or more YAML documents) and keeps the FlashSales.
    pub fn from_yaml_documents(text: &str) -> anyhow::Result<Vec<FlashSale>> {
        use serde::Deserialize as _;
        let mut sales = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("document {}: not YAML: {e}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            if kind != "FlashSale" {
                continue;
            }
            let sale: FlashSale = serde_yaml::from_value(value)
                .map_err(|e| anyhow::anyhow!("document {}: not a valid FlashSale: {e}", i + 1))?;
            sales.push(sale);
        }
        Ok(sales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    const MANIFEST: &str = r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {name: drop, namespace: shop}
spec:
  product: {sku: IPHONE-17-256, name: "iPhone 17", price: "999.00", currency: USD}
  stock: 100
  window: {start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}
  limits: {perUser: 2, perOrder: 2}
"#;

    #[test]
    fn manifest_parses_with_defaults() {
        let sales = FlashSale::from_yaml_documents(MANIFEST).expect("parses");
        assert_eq!(sales.len(), 1);
        let s = &sales[0].spec;
        assert_eq!(s.stock, 100);
        assert_eq!(s.hold.seconds, 0);
        assert_eq!(s.gateway.replicas, 2);
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = MANIFEST.replace("stock: 100", "stock: 100\n  stok: 1");
        let err = FlashSale::from_yaml_documents(&text).expect_err("typo refused");
        assert!(err.to_string().contains("stok"), "{err}");
    }

    #[test]
    fn problems_name_the_field() {
        let mut s = FlashSale::from_yaml_documents(MANIFEST).expect("parses")[0]
            .spec
            .clone();
        s.limits.per_order = 3;
        s.window.end = s.window.start;
        let fields: Vec<_> = s.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["spec.window.end", "spec.limits.perOrder"]);
    }

    #[test]
    fn the_crd_has_only_formats_and_columns_a_real_api_server_shows() {
        let crd = super::crd();
        let text = serde_json::to_string(&crd).expect("serialises");
        assert!(
            !text.contains("uint"),
            "the API server warns of unknown formats"
        );
        let columns = &crd.spec.versions[0].additional_printer_columns;
        let dates: Vec<_> = columns
            .iter()
            .flatten()
            .filter(|c| c.type_ == "date")
            .map(|c| c.name.as_str())
            .collect();
        // A date column prints an age, `<invalid>` for a future time.
        assert_eq!(dates, vec!["Age"]);
    }

    #[test]
    fn limits_default_per_field() {
        let yaml = r#"
apiVersion: flashsale.io/v1alpha1
kind: FlashSale
metadata: {name: drop}
spec:
  product: {sku: SKU-1, name: Thing, price: "9.99", currency: EUR}
  stock: 10
  window: {start: "2026-11-28T09:00:00Z", end: "2026-11-28T10:00:00Z"}
  limits: {perUser: 3}
"#;
        let sale = &FlashSale::from_yaml_documents(yaml).expect("perOrder defaults")[0];
        assert_eq!(
            (sale.spec.limits.per_user, sale.spec.limits.per_order),
            (3, 1)
        );
    }

    #[test]
    fn names_a_service_can_carry() {
        for good in ["drop", "black-friday-2027", &"a".repeat(63)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        for bad in ["my.sale", "2027-drop", "drop-", "Drop", "", &"a".repeat(64)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn crd_carries_cel_rules_and_columns() {
        let crd = serde_json::to_string(&FlashSale::crd()).expect("serialises");
        assert!(crd.contains(NAME_RULE));
        assert!(crd.contains("x-kubernetes-validations"));
        assert!(crd.contains("self.window.end > self.window.start"));
        assert!(crd.contains("product.sku is immutable"));
        assert!(crd.contains("\"shortNames\":[\"fs\"]"));
    }
}
