//! `tally balances <slug>`: refresh what is older than `--max-age`, then print the
//! per-currency totals (table, JSON or CSV). Exits non-zero when any account failed.
//!
//! The command is a worker like any replica: it joins (or starts) the tenant's
//! refresh, fetches due accounts itself under leases and the shared Stripe budget,
//! and so never doubles work a running server is doing.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::PgPool;

use crate::balances::{Answer, Balances, Fresh, Since};
use crate::config::Settings;
use crate::fanout::Aggregate;
use crate::freshness::FreshnessMode;
use crate::money::format_minor;
use crate::refresh::{Refresher, RefresherOptions, WorkerKind};
use crate::store;
use crate::tasks::Tasks;
use crate::tenants::StripeTenants;

/// How often the command looks at the refresh's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long fetches in flight get to land when the command ends.
const STOP_GRACE: Duration = Duration::from_secs(5);

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

impl BarProgress {
    fn show(&self, progress: &crate::refresh::Progress) {
        self.bar
            .set_length(u64::try_from(progress.listed).unwrap_or(0));
        self.bar
            .set_position(u64::try_from(progress.tried()).unwrap_or(0));
        self.failed.store(
            u64::try_from(progress.failed).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.bar.set_message(progress.failed.to_string());
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
    stripe: &Arc<StripeTenants>,
    settings: &Settings,
    slug: &str,
    max_age: Duration,
    format: OutputFormat,
) -> anyhow::Result<BalancesOutput> {
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named '{slug}' (see `tally tenant list`)"))?;
    anyhow::ensure!(
        tenant.disabled_at.is_none(),
        "tenant '{slug}' was removed (tally tenant remove); its balances are not fetched"
    );
    let tasks = Tasks::new();
    let refresher = Refresher::new(
        pool.clone(),
        stripe.clone(),
        RefresherOptions {
            background: false,
            ..RefresherOptions::from_settings(settings)
        },
        WorkerKind::Cli,
        tasks.clone(),
    );
    refresher.spawn(Some(tenant.id));
    let balances = Balances {
        pool: pool.clone(),
        stripe: stripe.clone(),
        refresher: Some(refresher),
        interval: Duration::from_secs(settings.refresh.interval_secs),
        max_silence: settings.max_silence(),
    };
    // As an API client does: ask with `max_age` once, then follow the refresh it was
    // given (asking `max_age` again would move the cutoff and never be met by a
    // refresh that takes longer than `max_age`).
    let mut fresh = Fresh::max_age(max_age, PROGRESS_EVERY);
    let progress = BarProgress::new();
    let outcome = loop {
        match balances.aggregate(&tenant, None, None, Some(fresh)).await {
            Ok(Answer::Ready(aggregate)) => break Ok(aggregate),
            Ok(Answer::Pending(pending)) => {
                progress.show(&pending.progress);
                fresh = Fresh {
                    since: Since::Refresh(pending.refresh.id),
                    wait: PROGRESS_EVERY,
                };
            }
            Err(error) => break Err(error),
        }
    };
    progress.finish();
    tasks.shutdown(STOP_GRACE).await;
    let aggregate = outcome.map_err(|error| anyhow::anyhow!("balances of {slug}: {error}"))?;
    let text = match format {
        OutputFormat::Table => render_table(&aggregate),
        OutputFormat::Json => serde_json::to_string_pretty(&aggregate)? + "\n",
        OutputFormat::Csv => match balances.aggregate_csv(&tenant, None, None, None).await {
            Ok(Answer::Ready(csv)) => String::from_utf8(csv)?,
            // Asked for what is stored, so never pending; said plainly if it ever is.
            Ok(Answer::Pending(_)) => anyhow::bail!("balances of {slug}: the CSV was not ready"),
            Err(error) => anyhow::bail!("balances of {slug}: {error}"),
        },
    };
    Ok(BalancesOutput {
        text,
        complete: aggregate.complete,
        failed: aggregate.accounts.failed,
        total: aggregate.accounts.total,
    })
}

/// When a failed account was tried, and whether the totals still hold a balance of it.
fn last_good_line(failure: &crate::fanout::Failure) -> String {
    let at =
        |at: &chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let tried = failure
        .fetched_at
        .as_ref()
        .map_or_else(|| "never".to_owned(), at);
    match &failure.last_good_at {
        Some(good) => format!(
            "tried {tried}; the totals hold its last good balance, of {}",
            at(good)
        ),
        None => format!("tried {tried}; never read, adds nothing to the totals"),
    }
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
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let oldest = time(aggregate.oldest_fetched_at);
    out.push_str(&format!(
        "\naccounts: {} total, {} ok, {} failed; oldest snapshot {oldest}; complete: {}\n",
        aggregate.accounts.total,
        aggregate.accounts.ok,
        aggregate.accounts.failed,
        aggregate.complete
    ));
    let stream = match (aggregate.freshness_mode, aggregate.stream_live) {
        (FreshnessMode::Poll, _) => "",
        (FreshnessMode::Events, true) => ", event stream live",
        (FreshnessMode::Events, false) => ", event stream silent: fetches only",
    };
    out.push_str(&format!(
        "freshness: {}{stream}; oldest confirmed {}\n",
        aggregate.freshness_mode,
        time(aggregate.oldest_confirmed_at)
    ));
    if !aggregate.failures.is_empty() {
        out.push_str("\nfailures:\n");
        for failed in &aggregate.failures {
            let failure = &failed.failure;
            out.push_str(&format!(
                "  {}  {} {}  {}\n    request {}\n    hint: {}\n    {}\n",
                failed.stripeid,
                failure
                    .status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                failure.code_or_type().unwrap_or("-"),
                failure.message.as_deref().unwrap_or(""),
                failure.request_id.as_deref().unwrap_or("-"),
                failure.hint.as_deref().unwrap_or("-"),
                last_good_line(failed),
            ));
        }
    }
    out
}
