//! The refresher's shared state (DESIGN §5): live workers, per-account leases, and
//! balance refreshes (demands that polls on any replica join).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{OwnerId, RefreshStatus, RefreshTrigger, StripeAccountId};
use crate::freshness::Requirement;

/// What a refresh covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefreshScope {
    /// Every listed account of the tenant.
    Tenant,
    /// One owner's (`accountid`) listed accounts.
    Owner(OwnerId),
    /// One account.
    Account(StripeAccountId),
}

impl RefreshScope {
    /// The key one running refresh per scope is unique on.
    pub fn key(&self) -> String {
        match self {
            RefreshScope::Tenant => String::new(),
            RefreshScope::Owner(owner) => format!("owner:{owner}"),
            RefreshScope::Account(stripeid) => format!("account:{stripeid}"),
        }
    }

    pub fn owner(&self) -> Option<&OwnerId> {
        match self {
            RefreshScope::Owner(owner) => Some(owner),
            _ => None,
        }
    }

    pub fn stripeid(&self) -> Option<&StripeAccountId> {
        match self {
            RefreshScope::Account(stripeid) => Some(stripeid),
            _ => None,
        }
    }

    fn from_columns(owner: Option<OwnerId>, stripeid: Option<StripeAccountId>) -> RefreshScope {
        match (owner, stripeid) {
            (_, Some(stripeid)) => RefreshScope::Account(stripeid),
            (Some(owner), None) => RefreshScope::Owner(owner),
            (None, None) => RefreshScope::Tenant,
        }
    }
}

// ---- workers ----------------------------------------------------------------

/// Proves the worker alive; also forgets workers silent for `forget_after_secs`
/// (killed processes), so the table stays the size of the fleet.
pub async fn worker_heartbeat(
    db: impl PgExecutor<'_>,
    id: Uuid,
    kind: &str,
    host: &str,
    pid: i32,
    forget_after_secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH forgotten AS (
               DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $5) AND id <> $1
           )
           INSERT INTO workers (id, kind, host, pid) VALUES ($1, $2, $3, $4)
           ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"#,
        id,
        kind,
        host,
        pid,
        forget_after_secs
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn deregister_worker(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM workers WHERE id = $1", id)
        .execute(db)
        .await?;
    Ok(())
}

/// Workers other than `id` that beat within `within_secs`.
pub async fn other_live_workers(
    db: impl PgExecutor<'_>,
    id: Uuid,
    within_secs: f64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM workers
           WHERE id <> $1 AND heartbeat_at >= now() - make_interval(secs => $2)"#,
        id,
        within_secs
    )
    .fetch_one(db)
    .await
}

// ---- leases -----------------------------------------------------------------

/// An account and the platform that controls it: claimed for one fetch, or listed
/// for reading its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub stripeid: StripeAccountId,
    pub platform_id: Option<StripeAccountId>,
}

/// What to claim.
pub struct ClaimRequest<'a> {
    pub tenant_id: i64,
    pub scope: &'a RefreshScope,
    /// Accounts last tried before this are due.
    pub cutoff: DateTime<Utc>,
    /// Whether to look for accounts never fetched (skipped when the kept counts say
    /// there are none, so a large tenant's claim never scans).
    pub include_never_fetched: bool,
    pub limit: i64,
    pub worker: Uuid,
    pub lease_secs: f64,
}

