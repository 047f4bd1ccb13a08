//! Seeding, reading and closing a sale in Redis. The operator, its `seed`
//! subcommand, the gateway and the tests all go through these functions.

use crate::keys::SaleKeys;
use crate::scripts;
use flashsale_api::sale::{AdmissionMode, FlashSaleSpec, Phase};
use flashsale_common::SaleRef;
use redis::aio::ConnectionLike;

/// What the seed script writes, taken from a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    pub stock: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub paused: bool,
    pub per_user: u32,
    pub per_order: u32,
    pub hold_ms: i64,
    pub rate_per_second: u32,
    pub burst: u32,
    pub product: ProductInfo,
    pub admission: AdmissionConfig,
}

/// The waiting room's settings as the sale hash keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    pub mode: AdmissionMode,
    /// When buyers may join (ms); the start for a sale without a line.
    pub open_ms: i64,
    pub per_second: u32,
    pub pass_ms: i64,
    /// Proof-of-work bits a join costs.
    pub challenge_bits: u8,
}

impl AdmissionConfig {
    /// No line: buyers buy as they come.
    pub fn open(start_ms: i64) -> Self {
        Self {
            mode: AdmissionMode::Open,
            open_ms: start_ms,
            per_second: 0,
            pass_ms: 0,
            challenge_bits: 0,
        }
    }
}

/// What buyers see of the product.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProductInfo {
    pub sku: String,
    pub name: String,
    pub price: String,
    pub currency: String,
}

