//! Balance snapshots, each account's latest, and the per-tenant totals kept in step
//! with them in the same transaction (DESIGN §4, §5).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, Postgres};

use super::refreshes::Progress;
use crate::domain::{FetchFailure, OwnerId, StripeAccountId};
use crate::freshness::{EventStream, FreshnessMode, Requirement};
use crate::money::{CurrencyAmounts, Exposure, MoneyOverflow, Totals};

/// What a fetch produced for one account.
pub enum SnapshotOutcome<'a> {
    /// The balance as Stripe returned it, and its per-currency amounts.
    Balance { raw: &'a Value, totals: &'a Totals },
    /// Why it could not be read.
    Error(&'a FetchFailure),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Overflow(#[from] MoneyOverflow),
    #[error("stored amounts are malformed: {0}")]
    Corrupt(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored and now the account's latest.
    Latest(i64),
    /// Stored in history; a newer snapshot was already the latest.
    HistoryOnly(i64),
    /// The tenant has no such account; nothing stored.
    UnknownAccount,
}

/// Stores a snapshot and, if it is the newest, makes it the account's latest try; a
/// balance at least as new as the account's last good one also becomes its last good
/// balance, whose amounts are what the account adds to the tenant's totals. The
/// totals and ok/failed counts move by the difference — all in one transaction.
pub async fn record(
    conn: &mut PgConnection,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    fetched_at: DateTime<Utc>,
    source: &str,
    outcome: SnapshotOutcome<'_>,
) -> Result<Recorded, SnapshotError> {
    record_releasing(
        conn, tenant_id, stripeid, fetched_at, source, outcome, None, None,
    )
    .await
}

/// [`record`], also giving back the refresher's lease on the account (held by
/// `lease_holder`) in the same transaction: a claim that runs after this commits
/// sees the new snapshot, one that ran before saw the lease, so no other worker
/// fetches the account again for the same demand. A fetch that started at
/// `fetch_started` also covers the change marks of events that arrived before it.
///
/// A balance whose amounts cannot be added to the tenant's totals (or their history)
/// in 64-bit minor units is stored as a failed try instead, code `amount-overflow`:
/// the totals keep the account's last good amounts, and the answer says why.
#[allow(clippy::too_many_arguments)]
pub async fn record_releasing(
    conn: &mut PgConnection,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    fetched_at: DateTime<Utc>,
    source: &str,
    outcome: SnapshotOutcome<'_>,
    lease_holder: Option<uuid::Uuid>,
    fetch_started: Option<DateTime<Utc>>,
) -> Result<Recorded, SnapshotError> {
    let is_balance = matches!(outcome, SnapshotOutcome::Balance { .. });
    let attempt = record_once(
        conn,
        tenant_id,
        stripeid,
        fetched_at,
        source,
        outcome,
        lease_holder,
        fetch_started,
    )
    .await;
    match attempt {
        // The attempt's transaction (a savepoint inside the caller's) was rolled back.
        Err(error) if is_balance && error.is_overflow() => {
            let failure = FetchFailure::amount_overflow(
                "this balance cannot be added to the tenant's totals in 64-bit minor units",
                None,
            );
            record_once(
                conn,
                tenant_id,
                stripeid,
                fetched_at,
                source,
                SnapshotOutcome::Error(&failure),
                lease_holder,
                fetch_started,
            )
            .await
        }
        other => other,
    }
}

impl SnapshotError {
    /// A sum beyond 64 bits: in tally's money code, or refused by Postgres
    /// (`numeric_value_out_of_range`, a bigint total or history row).
    fn is_overflow(&self) -> bool {
        match self {
            SnapshotError::Overflow(_) => true,
            SnapshotError::Database(sqlx::Error::Database(error)) => {
                error.code().as_deref() == Some("22003")
            }
            _ => false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn record_once(
    conn: &mut PgConnection,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    fetched_at: DateTime<Utc>,
    source: &str,
    outcome: SnapshotOutcome<'_>,
    lease_holder: Option<uuid::Uuid>,
    fetch_started: Option<DateTime<Utc>>,
) -> Result<Recorded, SnapshotError> {
    let mut tx = super::begin_on(conn).await?;
    // Locks the account so a concurrent removal cannot interleave with the totals.
    let listed = sqlx::query_scalar!(
        r#"SELECT removed_at IS NULL AS "listed!" FROM stripe_accounts
           WHERE tenant_id = $1 AND stripeid = $2 FOR UPDATE"#,
        tenant_id,
        stripeid.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(listed) = listed else {
        return Ok(Recorded::UnknownAccount);
    };
    // After the account's lock, as a claim takes them (account, then lease).
    if let Some(worker) = lease_holder {
        sqlx::query!(
            "DELETE FROM refresh_leases WHERE tenant_id = $1 AND stripeid = $2 AND worker_id = $3",
            tenant_id,
            stripeid.as_str(),
            worker
        )
        .execute(&mut *tx)
        .await?;
    }
    if let Some(started) = fetch_started {
        super::changes::covered_by_fetch(&mut *tx, tenant_id, stripeid, started).await?;
    }
    let (balance, error, new_totals) = match &outcome {
        SnapshotOutcome::Balance { raw, totals } => (Some(*raw), None, Some(*totals)),
        SnapshotOutcome::Error(error) => (None, Some(Json(*error)), None),
    };
    let snapshot_id = sqlx::query_scalar!(
        r#"INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance, error)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"#,
        tenant_id,
        stripeid.as_str(),
        fetched_at,
        source,
        balance,
        error as _
    )
    .fetch_one(&mut *tx)
    .await?;
    if !listed {
        // A removed account keeps its history but never becomes anyone's latest: it
        // is out of the totals, and if sync lists it again its next fetch counts anew.
        tx.commit().await?;
        return Ok(Recorded::HistoryOnly(snapshot_id));
    }
    let previous = sqlx::query!(
        r#"SELECT snapshot_id, fetched_at, ok, amounts, good_snapshot_id, good_at
           FROM latest_balances WHERE tenant_id = $1 AND stripeid = $2"#,
        tenant_id,
        stripeid.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Two things move independently: the latest try (any snapshot at least as new as
    // the stored try) and the last good balance (a balance at least as new as the
    // stored good one). A failure moves only the try, so the account keeps its last
    // good amounts in the totals while it counts as failed.
    let newer_try = previous.as_ref().is_none_or(|p| fetched_at >= p.fetched_at);
    let newer_good = new_totals.is_some()
        && previous
            .as_ref()
            .is_none_or(|p| p.good_at.is_none_or(|good_at| fetched_at >= good_at));
    if !newer_try && !newer_good {
        tx.commit().await?;
        return Ok(Recorded::HistoryOnly(snapshot_id));
    }
    let old = match &previous {
        Some(p) => Some((p.ok, stored_totals(&p.amounts)?)),
        None => None,
    };
    let (try_id, try_at, ok) = match &previous {
        Some(p) if !newer_try => (p.snapshot_id, p.fetched_at, p.ok),
        _ => (snapshot_id, fetched_at, new_totals.is_some()),
    };
    let (good_id, good_at, good_totals) = match (&previous, new_totals) {
        (_, Some(totals)) if newer_good => (Some(snapshot_id), Some(fetched_at), totals.clone()),
        (Some(p), _) => (
            p.good_snapshot_id,
            p.good_at,
            old.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
        ),
        (None, _) => (None, None, Totals::default()),
    };
    sqlx::query!(
        r#"INSERT INTO latest_balances
               (tenant_id, stripeid, snapshot_id, fetched_at, ok, amounts, good_snapshot_id, good_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (tenant_id, stripeid) DO UPDATE SET
               snapshot_id = EXCLUDED.snapshot_id, fetched_at = EXCLUDED.fetched_at,
               ok = EXCLUDED.ok, amounts = EXCLUDED.amounts,
               good_snapshot_id = EXCLUDED.good_snapshot_id, good_at = EXCLUDED.good_at"#,
        tenant_id,
        stripeid.as_str(),
        try_id,
        try_at,
        ok,
        serde_json::to_value(good_totals.rows())?,
        good_id,
        good_at
    )
    .execute(&mut *tx)
    .await?;
    move_tenant_totals(&mut tx, tenant_id, old, Some((ok, good_totals))).await?;
    tx.commit().await?;
    // An older balance that only filled in the last good one is still not the latest.
    Ok(if newer_try {
        Recorded::Latest(snapshot_id)
    } else {
        Recorded::HistoryOnly(snapshot_id)
    })
}

fn stored_totals(amounts: &Value) -> Result<Totals, SnapshotError> {
    let rows: Vec<CurrencyAmounts> = serde_json::from_value(amounts.clone())?;
    Ok(Totals::from_rows(rows)?)
}

/// Moves the tenant's totals and ok/failed counts from an account's `old` latest
/// state to its `new` one (`None`: no snapshot counted).
async fn move_tenant_totals(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    tenant_id: i64,
    old: Option<(bool, Totals)>,
    new: Option<(bool, Totals)>,
) -> Result<(), SnapshotError> {
    let empty = Totals::default();
    let old_totals = old.as_ref().map_or(&empty, |(_, t)| t);
    let new_totals = new.as_ref().map_or(&empty, |(_, t)| t);
    let delta = Totals::delta(new_totals, old_totals)?;
    if !delta.is_empty() {
        let mut currencies = Vec::new();
        let (mut available, mut pending, mut reserved, mut instant, mut holders) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut negative, mut negative_accounts) = (Vec::new(), Vec::new());
        for change in delta {
            currencies.push(change.currency);
            available.push(change.amounts.available);
            pending.push(change.amounts.pending);
            reserved.push(change.amounts.connect_reserved);
            instant.push(change.amounts.instant_available);
            holders.push(change.holders);
            negative.push(change.exposure.negative);
            negative_accounts.push(change.exposure.accounts);
        }
        // Postgres refuses a bigint overflow, so a total can never wrap.
        sqlx::query!(
            r#"INSERT INTO tenant_balance_totals AS t
                   (tenant_id, currency, available, pending, connect_reserved, instant_available,
                    holders, negative, negative_accounts)
               SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                                        $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
               ON CONFLICT (tenant_id, currency) DO UPDATE SET
                   available = t.available + EXCLUDED.available,
                   pending = t.pending + EXCLUDED.pending,
                   connect_reserved = t.connect_reserved + EXCLUDED.connect_reserved,
                   instant_available = t.instant_available + EXCLUDED.instant_available,
                   holders = t.holders + EXCLUDED.holders,
                   negative = t.negative + EXCLUDED.negative,
                   negative_accounts = t.negative_accounts + EXCLUDED.negative_accounts"#,
            tenant_id,
            &currencies,
            &available,
            &pending,
            &reserved,
            &instant,
            &holders,
            &negative,
            &negative_accounts
        )
        .execute(&mut **tx)
        .await?;
    }
    let count = |state: &Option<(bool, Totals)>, ok: bool| {
        i64::from(state.as_ref().is_some_and(|(is_ok, _)| *is_ok == ok))
    };
    let ok_change = count(&new, true) - count(&old, true);
    let failed_change = count(&new, false) - count(&old, false);
    if ok_change != 0 || failed_change != 0 {
        sqlx::query!(
            r#"INSERT INTO tenant_balance_counts AS c (tenant_id, ok, failed) VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id) DO UPDATE SET ok = c.ok + EXCLUDED.ok,
                                                     failed = c.failed + EXCLUDED.failed"#,
            tenant_id,
            ok_change,
            failed_change
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Takes accounts that are being removed out of the tenant's totals and counts and
/// drops their latest pointer (their history stays). Call in the transaction that
/// marks them removed.
pub async fn forget_latest(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    tenant_id: i64,
    stripeids: &[StripeAccountId],
) -> Result<(), SnapshotError> {
    let removed = sqlx::query!(
        r#"DELETE FROM latest_balances WHERE tenant_id = $1 AND stripeid = ANY($2)
           RETURNING ok, amounts"#,
        tenant_id,
        stripeids as &[StripeAccountId]
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in removed {
        let old = Some((row.ok, stored_totals(&row.amounts)?));
        move_tenant_totals(tx, tenant_id, old, None).await?;
    }
    Ok(())
}

/// The whole tenant's state: listed accounts, those whose latest snapshot is a
/// balance (ok) or an error (failed), and the oldest latest snapshot. One round
/// trip of index lookups, however many accounts.
#[derive(Debug, Clone, Default)]
pub struct TenantFreshness {
    pub listed: i64,
    pub ok: i64,
    pub failed: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub async fn tenant_freshness(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<TenantFreshness, sqlx::Error> {
    Ok(tenant_look(db, tenant_id).await?.2)
}

/// A tenant's freshness mode and event stream with its kept state, in one read: a
/// whole-tenant poll's first look needs both (one round trip fewer per poll).
pub async fn tenant_look(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<(FreshnessMode, EventStream, TenantFreshness), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT t.freshness AS "freshness: FreshnessMode", s.last_event_at,
                  s.vouched_since AS "vouched_since?",
                  COALESCE((SELECT listed FROM tenant_account_counts WHERE tenant_id = $1), 0) AS "listed!",
                  COALESCE((SELECT ok FROM tenant_balance_counts WHERE tenant_id = $1), 0) AS "ok!",
                  COALESCE((SELECT failed FROM tenant_balance_counts WHERE tenant_id = $1), 0) AS "failed!",
                  (SELECT min(fetched_at) FROM latest_balances WHERE tenant_id = $1) AS oldest
           FROM tenants t LEFT JOIN event_streams s ON s.tenant_id = t.id
           WHERE t.id = $1"#,
        tenant_id
    )
    .fetch_optional(db)
    .await?;
    // A tenant that is gone has nothing kept: the defaults, as `mode_and_stream` says.
    Ok(row
        .map(|row| {
            (
                row.freshness,
                EventStream {
                    last_event_at: row.last_event_at,
                    vouched_since: row.vouched_since,
                },
                TenantFreshness {
                    listed: row.listed,
                    ok: row.ok,
                    failed: row.failed,
                    oldest: row.oldest,
                },
            )
        })
        .unwrap_or_default())
}

/// The whole tenant's kept totals per currency (those some listed account holds), each
/// with the exposure of the accounts below zero in it.
pub async fn tenant_totals(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<(CurrencyAmounts, Exposure)>, sqlx::Error> {
    Ok(tenant_totals_and_progress(db, tenant_id, None).await?.0)
}

/// The whole tenant's kept totals and, with `progress_against`, its progress against
/// that requirement (`store::refreshes::progress`'s count, the `tenant_progress`
/// function) in the same round trip: a poll's stale count costs no statement of its own.
pub async fn tenant_totals_and_progress(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    progress_against: Option<&Requirement>,
) -> Result<(Vec<(CurrencyAmounts, Exposure)>, Option<Progress>), sqlx::Error> {
    // One row per currency, each carrying the progress (or one row of NULL totals when
    // the tenant holds none). Without a requirement the function is not called: a
    // condition on parameters only is checked once, before its scan runs.
    let rows = sqlx::query!(
        r#"WITH progress AS (
               SELECT p.listed, p.ok, p.failed FROM tenant_progress($1, $2, $3) p
               WHERE $2::timestamptz IS NOT NULL
           )
           SELECT t.currency AS "currency?", t.available AS "available?", t.pending AS "pending?",
                  t.connect_reserved AS "connect_reserved?",
                  t.instant_available AS "instant_available?", t.negative AS "negative?",
                  t.negative_accounts AS "negative_accounts?",
                  progress.listed AS "listed?", progress.ok AS "ok?", progress.failed AS "failed?"
           FROM (VALUES (1)) AS one (row)
           LEFT JOIN progress ON true
           LEFT JOIN tenant_balance_totals t ON t.tenant_id = $1 AND t.holders > 0
           ORDER BY t.currency"#,
        tenant_id,
        progress_against.map(|r| r.fetched_since),
        progress_against.and_then(|r| r.vouched_since)
    )
    .fetch_all(db)
    .await?;
    let progress = rows.first().and_then(|r| {
        Some(Progress {
            listed: r.listed?,
            ok: r.ok?,
            failed: r.failed?,
        })
    });
    let totals = rows
        .into_iter()
        .filter_map(|r| {
            let amounts = CurrencyAmounts {
                currency: r.currency?,
                amounts: crate::money::Amounts {
                    available: r.available?,
                    pending: r.pending?,
                    connect_reserved: r.connect_reserved?,
                    instant_available: r.instant_available?,
                },
            };
            let exposure = Exposure {
                negative: r.negative?,
                accounts: r.negative_accounts?,
            };
            Some((amounts, exposure))
        })
        .collect();
    Ok((totals, progress))
}

/// The tenant's kept exposure in every currency it has kept totals for (0 where no
/// account is below zero, so a gauge falls back to 0 rather than keep an old value).
/// Reads the kept rows only, no account.
pub async fn tenant_exposure(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<(String, Exposure)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT currency, negative, negative_accounts FROM tenant_balance_totals
           WHERE tenant_id = $1 ORDER BY currency"#,
        tenant_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let exposure = Exposure {
                negative: r.negative,
                accounts: r.negative_accounts,
            };
            (r.currency, exposure)
        })
        .collect())
}

/// A listed account and its latest snapshot, if any.
#[derive(Debug, Clone)]
pub struct AccountLatest {
    pub stripeid: String,
    pub accountid: Option<String>,
    pub platform_id: Option<String>,
    /// The latest try, and whether it returned a balance.
    pub fetched_at: Option<DateTime<Utc>>,
    pub ok: Option<bool>,
    /// The last good balance's per-currency amounts (also while the latest try failed).
    pub amounts: Option<Value>,
    /// When the last good balance was fetched; `None` if the account was never read.
    pub good_at: Option<DateTime<Utc>>,
    /// The latest try's error, when it failed.
    pub error: Option<Json<FetchFailure>>,
    /// When the first event about the account since its latest fetch arrived.
    pub changed_at: Option<DateTime<Utc>>,
}

impl AccountLatest {
    /// What the account adds to the totals: its last good amounts, whatever the
    /// latest try did.
    pub fn totals(&self) -> Result<Totals, SnapshotError> {
        match &self.amounts {
            Some(amounts) => stored_totals(amounts),
            None => Ok(Totals::default()),
        }
    }
}

/// Listed accounts of a tenant (or of one owner) with their latest snapshots, in
/// listing order.
pub async fn scope_latest(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: Option<&OwnerId>,
) -> Result<Vec<AccountLatest>, sqlx::Error> {
    sqlx::query_as!(
        AccountLatest,
        r#"SELECT a.stripeid, a.accountid, a.platform_id,
                  l.fetched_at AS "fetched_at?", l.ok AS "ok?", l.amounts AS "amounts?",
                  l.good_at AS "good_at?", s.error AS "error?: Json<FetchFailure>",
                  (SELECT c.first_event_at FROM changed_accounts c
                   WHERE c.tenant_id = a.tenant_id AND c.stripeid = a.stripeid) AS "changed_at?"
           FROM stripe_accounts a
           LEFT JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
           LEFT JOIN balance_snapshots s ON s.id = l.snapshot_id AND NOT l.ok
           WHERE a.tenant_id = $1 AND a.removed_at IS NULL
             AND ($2::text IS NULL OR a.accountid = $2)
           ORDER BY a.created_at DESC, a.stripeid"#,
        tenant_id,
        owner.map(OwnerId::as_str)
    )
    .fetch_all(db)
    .await
}

/// Listed accounts of the tenant with no snapshot yet. Only asked when the kept
/// counts say some exist, so the whole-tenant aggregate scans nothing when complete.
pub async fn never_fetched(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT a.stripeid FROM stripe_accounts a
           WHERE a.tenant_id = $1 AND a.removed_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM latest_balances l
                             WHERE l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid)
           ORDER BY a.stripeid"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// An account whose latest try failed: the error, when it was tried, and when its
/// last good balance (still in the totals) was fetched.
#[derive(Debug, Clone)]
pub struct FailedAccount {
    pub stripeid: String,
    pub error: Json<FetchFailure>,
    pub fetched_at: DateTime<Utc>,
    pub good_at: Option<DateTime<Utc>>,
}

/// The whole tenant's failed accounts (latest try is an error). Read through the
/// partial index of failed rows, so it costs what the failures are, not the tenant.
pub async fn tenant_failures(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<FailedAccount>, sqlx::Error> {
    sqlx::query_as!(
        FailedAccount,
        r#"SELECT l.stripeid, s.error AS "error!: Json<FetchFailure>", l.fetched_at, l.good_at
           FROM latest_balances l JOIN balance_snapshots s ON s.id = l.snapshot_id
           WHERE l.tenant_id = $1 AND NOT l.ok
           ORDER BY l.stripeid"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// One stored snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: i64,
    pub fetched_at: DateTime<Utc>,
    pub source: String,
    pub balance: Option<Value>,
    pub error: Option<Json<FetchFailure>>,
}

/// An account's latest snapshot (its latest try).
pub async fn latest(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
) -> Result<Option<Snapshot>, sqlx::Error> {
    Ok(latest_and_good_at(db, tenant_id, stripeid)
        .await?
        .map(|(snapshot, _)| snapshot))
}

/// An account's latest snapshot (its latest try), and when its last good balance
/// was fetched (`None`: never read).
pub async fn latest_and_good_at(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
) -> Result<Option<(Snapshot, Option<DateTime<Utc>>)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT s.id, s.fetched_at, s.source, s.balance,
                  s.error AS "error: Json<FetchFailure>", l.good_at
           FROM latest_balances l JOIN balance_snapshots s ON s.id = l.snapshot_id
           WHERE l.tenant_id = $1 AND l.stripeid = $2"#,
        tenant_id,
        stripeid.as_str()
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| {
        let snapshot = Snapshot {
            id: r.id,
            fetched_at: r.fetched_at,
            source: r.source,
            balance: r.balance,
            error: r.error,
        };
        (snapshot, r.good_at)
    }))
}

/// Stored snapshots of one account between `from` and `to`, newest first.
pub async fn history(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Snapshot>, sqlx::Error> {
    sqlx::query_as!(
        Snapshot,
        r#"SELECT id, fetched_at, source, balance, error AS "error: Json<FetchFailure>"
           FROM balance_snapshots
           WHERE tenant_id = $1 AND stripeid = $2
             AND ($3::timestamptz IS NULL OR fetched_at >= $3)
             AND ($4::timestamptz IS NULL OR fetched_at <= $4)
           ORDER BY fetched_at DESC, id DESC LIMIT $5"#,
        tenant_id,
        stripeid.as_str(),
        from,
        to,
        limit
    )
    .fetch_all(db)
    .await
}
