//! Retention: every server prunes the tables that grow with time, each in batches of
//! `retention.batch_size` rows, each batch its own short transaction holding the
//! table's turn (a transaction-scoped advisory lock, so replicas never prune one table
//! at once) and giving up on any row lock after `retention.lock_timeout_ms`. A table
//! is pruned until a batch deletes less than a full batch; then the pass moves on, and
//! the next starts `retention.interval_secs` later. What may go is the store's to say
//! (`store::retention`): never what `latest_balances`, the totals over time, the close
//! of a day not final or the audit's minimum still needs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::{RetentionSettings, Settings};
use crate::store;
use crate::store::retention::{SnapshotScan, Table};
use crate::tasks::Tasks;

/// A snapshot pass looks again at this much before where the last one stopped: a
/// snapshot kept there only because its account's next balance had not come yet is
/// looked at once more.
const SNAPSHOT_LOOK_BACK: TimeDelta = TimeDelta::hours(2);

/// The first pass runs this long after the server starts (after its migrations and
/// first requests), then every `retention.interval_secs`.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(10);

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct Pass {
    /// Rows deleted per table.
    pub deleted: BTreeMap<&'static str, u64>,
    /// How long each batch's transaction held its locks, begin to commit.
    pub batches: Vec<Duration>,
    /// Tables another process was pruning (its turn): left to it.
    pub skipped: Vec<&'static str>,
}

/// Runs a pass every `retention.interval_secs` on the process's tasks, until shutdown.
pub fn spawn(pool: PgPool, settings: &Settings, tasks: &Tasks) {
    if !settings.retention.enabled {
        return;
    }
    let retention = settings.retention.clone();
    let cancel = tasks.cancel.clone();
    tasks.tracker.spawn(async move {
        let mut wait = FIRST_PASS_AFTER;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = Duration::from_secs(retention.interval_secs);
            match pass(&pool, &retention, &cancel).await {
                Ok(done) => {
                    let deleted: u64 = done.deleted.values().sum();
                    if deleted > 0 {
                        tracing::info!(deleted, tables = ?done.deleted, batches = done.batches.len(), "retention pass");
                    }
                }
                Err(error) => tracing::warn!(error = %error, "retention pass failed; the next one retries"),
            }
        }
    });
}

/// One batch's work: which table, by which rule.
#[derive(Debug, Clone, Copy)]
enum Job {
    Snapshots(SnapshotScan),
    Transactions(i32),
    Closes(i32),
    TotalsHistory(i32),
    Refreshes(i32),
    SyncRuns(i32),
    WebhookEvents(i32),
    Audit(i32),
}

impl Job {
    fn table(&self) -> Table {
        match self {
            Job::Snapshots(_) => Table::Snapshots,
            Job::Transactions(_) => Table::Transactions,
            Job::Closes(_) => Table::Closes,
            Job::TotalsHistory(_) => Table::TotalsHistory,
            Job::Refreshes(_) => Table::Refreshes,
            Job::SyncRuns(_) => Table::SyncRuns,
            Job::WebhookEvents(_) => Table::WebhookEvents,
            Job::Audit(_) => Table::Audit,
        }
    }
}

/// How a job's batches ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// A batch deleted less than a full batch: nothing more for now.
    Done,
    /// Another process holds the table's turn, a row lock was not granted in time, or
    /// the process is stopping: the rest waits for the next pass.
    Left,
}

/// `days` as the store takes it; `None` for 0 (kept forever).
fn days(days: u32) -> Option<i32> {
    (days > 0).then(|| i32::try_from(days).unwrap_or(i32::MAX))
}

fn ago(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now - TimeDelta::days(i64::from(days))
}

/// Prunes every table once, as far as the settings allow.
pub async fn pass(
    pool: &PgPool,
    settings: &RetentionSettings,
    cancel: &CancellationToken,
) -> Result<Pass, sqlx::Error> {
    let mut done = Pass::default();
    // One table's failure (a statement error, the database gone for a moment) leaves
    // the others to prune; that table is tried again next pass.
    if let Err(error) = prune_snapshots(pool, settings, cancel, &mut done).await {
        tracing::warn!(error = %error, "pruning balance snapshots failed; the other tables go on");
    }
    let jobs = [
        days(settings.ledger_days).map(Job::Transactions),
        days(settings.closes_days).map(Job::Closes),
        days(settings.totals_history_days).map(Job::TotalsHistory),
        days(settings.refreshes_days).map(Job::Refreshes),
        days(settings.sync_runs_days).map(Job::SyncRuns),
        days(settings.webhook_events_days).map(Job::WebhookEvents),
        days(settings.audit_days).map(Job::Audit),
    ];
    for job in jobs.into_iter().flatten() {
        if let Err(error) = run(pool, settings, job, cancel, &mut done).await {
            tracing::warn!(error = %error, job = ?job, "pruning a table failed; the other tables go on");
        }
    }
    Ok(done)
}