/// Leases up to `limit` due accounts of the scope, never-fetched first, then oldest
/// first. Rows another claim is taking right now are skipped, and an account whose
/// lease has not expired is never taken, so no two workers hold one account.
pub async fn claim_due(
    db: impl PgExecutor<'_>,
    request: &ClaimRequest<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"WITH never AS (
               -- By the kept list of accounts without a snapshot: an index walk over
               -- exactly those. Its row is locked, and storing the first snapshot
               -- deletes it, so a claim racing that store skips the account.
               SELECT u.stripeid, NULL::timestamptz AS fetched_at
               FROM unfetched_accounts u
               WHERE $5 AND u.tenant_id = $1
                 AND ($3::text IS NULL OR u.stripeid = $3)
                 -- Scalar subqueries rather than joins (here and below): the walk stays
                 -- on the driving table's index whatever the planner's statistics say.
                 -- Joined, a tenant whose tables were never analyzed (autovacuum off or
                 -- behind a bulk load) was planned as a scan of every account per claim.
                 AND (SELECT a.removed_at IS NULL AND ($2::text IS NULL OR a.accountid = $2)
                      FROM stripe_accounts a
                      WHERE a.tenant_id = u.tenant_id AND a.stripeid = u.stripeid)
                 AND NOT EXISTS (SELECT 1 FROM refresh_leases r
                                 WHERE r.tenant_id = u.tenant_id AND r.stripeid = u.stripeid
                                   AND r.expires_at > now())
               LIMIT $6
               FOR UPDATE OF u SKIP LOCKED
           ),
           stale AS (
               -- Oldest first along the age index, stopping at the limit. A row being
               -- stored right now is locked and skipped; one stored since this
               -- statement began is re-checked against the cutoff and dropped.
               SELECT l.stripeid, l.fetched_at
               FROM latest_balances l
               WHERE l.tenant_id = $1 AND l.fetched_at < $4
                 AND ($3::text IS NULL OR l.stripeid = $3)
                 AND (SELECT a.removed_at IS NULL AND ($2::text IS NULL OR a.accountid = $2)
                      FROM stripe_accounts a
                      WHERE a.tenant_id = l.tenant_id AND a.stripeid = l.stripeid)
                 AND NOT EXISTS (SELECT 1 FROM refresh_leases r
                                 WHERE r.tenant_id = l.tenant_id AND r.stripeid = l.stripeid
                                   AND r.expires_at > now())
               ORDER BY l.fetched_at
               LIMIT $6
               FOR UPDATE OF l SKIP LOCKED
           ),
           picked AS (
               SELECT stripeid FROM (SELECT * FROM never UNION ALL SELECT * FROM stale) due
               ORDER BY fetched_at NULLS FIRST
               LIMIT $6
           ),
           leased AS (
               INSERT INTO refresh_leases AS r (tenant_id, stripeid, worker_id, expires_at)
               SELECT $1, stripeid, $7, now() + make_interval(secs => $8) FROM picked
               ON CONFLICT (tenant_id, stripeid) DO UPDATE
                   SET worker_id = EXCLUDED.worker_id, expires_at = EXCLUDED.expires_at
                   WHERE r.expires_at <= now()
               RETURNING r.stripeid
           )
           SELECT leased.stripeid AS "stripeid!: StripeAccountId",
                  a.platform_id AS "platform_id: StripeAccountId"
           FROM leased JOIN stripe_accounts a ON a.tenant_id = $1 AND a.stripeid = leased.stripeid"#,
        request.tenant_id,
        request.scope.owner().map(OwnerId::as_str),
        request.scope.stripeid().map(StripeAccountId::as_str),
        request.cutoff,
        request.include_never_fetched,
        request.limit,
        request.worker,
        request.lease_secs
    )
    .fetch_all(db)
    .await
}

