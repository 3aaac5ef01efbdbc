//! `tally doctor [--repair]`: recomputes the per-tenant balance totals (with the
//! negative-balance exposure), ok/failed counts and listed-account counts from the rows they summarise, reports every one
//! that drifted (stored vs recomputed) and, with `--repair`, sets them right in one
//! transaction.

use std::fmt::Write as _;

use anyhow::Context;

use crate::config::Settings;
use crate::money::Amounts;
use crate::store::doctor::{self, CurrencyTotal, Drift};

/// What a doctor run found, and whether it fixed it.
#[derive(Debug, Clone)]
pub struct Report {
    pub drift: Drift,
    pub repaired: bool,
}

pub async fn run(settings: &Settings, repair: bool) -> anyhow::Result<Report> {
    let pool = crate::db::connect_and_migrate(settings).await?;
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let mut tx = doctor::begin(&mut conn, repair)
        .await
        .context("starting the check (waiting for writers of accounts and balances)")?;
    let drift = doctor::find_drift(&mut tx)
        .await
        .context("recomputing the per-tenant counters")?;
    let repaired = repair && !drift.is_empty();
    if repaired {
        doctor::repair(&mut tx, &drift)
            .await
            .context("repairing the per-tenant counters")?;
    }
    tx.commit().await.context("committing")?;
    Ok(Report { drift, repaired })
}

impl Report {
    /// One line per drifted counter, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for row in &self.drift.totals {
            let _ = writeln!(
                out,
                "tenant {} totals {}: stored {}; recomputed {}",
                row.tenant,
                row.currency,
                total_text(&row.stored),
                total_text(&row.recomputed)
            );
        }
        for row in &self.drift.counts {
            let _ = writeln!(
                out,
                "tenant {} balance counts: stored ok {} failed {}; recomputed ok {} failed {}",
                row.tenant,
                row.stored.ok,
                row.stored.failed,
                row.recomputed.ok,
                row.recomputed.failed
            );
        }
        for row in &self.drift.listed {
            let _ = writeln!(
                out,
                "tenant {} listed accounts: stored {}; recomputed {}",
                row.tenant, row.stored, row.recomputed
            );
        }
        let _ = match (self.drift.len(), self.repaired) {
            (0, _) => writeln!(out, "no drift: every tenant's counters match its accounts"),
            (n, true) => writeln!(out, "{n} drifted counters repaired"),
            (n, false) => writeln!(out, "{n} drifted counters (run tally doctor --repair)"),
        };
        out
    }

    /// Fails when drift was found and left as it is, so scripts can alert on it.
    pub fn ensure_clean(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.repaired || self.drift.is_empty(),
            "{} per-tenant counters drifted from their accounts; tally doctor --repair fixes them",
            self.drift.len()
        );
        Ok(())
    }
}

fn total_text(total: &CurrencyTotal) -> String {
    let Amounts {
        available,
        pending,
        connect_reserved,
        instant_available,
    } = total.amounts;
    format!(
        "available {available} pending {pending} connect_reserved {connect_reserved} \
         instant_available {instant_available} holders {} negative {} negative_accounts {}",
        total.holders, total.exposure.negative, total.exposure.accounts
    )
}
