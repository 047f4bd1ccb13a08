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
