//! `tally doctor [--repair]`: recomputes the per-tenant balance totals (with the
//! negative-balance exposure), ok/failed counts and listed-account counts from the rows they summarise, reports every one
//! that drifted (stored vs recomputed) and, with `--repair`, sets them right in one
//! transaction. It also reports the size of every table that grows with time and
//! what a retention pass would free in it now.

use std::fmt::Write as _;

use anyhow::Context;

use crate::config::Settings;
use crate::money::Amounts;
use crate::store::doctor::{self, CurrencyTotal, Drift};
use crate::store::retention::{Prunable, Table};

/// What a doctor run found, and whether it fixed it.
#[derive(Debug, Clone)]
pub struct Report {
    pub drift: Drift,
    pub repaired: bool,
    pub growth: Vec<Growth>,
}

/// A table that grows with time: its size and what pruning would free now.
#[derive(Debug, Clone)]
pub struct Growth {
    pub table: &'static str,
    /// On disk, with indexes and TOAST, of every table it prunes.
    pub bytes: i64,
    /// Rows, as Postgres estimates them.
    pub rows: i64,
    pub prunable: Prunable,
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
    let growth = growth(&pool, settings)
        .await
        .context("measuring the tables that grow with time")?;
    Ok(Report {
        drift,
        repaired,
        growth,
    })
}

/// Sizes and what a retention pass would free, in one read-only snapshot.
async fn growth(pool: &sqlx::PgPool, settings: &Settings) -> Result<Vec<Growth>, sqlx::Error> {
    let horizons = crate::retention::horizons(&settings.retention);
    let mut conn = pool.acquire().await?;
    let mut tx = doctor::begin(&mut conn, false).await?;
    let mut growth = Vec::new();
    for table in Table::ALL {
        let sizes = crate::store::retention::sizes(&mut *tx, table.relations()).await?;
        let prunable = crate::store::retention::prunable(&mut tx, table, &horizons).await?;
        growth.push(Growth {
            table: table.name(),
            bytes: sizes.iter().map(|s| s.bytes).sum(),
            rows: sizes
                .iter()
                .find(|s| s.table == table.name())
                .map_or(0, |s| s.rows),
            prunable,
        });
    }
    tx.commit().await?;
    Ok(growth)
}

/// Bytes for people: B, kB, MB, GB (powers of 1024, as Postgres's pg_size_pretty).
fn size_text(bytes: i64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if value < 1024.0 || unit == "GB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    unreachable!("the loop returns at GB")
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
        let _ = writeln!(
            out,
            "tables that grow with time (size; rows; what retention would prune now):"
        );
        for table in &self.growth {
            let _ = writeln!(
                out,
                "  {:<24} {:>10}  {:>12} rows  prunable {} rows ({})",
                table.table,
                size_text(table.bytes),
                table.rows,
                table.prunable.rows,
                size_text(table.prunable.bytes)
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
