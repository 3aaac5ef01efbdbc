//! `tally balances <slug>`: refresh what is older than `--max-age`, then print the
//! per-currency totals (table, JSON or CSV). Exits non-zero when any account failed.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgPool;

use crate::fanout::{self, Aggregate, Fanout, Progress};
use crate::money::format_minor;
use crate::store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
pub struct BarProgress {
    bar: ProgressBar,
    failed: std::sync::atomic::AtomicU64,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} balances {bar:30} {pos}/{len} accounts, {msg} failed, {per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("0");
        bar.enable_steady_tick(Duration::from_millis(200));
        BarProgress {
            bar,
            failed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        BarProgress::new()
    }
}

impl Progress for BarProgress {
    fn started(&self, accounts: u64) {
        self.bar.set_length(accounts);
    }

    fn account_done(&self, ok: bool) {
        if !ok {
            let failed = self
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            self.bar.set_message(failed.to_string());
        }
        self.bar.inc(1);
    }
}

/// The rendered result and whether every account contributed.
pub struct BalancesOutput {
    pub text: String,
    pub complete: bool,
    pub failed: i64,
    pub total: i64,
}

pub async fn run(
    pool: &PgPool,
    fanout: &Fanout,
    slug: &str,
    max_age: Duration,
    format: OutputFormat,
) -> anyhow::Result<BalancesOutput> {
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named '{slug}' (see `tally tenant list`)"))?;
    let progress = Arc::new(BarProgress::new());
    let refreshed = fanout
        .refresh(&tenant, None, max_age, progress.clone())
        .await;
    progress.finish();
    refreshed.map_err(|error| anyhow::anyhow!("balance fan-out failed: {error}"))?;
    let aggregate = fanout::aggregate::read(pool, tenant.id, &tenant.slug, None, None).await?;
    let text = match format {
        OutputFormat::Table => render_table(&aggregate),
        OutputFormat::Json => serde_json::to_string_pretty(&aggregate)? + "\n",
        OutputFormat::Csv => {
            String::from_utf8(fanout::aggregate::csv(pool, tenant.id, None, None).await?)?
        }
    };
    Ok(BalancesOutput {
        text,
        complete: aggregate.complete,
        failed: aggregate.accounts.failed,
        total: aggregate.accounts.total,
    })
}

/// Totals with amounts in each currency's own decimals, then the failures.
pub fn render_table(aggregate: &Aggregate) -> String {
    let mut out = format!(
        "{:<8} {:>20} {:>20} {:>20} {:>20}\n",
        "CURRENCY", "AVAILABLE", "PENDING", "CONNECT RESERVED", "INSTANT AVAILABLE"
    );
    for row in &aggregate.totals {
        out.push_str(&format!(
            "{:<8} {:>20} {:>20} {:>20} {:>20}\n",
            row.currency.to_uppercase(),
            format_minor(row.available, &row.currency),
            format_minor(row.pending, &row.currency),
            format_minor(row.connect_reserved, &row.currency),
            format_minor(row.instant_available, &row.currency),
        ));
    }
    let oldest = aggregate.oldest_fetched_at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    out.push_str(&format!(
        "\naccounts: {} total, {} ok, {} failed; oldest snapshot {oldest}; complete: {}\n",
        aggregate.accounts.total,
        aggregate.accounts.ok,
        aggregate.accounts.failed,
        aggregate.complete
    ));
    if !aggregate.failures.is_empty() {
        out.push_str("\nfailures:\n");
        for failure in &aggregate.failures {
            out.push_str(&format!(
                "  {}  {} {}  {}\n    request {}\n    hint: {}\n",
                failure.stripeid,
                failure
                    .status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                failure
                    .code
                    .as_deref()
                    .or(failure.error_type.as_deref())
                    .unwrap_or("-"),
                failure.message.as_deref().unwrap_or(""),
                failure.request_id.as_deref().unwrap_or("-"),
                failure.hint.as_deref().unwrap_or("-"),
            ));
        }
    }
    out
}