/// Gives back every lease the worker holds (it is stopping). Returns how many.
pub async fn release_worker_leases(
    db: impl PgExecutor<'_>,
    worker: Uuid,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM refresh_leases WHERE worker_id = $1", worker)
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// Extends every lease the worker holds by `lease_secs` from now (its heartbeat).
pub async fn renew_worker_leases(
    db: impl PgExecutor<'_>,
    worker: Uuid,
    lease_secs: f64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE refresh_leases SET expires_at = now() + make_interval(secs => $2)
           WHERE worker_id = $1 AND expires_at > now()"#,
        worker,
        lease_secs
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Gives back one lease (the fetch could not be stored).
pub async fn release_lease(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    worker: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM refresh_leases WHERE tenant_id = $1 AND stripeid = $2 AND worker_id = $3",
        tenant_id,
        stripeid.as_str(),
        worker
    )
    .execute(db)
    .await?;
    Ok(())
}

// ---- refreshes --------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Refresh {
    pub id: Uuid,
    pub tenant_id: i64,
    pub scope: RefreshScope,
    pub cutoff: DateTime<Utc>,
    pub trigger: RefreshTrigger,
    pub status: RefreshStatus,
    pub total: i64,
    pub done: i64,
    pub failed: i64,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

struct RefreshRow {
    id: Uuid,
    tenant_id: i64,
    scope_owner: Option<OwnerId>,
    scope_stripeid: Option<StripeAccountId>,
    cutoff: DateTime<Utc>,
    trigger: RefreshTrigger,
    status: RefreshStatus,
    total: i64,
    done: i64,
    failed: i64,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<RefreshRow> for Refresh {
    fn from(row: RefreshRow) -> Refresh {
        Refresh {
            id: row.id,
            tenant_id: row.tenant_id,
            scope: RefreshScope::from_columns(row.scope_owner, row.scope_stripeid),
            cutoff: row.cutoff,
            trigger: row.trigger,
            status: row.status,
            total: row.total,
            done: row.done,
            failed: row.failed,
            error: row.error,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// Starts a refresh of the scope, or joins the one running. Joining raises its
/// cutoff toward `cutoff`, but never past the moment it started: what it already
/// fetched stays done, so polls arriving while it runs can never keep it running
/// (or re-fetch its work). True when this call started it. `None` when the tenant
/// was removed: nothing starts for it, and nothing joins what its removal ended.
///
/// The trigger says who waits on it, and only ever moves up: `schedule` (nobody),
/// then `poll`, then a person's (`person`, `cli`). A poll joining a refresh a person
/// started leaves it theirs.
pub async fn start_or_join(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    scope: &RefreshScope,
    cutoff: DateTime<Utc>,
    trigger: RefreshTrigger,
    total: i64,
) -> Result<Option<(Refresh, bool)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH tenant AS (
               -- Share-locked to the end of the statement's transaction: a removal
               -- racing this waits for it and then ends the refresh, or comes first
               -- and this finds the tenant removed.
               SELECT id FROM tenants WHERE id = $2 AND disabled_at IS NULL FOR SHARE
           )
           INSERT INTO balance_refreshes AS b
               (id, tenant_id, scope_key, scope_owner, scope_stripeid, cutoff, trigger, status, total)
           SELECT $1, tenant.id, $3, $4, $5, $6, $7, 'running', $8 FROM tenant
           ON CONFLICT (tenant_id, scope_key) WHERE status = 'running' DO UPDATE SET
               cutoff = GREATEST(b.cutoff, LEAST(EXCLUDED.cutoff, b.started_at)),
               -- Someone now waits on it: it is no longer only background work; and
               -- a person's stays a person's.
               trigger = CASE
                   WHEN (CASE EXCLUDED.trigger WHEN 'schedule' THEN 0 WHEN 'poll' THEN 1 ELSE 2 END)
                        > (CASE b.trigger WHEN 'schedule' THEN 0 WHEN 'poll' THEN 1 ELSE 2 END)
                   THEN EXCLUDED.trigger ELSE b.trigger END
           RETURNING id, tenant_id, scope_owner AS "scope_owner: OwnerId",
                     scope_stripeid AS "scope_stripeid: StripeAccountId", cutoff,
                     trigger AS "trigger: RefreshTrigger", status AS "status: RefreshStatus",
                     total, done, failed, error, started_at, finished_at, (xmax = 0) AS "started!""#,
        Uuid::new_v4(),
        tenant_id,
        scope.key(),
        scope.owner().map(OwnerId::as_str),
        scope.stripeid().map(StripeAccountId::as_str),
        cutoff,
        trigger.as_str(),
        total
    )
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let started = row.started;
    let refresh = Refresh::from(RefreshRow {
        id: row.id,
        tenant_id: row.tenant_id,
        scope_owner: row.scope_owner,
        scope_stripeid: row.scope_stripeid,
        cutoff: row.cutoff,
        trigger: row.trigger,
        status: row.status,
        total: row.total,
        done: row.done,
        failed: row.failed,
        error: row.error,
        started_at: row.started_at,
        finished_at: row.finished_at,
    });
    Ok(Some((refresh, started)))
}

/// Why a refresh of a removed tenant ended.
const TENANT_REMOVED: &str = "its tenant was removed (tally tenant remove)";

/// Why a refresh ended `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshFailure<'a> {
    /// Its tenant was removed.
    TenantRemoved,
    /// It could not finish, for this reason (the tenant's key).
    Reason(&'a str),
}

impl Refresh {
    /// Why it failed; `None` unless it did.
    pub fn failure(&self) -> Option<RefreshFailure<'_>> {
        if self.status != RefreshStatus::Failed {
            return None;
        }
        Some(match self.error.as_deref() {
            Some(TENANT_REMOVED) => RefreshFailure::TenantRemoved,
            Some(reason) => RefreshFailure::Reason(reason),
            None => RefreshFailure::Reason("the refresh failed"),
        })
    }
}

/// Ends the tenant's running refreshes as `failed`, saying its tenant was removed
/// (call in the transaction that removes it): nobody works on them any more.
pub async fn end_for_removed_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<u64, sqlx::Error> {
    fail_running(db, tenant_id, TENANT_REMOVED, None).await
}

/// Ends the tenant's running refreshes as `failed` with `reason`: they can no longer
/// finish, and whoever waits on them should stop. Returns how many.
///
/// With `stalled_secs`, only those that have run that long while no process stored a
/// try of any of the tenant's accounts for as long: a worker that cannot use the
/// tenant's credential asks this, and while another replica can, that replica's tries
/// keep the refreshes alive.
pub async fn fail_running(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    reason: &str,
    stalled_secs: Option<f64>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE balance_refreshes SET status = 'failed', error = $2, finished_at = now()
           WHERE tenant_id = $1 AND status = 'running'
             AND ($3::float8 IS NULL OR (
                 started_at < now() - make_interval(secs => $3)
                 AND NOT EXISTS (
                     SELECT 1 FROM latest_balances l
                     WHERE l.tenant_id = $1 AND l.fetched_at >= now() - make_interval(secs => $3))))"#,
        tenant_id,
        reason,
        stalled_secs
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// The tenant's running refreshes, in the order they get slots: those someone waits
/// on first, narrow scopes before wide ones.
pub async fn running(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<Vec<Refresh>, sqlx::Error> {
    let rows = sqlx::query_as!(
        RefreshRow,
        r#"SELECT id, tenant_id, scope_owner AS "scope_owner: OwnerId",
                  scope_stripeid AS "scope_stripeid: StripeAccountId", cutoff,
                  trigger AS "trigger: RefreshTrigger", status AS "status: RefreshStatus",
                  total, done, failed, error, started_at, finished_at
           FROM balance_refreshes WHERE tenant_id = $1 AND status = 'running'
           -- Someone waiting first; then the narrowest scope (one account, one
           -- owner) so a person's account never waits behind a whole tenant.
           ORDER BY (trigger = 'schedule'), (scope_stripeid IS NULL), (scope_owner IS NULL),
                    started_at"#,
        tenant_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Refresh::from).collect())
}

/// One refresh of the tenant; another tenant's is not found.
pub async fn get(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    id: Uuid,
) -> Result<Option<Refresh>, sqlx::Error> {
    let row = sqlx::query_as!(
        RefreshRow,
        r#"SELECT id, tenant_id, scope_owner AS "scope_owner: OwnerId",
                  scope_stripeid AS "scope_stripeid: StripeAccountId", cutoff,
                  trigger AS "trigger: RefreshTrigger", status AS "status: RefreshStatus",
                  total, done, failed, error, started_at, finished_at
           FROM balance_refreshes WHERE id = $1 AND tenant_id = $2"#,
        id,
        tenant_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(Refresh::from))
}

/// The tenant's refreshes, newest first, after `starting_after` (a refresh id).
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    limit: i64,
    starting_after: Option<Uuid>,
) -> Result<Vec<Refresh>, sqlx::Error> {
    let rows = sqlx::query_as!(
        RefreshRow,
        r#"SELECT id, tenant_id, scope_owner AS "scope_owner: OwnerId",
                  scope_stripeid AS "scope_stripeid: StripeAccountId", cutoff,
                  trigger AS "trigger: RefreshTrigger", status AS "status: RefreshStatus",
                  total, done, failed, error, started_at, finished_at
           FROM balance_refreshes b
           WHERE tenant_id = $1
             AND ($3::uuid IS NULL OR (started_at, id) < (
                 SELECT started_at, id FROM balance_refreshes WHERE id = $3 AND tenant_id = $1))
           ORDER BY started_at DESC, id DESC
           LIMIT $2"#,
        tenant_id,
        limit,
        starting_after
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Refresh::from).collect())
}

/// How far a scope is toward `cutoff`: listed accounts, those tried since (ok or
/// failed). The whole tenant is read from the kept counts and the part of the
/// freshness index older than the cutoff, never a scan of what is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub listed: i64,
    pub ok: i64,
    pub failed: i64,
}