impl From<&FlashSaleSpec> for SeedConfig {
    fn from(spec: &FlashSaleSpec) -> Self {
        let (rate, burst) = spec
            .gateway
            .rate_limit
            .as_ref()
            .map_or((0, 0), |r| (r.per_client_per_second, r.burst));
        Self {
            stock: spec.stock,
            start_ms: spec.window.start.as_millisecond(),
            end_ms: spec.window.end.as_millisecond(),
            paused: spec.paused,
            per_user: spec.limits.per_user,
            per_order: spec.limits.per_order,
            hold_ms: i64::from(spec.hold.seconds) * 1000,
            rate_per_second: rate,
            burst,
            product: ProductInfo {
                sku: spec.product.sku.clone(),
                name: spec.product.name.clone(),
                price: spec.product.price.clone(),
                currency: spec.product.currency.clone(),
            },
            admission: match &spec.admission {
                Some(a) if a.queued() => AdmissionConfig {
                    mode: a.mode,
                    open_ms: spec.window.start.as_millisecond() - a.queue_lead_ms().unwrap_or(0),
                    per_second: a.admit_per_second,
                    pass_ms: i64::from(a.pass_seconds) * 1000,
                    challenge_bits: a.challenge,
                },
                _ => AdmissionConfig::open(spec.window.start.as_millisecond()),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The sale did not exist; stock set.
    Created,
    /// Stock raised; the difference was added to what remains.
    Restocked,
    /// Configuration changed (window, limits, pause, lower stock).
    Updated,
    /// Nothing to do.
    Unchanged,
    /// Refused: the new stock is below the units reserved and sold.
    BelowCommitted,
    /// Rebuilt from the orders ledger after Redis lost the sale.
    Restored,
    /// Refused in [`SeedMode::Update`]: the sale is not in Redis, so Redis
    /// lost it; nothing was written.
    Missing,
}

/// Whether the seed script may create a sale that is not in Redis. The
/// decision is taken inside the script, atomically with the write: a sale
/// lost between an observation and the seed is never created again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedMode {
    /// Create the sale when it does not exist, else update it: for a sale
    /// that was never seeded (and of which no order is known).
    CreateOrUpdate,
    /// Update the sale; when it does not exist, write nothing and report
    /// [`SeedOutcome::Missing`].
    Update,
}

impl SeedMode {
    fn as_arg(self) -> &'static str {
        match self {
            Self::CreateOrUpdate => "create",
            Self::Update => "update",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    pub outcome: SeedOutcome,
    pub stock: i64,
    pub remaining: i64,
    /// Units reserved + sold when the seed ran.
    pub committed: i64,
}

pub async fn seed<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    cfg: &SeedConfig,
    mode: SeedMode,
) -> redis::RedisResult<SeedReport> {
    let keys = SaleKeys::new(sale);
    let mut call = scripts::SEED.prepare_invoke();
    call.key(keys.sale())
        .arg(cfg.stock)
        .arg(keys.events())
        .arg(mode.as_arg());
    for (name, value) in cfg.settings() {
        call.arg(name).arg(value);
    }
    let (outcome, stock, remaining, committed): (String, i64, i64, i64) =
        call.invoke_async(conn).await?;
    let outcome = match outcome.as_str() {
        "created" => SeedOutcome::Created,
        "restocked" => SeedOutcome::Restocked,
        "updated" => SeedOutcome::Updated,
        "unchanged" => SeedOutcome::Unchanged,
        "missing" => SeedOutcome::Missing,
        _ => SeedOutcome::BelowCommitted,
    };
    Ok(SeedReport {
        outcome,
        stock,
        remaining,
        committed,
    })
}

impl SeedConfig {
    /// The settings as the sale hash stores them, by field name.
    fn settings(&self) -> [(&'static str, String); 17] {
        [
            ("start_ms", self.start_ms.to_string()),
            ("end_ms", self.end_ms.to_string()),
            ("paused", u8::from(self.paused).to_string()),
            ("per_user", self.per_user.to_string()),
            ("per_order", self.per_order.to_string()),
            ("hold_ms", self.hold_ms.to_string()),
            ("rl_rate", self.rate_per_second.to_string()),
            ("rl_burst", self.burst.to_string()),
            ("sku", self.product.sku.clone()),
            ("product", self.product.name.clone()),
            ("price", self.product.price.clone()),
            ("currency", self.product.currency.clone()),
            ("adm_mode", self.admission.mode.as_str().to_owned()),
            ("q_open_ms", self.admission.open_ms.to_string()),
            ("adm_rate", self.admission.per_second.to_string()),
            ("pass_ms", self.admission.pass_ms.to_string()),
            ("pow_bits", self.admission.challenge_bits.to_string()),
        ]
    }
}

/// Entries per call when a lost sale is rebuilt: each call stays short, so
/// other sales on the same Redis are not held up.
const RESTORE_CHUNK: usize = 500;

/// Rebuilds a sale that Redis lost from what the orders ledger holds: the
/// units each buyer has (for the per-user limit), the holds still open
/// (payable until their deadline, expired by the gateways after it) and
/// the counters, with `remaining = stock - sold - reserved`. Idempotency
/// keys are not in the ledger and start afresh. Returns None, changing
/// nothing, when the sale exists in Redis (seeded or restored meanwhile).
pub async fn restore<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    cfg: &SeedConfig,
    ledger: &flashsale_common::db::LedgerState,
) -> redis::RedisResult<Option<SeedReport>> {
    let keys = SaleKeys::new(sale);
    let step = |name: &str| {
        let mut inv = scripts::RESTORE.prepare_invoke();
        inv.key(keys.sale())
            .key(keys.users())
            .key(keys.orders())
            .key(keys.holds())
            .arg(name);
        inv
    };
    // The steps in order, the sale hash last; each changes nothing once the
    // sale exists again.
    let mut steps = vec![step("clear")];
    for chunk in ledger.users.chunks(RESTORE_CHUNK) {
        let mut inv = step("users");
        for (user, units) in chunk {
            inv.arg(user).arg(units);
        }
        steps.push(inv);
    }
    for chunk in ledger.holds.chunks(RESTORE_CHUNK) {
        let mut inv = step("holds");
        for hold in chunk {
            let record = serde_json::to_string(hold).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "cannot encode a hold",
                    e.to_string(),
                ))
            })?;
            inv.arg(hold.order_id.to_string())
                .arg(hold.hold_expires_at_ms.unwrap_or(hold.reserved_at_ms))
                .arg(record);
        }
        steps.push(inv);
    }
    let mut create = step("create");
    create
        .arg(cfg.stock)
        .arg(ledger.confirmed_units)
        .arg(ledger.expired_units)
        .arg(ledger.reserved_units())
        .arg(keys.events());
    for (name, value) in cfg.settings() {
        create.arg(name).arg(value);
    }
    steps.push(create);
    let mut reply: Vec<String> = Vec::new();
    for inv in &steps {
        reply = inv.invoke_async(conn).await?;
        if reply.first().is_some_and(|s| s == "exists") {
            return Ok(None);
        }
    }
    let number = |i: usize| {
        reply
            .get(i)
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply of the restore script",
                    reply.join(" "),
                ))
            })
    };
    Ok(Some(SeedReport {
        outcome: SeedOutcome::Restored,
        stock: number(1)?,
        remaining: number(2)?,
        committed: number(3)?,
    }))
}

/// A stock event, published on the sale's channel by every script that
/// changes the sale: its sequence number and the units left
/// (`publish_stock` in `lua/formats.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockEvent {
    pub seq: i64,
    pub remaining: i64,
}

impl StockEvent {
    /// `None` for a payload not of the form `<seq> <remaining>`.
    pub fn parse(payload: &str) -> Option<StockEvent> {
        let (seq, remaining) = payload.split_once(' ')?;
        Some(StockEvent {
            seq: seq.parse().ok()?,
            remaining: remaining.parse().ok()?,
        })
    }
}

