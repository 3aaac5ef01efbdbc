//! Account sync runs: one running per tenant (a partial unique index enforces it across
//! replicas), with counts and a lease the run renews on a timer, so a run whose process
//! died stops blocking as soon as its lease runs out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// What a run has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    pub pages: i64,
    pub accounts_seen: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub removed: i64,
}

#[derive(Debug, Clone)]
pub struct SyncRun {
    pub id: Uuid,
    pub tenant_id: i64,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    pub pages: i64,
    pub accounts_seen: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub removed: i64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl SyncRun {
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            pages: self.pages,
            accounts_seen: self.accounts_seen,
            inserted: self.inserted,
            updated: self.updated,
            unchanged: self.unchanged,
            removed: self.removed,
        }
    }
}

/// The outcome of asking to start a run.
#[derive(Debug, Clone)]
pub enum Claim {
    /// A new run, now `running`, owned by the caller.
    Started(SyncRun),
    /// Another run of the tenant is running (its lease is live).
    Running(SyncRun),
}

/// Starts a run holding a `lease` unless one is running. A running row whose lease
/// expired belonged to a process that died (SIGKILL, a lost host, a database outage
/// longer than the lease): it is marked `interrupted`, saying so, and replaced at once.
/// `None` when the tenant was removed (or never existed): nothing starts for it.
pub async fn claim(
    pool: &PgPool,
    tenant_id: i64,
    lease: Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    let lease_secs = lease.as_secs_f64();
    // The running row may finish between the failed insert and the select; then the
    // next round can insert.
    for _ in 0..3 {
        let mut tx = super::begin(pool).await?;
        // Checked under a lock held to the commit, so a removal racing this claim
        // either comes first (and nothing starts) or waits and then ends the run.
        if !super::tenants::lock_if_enabled(&mut *tx, tenant_id).await? {
            return Ok(None);
        }
        sqlx::query!(
            r#"UPDATE sync_runs
               SET status = 'interrupted', finished_at = now(),
                   error = 'interrupted: its process stopped renewing the lease (last heartbeat '
                           || to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                           || '); a new sync took over'
               WHERE tenant_id = $1 AND status = 'running'
                 AND COALESCE(lease_expires_at, heartbeat_at + interval '5 minutes') < now()"#,
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        let started = sqlx::query_as!(
            SyncRun,
            r#"INSERT INTO sync_runs (id, tenant_id, status, lease_expires_at)
               VALUES ($1, $2, 'running', now() + make_interval(secs => $3))
               ON CONFLICT (tenant_id) WHERE status = 'running' DO NOTHING
               RETURNING id, tenant_id, status, pages, accounts_seen, inserted, updated,
                         unchanged, removed, error, started_at, heartbeat_at, finished_at"#,
            Uuid::new_v4(),
            tenant_id,
            lease_secs
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(run) = started {
            tx.commit().await?;
            return Ok(Some(Claim::Started(run)));
        }
        let running = sqlx::query_as!(
            SyncRun,
            r#"SELECT id, tenant_id, status, pages, accounts_seen, inserted, updated,
                      unchanged, removed, error, started_at, heartbeat_at, finished_at
               FROM sync_runs WHERE tenant_id = $1 AND status = 'running'"#,
            tenant_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(run) = running {
            return Ok(Some(Claim::Running(run)));
        }
    }
    Err(sqlx::Error::Protocol(
        "sync run kept finishing while another was being claimed".to_owned(),
    ))
}

/// Renews a running run's lease for another `lease`. False when the run is no
/// longer running (its lease expired and another sync took over, or it was interrupted).
pub async fn renew(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"UPDATE sync_runs
           SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $2)
           WHERE id = $1 AND status = 'running'"#,
        run_id,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records progress (the lease is renewed by [`renew`], on a timer). False when the
/// run is no longer running (another sync took over).
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    counts: &RunCounts,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"UPDATE sync_runs
           SET pages = $2, accounts_seen = $3, inserted = $4, updated = $5, unchanged = $6,
               removed = $7
           WHERE id = $1 AND status = 'running'"#,
        run_id,
        counts.pages,
        counts.accounts_seen,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.removed
    )
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Ends a running run as `succeeded` (no error) or `failed`. `None` when the run was
/// no longer running.
pub async fn finish(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    counts: &RunCounts,
    error: Option<&str>,
) -> Result<Option<SyncRun>, sqlx::Error> {
    let status = if error.is_some() {
        "failed"
    } else {
        "succeeded"
    };
    sqlx::query_as!(
        SyncRun,
        r#"UPDATE sync_runs
           SET status = $2, pages = $3, accounts_seen = $4, inserted = $5, updated = $6,
               unchanged = $7, removed = $8, error = $9, heartbeat_at = now(), finished_at = now()
           WHERE id = $1 AND status = 'running'
           RETURNING id, tenant_id, status, pages, accounts_seen, inserted, updated,
                     unchanged, removed, error, started_at, heartbeat_at, finished_at"#,
        run_id,
        status,
        counts.pages,
        counts.accounts_seen,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.removed,
        error
    )
    .fetch_optional(db)
    .await
}

/// One run of the tenant; another tenant's run is not found.
pub async fn get(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    run_id: Uuid,
) -> Result<Option<SyncRun>, sqlx::Error> {
    sqlx::query_as!(
        SyncRun,
        r#"SELECT id, tenant_id, status, pages, accounts_seen, inserted, updated,
                  unchanged, removed, error, started_at, heartbeat_at, finished_at
           FROM sync_runs WHERE id = $1 AND tenant_id = $2"#,
        run_id,
        tenant_id
    )
    .fetch_optional(db)
    .await
}

/// Ends a running run as `interrupted` (its process is stopping); what it committed
/// stays. False when it was no longer running.
pub async fn interrupt(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"UPDATE sync_runs SET status = 'interrupted', error = $2, finished_at = now()
           WHERE id = $1 AND status = 'running'"#,
        run_id,
        reason
    )
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// When the tenant's latest sync run started, whatever its outcome.
pub async fn last_started(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT max(started_at) FROM sync_runs WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(db)
    .await
}

/// What a run of a removed tenant ends with.
pub const TENANT_REMOVED: &str = "failed: its tenant was removed (tally tenant remove)";

/// Ends the tenant's running run as `failed`, saying its tenant was removed (call in
/// the transaction that removes it). The process running it stops at its next lease
/// renewal, which finds the run no longer running.
pub async fn end_for_removed_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE sync_runs SET status = 'failed', error = $2, finished_at = now()
           WHERE tenant_id = $1 AND status = 'running'"#,
        tenant_id,
        TENANT_REMOVED
    )
    .execute(db)
    .await?
    .rows_affected())
}