impl Progress {
    pub fn tried(&self) -> i64 {
        self.ok + self.failed
    }

    pub fn pending(&self) -> i64 {
        (self.listed - self.tried()).max(0)
    }
}

pub async fn progress(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    scope: &RefreshScope,
    requirement: &Requirement,
) -> Result<Progress, sqlx::Error> {
    let cutoff = requirement.fetched_since;
    let vouched_since = requirement.vouched_since;
    match scope {
        // From the kept counts minus what does not meet the requirement, summed from
        // the trigger-kept minutes and one index range: never a scan of what is fresh,
        // nor of what is stale. A function, so that its plan is kept (the migration
        // `tenant_progress_function` says why).
        RefreshScope::Tenant => {
            sqlx::query_as!(
                Progress,
                r#"SELECT listed AS "listed!", ok AS "ok!", failed AS "failed!"
               FROM tenant_progress($1, $2, $3)"#,
                tenant_id,
                cutoff,
                vouched_since
            )
            .fetch_one(db)
            .await
        }
        _ => {
            sqlx::query_as!(
                Progress,
                r#"SELECT count(*) AS "listed!",
                      count(*) FILTER (WHERE m.met AND l.ok) AS "ok!",
                      count(*) FILTER (WHERE m.met AND NOT l.ok) AS "failed!"
               FROM stripe_accounts a
               LEFT JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
               CROSS JOIN LATERAL (
                   -- The freshness rule (crate::freshness::Requirement::met_by).
                   SELECT l.fetched_at >= $4
                          OR ($5::timestamptz IS NOT NULL AND l.fetched_at >= $5
                              AND NOT EXISTS (SELECT 1 FROM changed_accounts c
                                              WHERE c.tenant_id = a.tenant_id
                                                AND c.stripeid = a.stripeid
                                                AND c.first_event_at < $4)) AS met
               ) m
               WHERE a.tenant_id = $1 AND a.removed_at IS NULL
                 AND ($2::text IS NULL OR a.accountid = $2)
                 AND ($3::text IS NULL OR a.stripeid = $3)"#,
                tenant_id,
                scope.owner().map(OwnerId::as_str),
                scope.stripeid().map(StripeAccountId::as_str),
                cutoff,
                vouched_since
            )
            .fetch_one(db)
            .await
        }
    }
}