/// Counters and configuration of a sale, read atomically with Redis's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockSnapshot {
    pub stock: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub sold: i64,
    pub expired: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub paused: bool,
    pub closed: bool,
    /// Bumped on every change of stock or configuration.
    pub seq: i64,
    pub per_user: i64,
    pub per_order: i64,
    pub hold_ms: i64,
    /// Redis server time when read, Unix milliseconds.
    pub now_ms: i64,
    pub admission: AdmissionConfig,
}

impl StockSnapshot {
    /// The phase buyers see now, from the counters and the window.
    pub fn phase(&self) -> Phase {
        Phase::at(flashsale_api::sale::Moment {
            now_ms: self.now_ms,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            paused: self.paused,
            closed: self.closed,
            remaining: self.remaining,
        })
    }
}

pub async fn read<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<Option<StockSnapshot>> {
    let keys = SaleKeys::new(sale);
    let v: Vec<i64> = scripts::STATUS.key(keys.sale()).invoke_async(conn).await?;
    if v.len() < 19 {
        return Ok(None);
    }
    let mode = match v[18] {
        1 => AdmissionMode::Fifo,
        2 => AdmissionMode::Lottery,
        _ => AdmissionMode::Open,
    };
    Ok(Some(StockSnapshot {
        stock: v[0],
        remaining: v[1],
        reserved: v[2],
        sold: v[3],
        expired: v[4],
        start_ms: v[5],
        end_ms: v[6],
        paused: v[7] == 1,
        closed: v[8] == 1,
        seq: v[9],
        per_user: v[10],
        per_order: v[11],
        hold_ms: v[12],
        now_ms: v[17],
        admission: AdmissionConfig {
            mode,
            open_ms: if mode == AdmissionMode::Open {
                v[5]
            } else {
                v[13]
            },
            per_second: u32::try_from(v[14]).unwrap_or(0),
            pass_ms: v[15],
            challenge_bits: u8::try_from(v[16]).unwrap_or(0),
        },
    }))
}

/// The product fields of a sale (None when the sale does not exist).
pub async fn product<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<Option<ProductInfo>> {
    let keys = SaleKeys::new(sale);
    let v: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.sale())
        .arg(&["sku", "product", "price", "currency"][..])
        .query_async(conn)
        .await?;
    if v.iter().all(Option::is_none) {
        return Ok(None);
    }
    let get = |i: usize| v.get(i).cloned().flatten().unwrap_or_default();
    Ok(Some(ProductInfo {
        sku: get(0),
        name: get(1),
        price: get(2),
        currency: get(3),
    }))
}

/// Closes (or reopens) a sale whatever its window says. False: no such sale.
pub async fn set_closed<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    closed: bool,
) -> redis::RedisResult<bool> {
    let keys = SaleKeys::new(sale);
    let found: i64 = scripts::CLOSE
        .key(keys.sale())
        .arg(u8::from(closed))
        .arg(keys.events())
        .invoke_async(conn)
        .await?;
    Ok(found == 1)
}

/// Removes every key of a sale (the orders ledger in PostgreSQL stays).
pub async fn delete_sale<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<()> {
    let keys = SaleKeys::new(sale);
    let mut cursor = "0".to_owned();
    loop {
        cursor = scripts::DROP_RATE_LIMITS
            .key(keys.sale())
            .arg(&cursor)
            .arg(keys.rate_limit_pattern())
            .invoke_async(conn)
            .await?;
        if cursor == "0" {
            break;
        }
    }
    let _: i64 = redis::cmd("DEL").arg(keys.all()).query_async(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> StockSnapshot {
        StockSnapshot {
            stock: 10,
            remaining: 5,
            reserved: 0,
            sold: 5,
            expired: 0,
            start_ms: 1000,
            end_ms: 2000,
            paused: false,
            closed: false,
            seq: 1,
            per_user: 1,
            per_order: 1,
            hold_ms: 0,
            now_ms: 1500,
            admission: AdmissionConfig::open(1000),
        }
    }

    #[test]
    fn phase_follows_window_and_counters() {
        let s = snap();
        assert_eq!(s.phase(), Phase::Active);
        assert_eq!(
            StockSnapshot {
                now_ms: 999,
                ..s.clone()
            }
            .phase(),
            Phase::Scheduled
        );
        assert_eq!(
            StockSnapshot {
                now_ms: 1000,
                ..s.clone()
            }
            .phase(),
            Phase::Active
        );
        assert_eq!(
            StockSnapshot {
                now_ms: 2000,
                ..s.clone()
            }
            .phase(),
            Phase::Ended
        );
        assert_eq!(
            StockSnapshot {
                remaining: 0,
                ..s.clone()
            }
            .phase(),
            Phase::SoldOut
        );
        assert_eq!(
            StockSnapshot {
                paused: true,
                ..s.clone()
            }
            .phase(),
            Phase::Paused
        );
        assert_eq!(StockSnapshot { closed: true, ..s }.phase(), Phase::Ended);
    }
}