/// The snapshot passes: what passed the full-resolution horizon (thinned to daily),
/// what the close no longer needs (days turned final), what passed the daily horizon.
/// The first two remember how far they looked, so each snapshot is looked at about
/// once as each horizon passes it.
async fn prune_snapshots(
    pool: &PgPool,
    settings: &RetentionSettings,
    cancel: &CancellationToken,
    done: &mut Pass,
) -> Result<(), sqlx::Error> {
    if settings.snapshots_full_days == 0 {
        return Ok(());
    }
    let now = store::retention::now(pool).await?;
    let full_before = ago(now, settings.snapshots_full_days);
    let daily_before = days(settings.snapshots_days).map(|_| ago(now, settings.snapshots_days));
    let ledger_days = days(settings.ledger_days);
    let mut scans: Vec<(Option<&str>, DateTime<Utc>)> = vec![(Some("snapshots.full"), full_before)];
    if let Some(ledger) = ledger_days {
        // Checkpoints are kept by Stripe's day; three days more covers its clock and
        // the tenant's zone.
        let until = ago(
            now,
            u32::try_from(ledger).unwrap_or(u32::MAX).saturating_add(3),
        );
        scans.push((Some("snapshots.ledger"), until.min(full_before)));
    }
    if let Some(daily) = daily_before {
        scans.push((None, daily));
    }
    for (mark, scan_until) in scans {
        let scan_from = match mark {
            Some(name) => store::retention::mark(pool, name)
                .await?
                .map(|through| through - SNAPSHOT_LOOK_BACK),
            None => None,
        };
        let scan = SnapshotScan {
            full_before,
            daily_before,
            ledger_days,
            scan_from,
            scan_until,
        };
        let ended = run(pool, settings, Job::Snapshots(scan), cancel, done).await?;
        if let (Ended::Done, Some(name)) = (ended, mark) {
            store::retention::set_mark(pool, name, scan_until).await?;
        }
    }
    Ok(())
}

/// Runs `job`'s batches until one deletes less than a full batch.
async fn run(
    pool: &PgPool,
    settings: &RetentionSettings,
    job: Job,
    cancel: &CancellationToken,
    done: &mut Pass,
) -> Result<Ended, sqlx::Error> {
    let table = job.table();
    let mut job = job;
    loop {
        if cancel.is_cancelled() {
            return Ok(Ended::Left);
        }
        let started = Instant::now();
        let deleted = match batch(pool, settings, job).await {
            Ok(Some((deleted, last))) => {
                // The next batch starts where this one's deletions ended.
                if let (Job::Snapshots(scan), Some(last)) = (&mut job, last) {
                    scan.scan_from = Some(last);
                }
                deleted
            }
            Ok(None) => {
                done.skipped.push(table.name());
                return Ok(Ended::Left);
            }
            Err(error) if lock_not_granted(&error) => {
                tracing::debug!(
                    table = table.name(),
                    "a row lock was not granted in time; the rest waits for the next pass"
                );
                return Ok(Ended::Left);
            }
            Err(error) => return Err(error),
        };
        done.batches.push(started.elapsed());
        *done.deleted.entry(table.name()).or_default() += deleted;
        if deleted < u64::try_from(settings.batch_size).unwrap_or(u64::MAX) {
            return Ok(Ended::Done);
        }
    }
}

/// One batch in its own transaction: how many rows went and, for snapshots, the time
/// of the last; `None` when another process has the table's turn.
async fn batch(
    pool: &PgPool,
    settings: &RetentionSettings,
    job: Job,
) -> Result<Option<(u64, Option<DateTime<Utc>>)>, sqlx::Error> {
    use store::retention as r;
    let limit = settings.batch_size;
    let mut tx = store::begin(pool).await?;
    if !r::take_turn(&mut tx, job.table(), settings.lock_timeout_ms).await? {
        return Ok(None);
    }
    let mut last = None;
    let deleted = match job {
        Job::Snapshots(scan) => {
            let (deleted, at) = r::prune_snapshots(&mut tx, &scan, limit).await?;
            last = at;
            deleted
        }
        Job::Transactions(days) => r::prune_transactions(&mut tx, days, limit).await?,
        Job::Closes(days) => r::prune_closes(&mut tx, days, limit).await?,
        Job::TotalsHistory(days) => r::prune_totals_history(&mut tx, days, limit).await?,
        Job::Refreshes(days) => r::prune_refreshes(&mut tx, days, limit).await?,
        Job::SyncRuns(days) => r::prune_sync_runs(&mut tx, days, limit).await?,
        Job::WebhookEvents(days) => r::prune_webhook_events(&mut tx, days, limit).await?,
        Job::Audit(days) => r::prune_audit(&mut tx, days, limit).await?,
    };
    tx.commit().await?;
    Ok(Some((deleted, last)))
}

/// `lock_timeout` ran out (SQLSTATE 55P03).
fn lock_not_granted(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// The settings' horizons as `tally doctor` counts with them.
pub fn horizons(settings: &RetentionSettings) -> store::retention::Horizons {
    store::retention::Horizons {
        snapshots_full_days: days(settings.snapshots_full_days),
        snapshots_days: days(settings.snapshots_days),
        totals_history_days: days(settings.totals_history_days),
        ledger_days: days(settings.ledger_days),
        closes_days: days(settings.closes_days),
        refreshes_days: days(settings.refreshes_days),
        sync_runs_days: days(settings.sync_runs_days),
        webhook_events_days: days(settings.webhook_events_days),
        audit_days: days(settings.audit_days),
    }
}