/// Ends a running refresh as `succeeded` with its final counts. False when it was no
/// longer running.
pub async fn succeed(
    db: impl PgExecutor<'_>,
    id: Uuid,
    progress: &Progress,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"UPDATE balance_refreshes
           SET status = 'succeeded', done = $2, failed = $3, finished_at = now()
           WHERE id = $1 AND status = 'running'"#,
        id,
        progress.tried(),
        progress.failed
    )
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Marks every running refresh interrupted (the last worker is stopping), with the
/// reason. Returns how many.
pub async fn interrupt_running(db: impl PgExecutor<'_>, reason: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        r#"UPDATE balance_refreshes SET status = 'interrupted', error = $1, finished_at = now()
           WHERE status = 'running'"#,
        reason
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// One tenant's freshness, for the gauges.
#[derive(Debug, Clone)]
pub struct TenantHealth {
    pub tenant_id: i64,
    pub slug: String,
    pub listed: i64,
    pub ok: i64,
    pub failed: i64,
    /// Accounts whose latest try is older than the cutoff given.
    pub older: i64,
    pub oldest: Option<DateTime<Utc>>,
    pub rate: Option<i32>,
    pub leased: i64,
}

/// Every enabled tenant's freshness against `cutoff` (a removed one is neither shown
/// nor gauged): index lookups per tenant; only the stale part of the freshness index
/// is read.
pub async fn tenant_health(
    db: impl PgExecutor<'_>,
    cutoff: DateTime<Utc>,
) -> Result<Vec<TenantHealth>, sqlx::Error> {
    sqlx::query_as!(
        TenantHealth,
        r#"SELECT t.id AS tenant_id, t.slug,
                  COALESCE(c.listed, 0) AS "listed!",
                  COALESCE(b.ok, 0) AS "ok!",
                  COALESCE(b.failed, 0) AS "failed!",
                  (SELECT count(*) FROM latest_balances l
                   WHERE l.tenant_id = t.id AND l.fetched_at < $1) AS "older!",
                  (SELECT min(fetched_at) FROM latest_balances l WHERE l.tenant_id = t.id) AS oldest,
                  (SELECT current_rate FROM stripe_budgets s WHERE s.tenant_id = t.id) AS rate,
                  (SELECT count(*) FROM refresh_leases r
                   WHERE r.tenant_id = t.id AND r.expires_at > now()) AS "leased!"
           FROM tenants t
           LEFT JOIN tenant_account_counts c ON c.tenant_id = t.id
           LEFT JOIN tenant_balance_counts b ON b.tenant_id = t.id
           WHERE t.disabled_at IS NULL
           ORDER BY t.id"#,
        cutoff
    )
    .fetch_all(db)
    .await
}
