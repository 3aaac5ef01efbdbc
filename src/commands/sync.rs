//! `tally sync <slug>`: import the tenant's accounts from Stripe in the foreground,
//! with a progress bar on stderr when it is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::audit::{self, Actor};
use crate::config::Settings;
use crate::store;
use crate::store::sync_runs::{Claim, RunCounts};
use crate::sync::{self, Progress, Scope, SyncOptions, SyncSummary};

pub async fn run(settings: &Settings, slug: &str) -> anyhow::Result<SyncSummary> {
    let (pool, stripe) = super::stripe_context(settings).await?;
    let tenant = store::tenants::find_by_slug(&pool, slug)
        .await?
        .with_context(|| format!("no tenant named '{slug}' (see `tally tenant list`)"))?;
    anyhow::ensure!(
        tenant.disabled_at.is_none(),
        "tenant '{slug}' was removed (tally tenant remove); it is not synced"
    );
    let client = stripe.client_for(&tenant)?;
    let options = SyncOptions::from_settings(settings);
    let run = match sync::claim(&pool, tenant.id, &options).await? {
        Claim::Started(run) => run,
        Claim::Running(running) => anyhow::bail!(
            "a sync of {slug} is already running (run {}, last heartbeat {})",
            running.id,
            running.heartbeat_at
        ),
    };
    let run_id = run.id;
    let recorded = audit::record(
        &pool,
        &Actor::cli(),
        "sync.start",
        Some(&tenant.slug),
        json!({"syncId": run_id, "joined": false}),
    )
    .await;
    if let Err(error) = recorded {
        // Not started after all: free the tenant for the next sync at once rather
        // than leaving a claimed run to wait out its lease.
        let _ = store::sync_runs::interrupt(
            &pool,
            run_id,
            "interrupted: the audit log could not be written",
        )
        .await;
        return Err(error).context("recording the sync in the audit log");
    }
    let bar = Bar::new();
    let outcome = tokio::select! {
        outcome = sync::execute(&pool, &client, &tenant, run, &options, &bar) => outcome,
        () = crate::tasks::shutdown_signal() => {
            bar.finish();
            // Recorded now rather than left for the stale-heartbeat takeover, so the
            // next run can start at once.
            store::sync_runs::interrupt(&pool, run_id, "interrupted: Ctrl-C or SIGTERM").await?;
            anyhow::bail!("sync of {slug} interrupted; what it stored stays, run it again to finish");
        }
    };
    bar.finish();
    outcome.with_context(|| format!("sync of {slug} failed"))
}

/// The one-line result for stdout.
pub fn summary_line(slug: &str, summary: &SyncSummary) -> String {
    let run = &summary.run;
    format!(
        "synced {slug}: {} accounts in {} pages ({} inserted, {} updated, {} unchanged, {} removed) \
         in {:.1} s, {:.0} accounts/s (run {})",
        run.accounts_seen,
        run.pages,
        run.inserted,
        run.updated,
        run.unchanged,
        run.removed,
        summary.elapsed.as_secs_f64(),
        summary.accounts_per_second(),
        run.id
    )
}

/// A spinner with counts and the rate, drawn only when stderr is a terminal (a pipe
/// or a log file gets nothing but the summary).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar(bar)
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn scope_started(&self, scope: &Scope) {
        self.0.println(format!("{scope}"));
    }

    fn page_committed(&self, counts: &RunCounts, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(0.001);
        self.0.set_message(format!(
            "{} accounts, {} pages, {:.0} accounts/s ({} new, {} changed)",
            counts.accounts_seen,
            counts.pages,
            counts.accounts_seen as f64 / secs,
            counts.inserted,
            counts.updated
        ));
    }
}
