//! Turning a plan and fresh counts into the FlashSale status, keeping
//! condition transition times when nothing changed.

use crate::plan::{ConditionPlan, Observed, Plan};
use flashsale_api::sale::{FlashSale, FlashSaleStatus};
use flashsale_store::stock::StockSnapshot;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

fn condition(
    c: &ConditionPlan,
    old: &[Condition],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let since = old
        .iter()
        .find(|o| o.type_ == c.type_ && o.status == status)
        .map_or(Time(now), |o| o.last_transition_time.clone());
    Condition {
        type_: c.type_.to_owned(),
        status: status.to_owned(),
        reason: c.reason.to_owned(),
        message: c.message.chars().take(32_768).collect(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

pub fn desired_status(
    sale: &FlashSale,
    plan: &Plan,
    stock: Option<&StockSnapshot>,
    observed: &Observed,
    now: jiff::Timestamp,
) -> FlashSaleStatus {
    let old = sale.status.clone().unwrap_or_default();
    let generation = sale.metadata.generation;
    FlashSaleStatus {
        phase: Some(plan.phase),
        observed_generation: generation,
        remaining: stock.map(|s| s.remaining),
        reserved: stock.map(|s| s.reserved),
        sold: stock.map(|s| s.sold),
        expired: stock.map(|s| s.expired),
        // A count that could not be read keeps its last value.
        persisted: observed.persisted().or(old.persisted),
        dead_letters: observed.dead_letters.map(i64::from).or(old.dead_letters),
        opens_at: Some(sale.spec.window.start),
        closes_at: Some(sale.spec.window.end),
        queue: observed.queue.map(|q| {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            flashsale_api::sale::QueueStatus {
                waiting: n(q.waiting()),
                admitted: n(q.admitted),
                used: n(q.used),
                expired: n(q.expired),
            }
        }),
        lottery: lottery_status(observed),
        conditions: plan
            .conditions
            .iter()
            .map(|c| condition(c, &old.conditions, generation, now))
            .collect(),
    }
}

/// A lottery's commitment, and its seed once the draw is made.
fn lottery_status(observed: &Observed) -> Option<flashsale_api::sale::LotteryStatus> {
    let seed_hex = observed.kept_lottery_seed.as_deref()?;
    let seed = crate::backends::hex_seed(seed_hex)?;
    let drawn = observed.queue.and_then(|q| q.drawn);
    Some(flashsale_api::sale::LotteryStatus {
        commitment: flashsale_store::queue::commitment(&seed),
        seed: drawn.map(|_| seed_hex.to_owned()),
        drawn: drawn.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
    })
}
