//! `flashsale-operator seed`: create or restock sales in Redis straight from
//! manifest files, with the same code the controller uses.

use anyhow::Context as _;
use flashsale_api::sale::FlashSale;
use flashsale_common::SaleRef;
use flashsale_store::redisconn::RedisConn;
use flashsale_store::stock::{self, SeedConfig, SeedMode, SeedOutcome, SeedReport};

/// Reads FlashSale documents from a file ("-" for standard input).
pub fn read_manifests(path: &str) -> anyhow::Result<Vec<FlashSale>> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?
    };
    let sales =
        FlashSale::from_yaml_documents(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    if sales.is_empty() {
        anyhow::bail!("{path}: no FlashSale documents found");
    }
    Ok(sales)
}

/// Checks and seeds one sale; the namespace defaults to `default_ns`. A
/// Redis that may evict the sale's keys is refused.
pub async fn seed_one(
    conn: &mut RedisConn,
    sale: &FlashSale,
    default_ns: &str,
) -> anyhow::Result<(SaleRef, SeedReport)> {
    let name = sale
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("metadata.name is missing"))?;
    let ns = sale.metadata.namespace.as_deref().unwrap_or(default_ns);
    let r = SaleRef::new(ns, name)?;
    let mut problems = sale.spec.problems();
    problems.extend(flashsale_api::sale::name_problem(name));
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        anyhow::bail!("{r} is invalid: {}", list.join("; "));
    }
    conn.check_keeps_sale_keys(&r)
        .await
        .with_context(|| format!("{r} cannot run on this Redis"))?;
    // This command knows no history of the sale: it creates what is
    // missing. The controller decides that from the sale's status and the
    // ledger (docs/flashsale.md: When Redis loses a running sale).
    let report = stock::seed(
        conn,
        &r,
        &SeedConfig::from(&sale.spec),
        SeedMode::CreateOrUpdate,
    )
    .await?;
    if report.outcome == SeedOutcome::BelowCommitted {
        anyhow::bail!(
            "{r}: spec.stock {} is below the {} units already reserved or sold; set it to at least {}",
            sale.spec.stock,
            report.committed,
            report.committed
        );
    }
    Ok((r, report))
}

pub fn describe(r: &SaleRef, report: &SeedReport) -> String {
    let what = match report.outcome {
        SeedOutcome::Created => "created",
        SeedOutcome::Restocked => "restocked",
        SeedOutcome::Updated => "updated",
        SeedOutcome::Unchanged => "unchanged",
        SeedOutcome::BelowCommitted => "refused",
        SeedOutcome::Restored => "restored",
        SeedOutcome::Missing => "missing",
    };
    format!(
        "{r}: {what} (stock {}, remaining {}, reserved+sold {})",
        report.stock, report.remaining, report.committed
    )
}

/// What [`verify_lottery`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotteryReport {
    pub sale: flashsale_common::SaleRef,
    /// Tickets in the draw.
    pub drawn: u64,
    /// Whether the stored order is the one the seed gives.
    pub order_matches: bool,
    /// Whether the seed's SHA-256 is the commitment, when one was given.
    pub commitment_matches: Option<bool>,
    /// Places admitted so far.
    pub admitted: u64,
}

impl LotteryReport {
    pub fn matches(&self) -> bool {
        self.order_matches && self.commitment_matches != Some(false)
    }
}

impl std::fmt::Display for LotteryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} tickets drawn, {} places admitted in line order; the drawn order {} the seed",
            self.sale,
            self.drawn,
            self.admitted,
            if self.order_matches {
                "matches"
            } else {
                "DOES NOT match"
            }
        )?;
        match self.commitment_matches {
            Some(true) => write!(f, "; the seed matches the commitment"),
            Some(false) => write!(f, "; the seed DOES NOT match the commitment"),
            None => Ok(()),
        }?;
        write!(f, ": {}", if self.matches() { "match" } else { "mismatch" })
    }
}

/// Recomputes a lottery's order from `seed` and the stored tickets and
/// compares it with the stored draw (which the line admits in order).
pub async fn verify_lottery<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    sale: &flashsale_common::SaleRef,
    seed: &[u8],
    commitment: Option<&str>,
) -> anyhow::Result<LotteryReport> {
    use flashsale_store::queue;
    let counts = queue::counts(conn, sale).await?;
    let Some(drawn) = counts.drawn else {
        anyhow::bail!("sale {sale} has no draw in Redis (not a lottery, not drawn yet, or gone)");
    };
    let ids = queue::tickets(conn, sale, drawn).await?;
    let stored = queue::drawn(conn, sale).await?;
    Ok(LotteryReport {
        sale: sale.clone(),
        drawn,
        order_matches: u64::try_from(ids.len()).ok() == Some(drawn)
            && queue::draw_order(seed, &ids) == stored,
        commitment_matches: commitment
            .map(|c| c.trim().eq_ignore_ascii_case(&queue::commitment(seed))),
        admitted: counts.admitted,
    })
}
