//! Pruning the tables that grow with time (`retention.rs` runs it). Each function
//! deletes at most `limit` rows in the caller's transaction, which holds the table's
//! turn ([`take_turn`]). What may go is decided by the SQL functions of the retention
//! migration, which `tally doctor` counts with too ([`prunable`]).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// A table (or group of tables) pruned as one, one replica at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Snapshots,
    Transactions,
    Closes,
    TotalsHistory,
    Refreshes,
    SyncRuns,
    WebhookEvents,
    Audit,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Snapshots,
        Table::Transactions,
        Table::Closes,
        Table::TotalsHistory,
        Table::Refreshes,
        Table::SyncRuns,
        Table::WebhookEvents,
        Table::Audit,
    ];

    /// The tables it prunes, as Postgres names them (the first holds the rows counted).
    pub fn relations(self) -> &'static [&'static str] {
        match self {
            Table::Snapshots => &["balance_snapshots"],
            Table::Transactions => &["balance_transactions"],
            Table::Closes => &["account_closes", "day_closes"],
            Table::TotalsHistory => &["balance_totals_history"],
            Table::Refreshes => &["balance_refreshes"],
            Table::SyncRuns => &["sync_runs"],
            Table::WebhookEvents => &["webhook_events"],
            Table::Audit => &["audit_events"],
        }
    }

    pub fn name(self) -> &'static str {
        self.relations()[0]
    }

    fn lock_key(self) -> i32 {
        match self {
            Table::Snapshots => 1,
            Table::Transactions => 2,
            Table::Closes => 3,
            Table::TotalsHistory => 4,
            Table::Refreshes => 5,
            Table::SyncRuns => 6,
            Table::WebhookEvents => 7,
            Table::Audit => 8,
        }
    }
}

/// The advisory lock class of pruning turns (`balance_history_lock` uses 1952541817).
const TURN_LOCK_CLASS: i32 = 1_952_541_818;

/// Takes the table's pruning turn for the rest of the transaction, if no other process
/// holds it, and makes every lock the transaction waits for give up after
/// `lock_timeout_ms`: a batch never queues behind (or ahead of) a writer for long.
/// (JIT is off too: compiling a batch's plan would take longer than running it.)
/// Transaction-scoped only, so it holds behind a transaction-pooling PgBouncer.
pub async fn take_turn(
    conn: &mut PgConnection,
    table: Table,
    lock_timeout_ms: u64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT set_config('lock_timeout', $3, true) IS NOT NULL
                  AND set_config('jit', 'off', true) IS NOT NULL
                  AND pg_try_advisory_xact_lock($1, $2) AS "taken!""#,
        TURN_LOCK_CLASS,
        table.lock_key(),
        format!("{lock_timeout_ms}ms")
    )
    .fetch_one(conn)
    .await
}

/// The database's clock: every horizon is measured from it, whatever the host's says.
pub async fn now(db: impl PgExecutor<'_>) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(db)
        .await
}

/// How far the pass named `name` has looked.
pub async fn mark(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!("SELECT through FROM retention_marks WHERE name = $1", name)
        .fetch_optional(db)
        .await
}

pub async fn set_mark(
    db: impl PgExecutor<'_>,
    name: &str,
    through: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO retention_marks (name, through) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET through = GREATEST(retention_marks.through, $2)"#,
        name,
        through
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Which snapshots a pass looks at, and what it keeps (`retention_snapshots_prunable`).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotScan {
    /// Every snapshot from here on is kept.
    pub full_before: DateTime<Utc>,
    /// Each account's last balance of a day is kept from here on (`None`: forever).
    pub daily_before: Option<DateTime<Utc>>,
    /// Close checkpoints are kept for days the closer may compute (`None`: all).
    pub ledger_days: Option<i32>,
    pub scan_from: Option<DateTime<Utc>>,
    pub scan_until: DateTime<Utc>,
}

/// Deletes the first `limit` prunable snapshots of the scan; returns how many, and the
/// `fetched_at` of the last: every snapshot of the scan before it has been judged, so
/// the next batch may start there.
pub async fn prune_snapshots(
    conn: &mut PgConnection,
    scan: &SnapshotScan,
    limit: i64,
) -> Result<(u64, Option<DateTime<Utc>>), sqlx::Error> {
    let deleted = sqlx::query!(
        r#"WITH deleted AS (
               DELETE FROM balance_snapshots WHERE id IN (
                   SELECT p.id FROM retention_snapshots_prunable($1, $2, $3, $4, $5, $6) p)
               RETURNING fetched_at)
           SELECT count(*) AS "deleted!", max(fetched_at) AS last FROM deleted"#,
        scan.full_before,
        scan.daily_before,
        scan.ledger_days,
        scan.scan_from,
        scan.scan_until,
        limit
    )
    .fetch_one(conn)
    .await?;
    Ok((u64::try_from(deleted.deleted).unwrap_or(0), deleted.last))
}

/// Balance transactions of final days (`ledger_days` before the closer's first open day).
pub async fn prune_transactions(
    conn: &mut PgConnection,
    ledger_days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM balance_transactions t USING retention_transactions_prunable($1, $2) p
           WHERE t.tenant_id = p.tenant_id AND t.id = p.id"#,
        ledger_days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Closed days more than `closes_days` before Stripe's clock: account rows first, then
/// the day rows they leave.
pub async fn prune_closes(
    conn: &mut PgConnection,
    closes_days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let accounts = sqlx::query!(
        r#"DELETE FROM account_closes c WHERE (c.tenant_id, c.day, c.stripeid, c.currency) IN (
               SELECT a.tenant_id, a.day, a.stripeid, a.currency
               FROM retention_closes_from($1) k
               CROSS JOIN LATERAL (
                   SELECT x.tenant_id, x.day, x.stripeid, x.currency FROM account_closes x
                   WHERE x.tenant_id = k.tenant_id AND x.day < k.keep_from
                   ORDER BY x.day LIMIT $2) a
               LIMIT $2)"#,
        closes_days,
        limit
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let rest = limit.saturating_sub(i64::try_from(accounts).unwrap_or(limit));
    if rest == 0 {
        return Ok(accounts);
    }
    let days = sqlx::query!(
        r#"DELETE FROM day_closes d WHERE (d.tenant_id, d.day) IN (
               SELECT x.tenant_id, x.day FROM retention_closes_from($1) k
               JOIN day_closes x ON x.tenant_id = k.tenant_id AND x.day < k.keep_from
               WHERE NOT EXISTS (SELECT 1 FROM account_closes a
                                 WHERE a.tenant_id = x.tenant_id AND a.day = x.day)
               ORDER BY x.day LIMIT $2)"#,
        closes_days,
        limit
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(accounts + days)
}

/// Hourly totals older than `days`, but the last row at or before the horizon, which
/// carries the totals forward to the first kept hour.
pub async fn prune_totals_history(
    conn: &mut PgConnection,
    days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM balance_totals_history h WHERE (h.tenant_id, h.at) IN (
               SELECT o.tenant_id, o.at FROM balance_totals_history o
               WHERE o.at < now() - make_interval(days => $1)
                 AND EXISTS (SELECT 1 FROM balance_totals_history n
                             WHERE n.tenant_id = o.tenant_id AND n.at > o.at
                               AND n.at <= now() - make_interval(days => $1))
               ORDER BY o.at LIMIT $2)"#,
        days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Finished balance refreshes started more than `days` ago.
pub async fn prune_refreshes(
    conn: &mut PgConnection,
    days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM balance_refreshes WHERE id IN (
               SELECT id FROM balance_refreshes
               WHERE started_at < now() - make_interval(days => $1) AND status <> 'running'
               ORDER BY started_at LIMIT $2)"#,
        days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Finished account syncs started more than `days` ago, except each tenant's latest
/// (the admin page's "last sync", and the re-sync schedule, read it).
pub async fn prune_sync_runs(
    conn: &mut PgConnection,
    days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM sync_runs WHERE id IN (
               SELECT r.id FROM sync_runs r
               WHERE r.started_at < now() - make_interval(days => $1) AND r.status <> 'running'
                 AND EXISTS (SELECT 1 FROM sync_runs n
                             WHERE n.tenant_id = r.tenant_id AND n.started_at > r.started_at)
               ORDER BY r.started_at LIMIT $2)"#,
        days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Webhook event ids received more than `days` ago (the settings keep `days` >= 3).
pub async fn prune_webhook_events(
    conn: &mut PgConnection,
    days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM webhook_events w WHERE (w.tenant_id, w.event_id) IN (
               SELECT tenant_id, event_id FROM webhook_events
               WHERE received_at < now() - make_interval(days => GREATEST($1, 3))
               ORDER BY received_at LIMIT $2)"#,
        days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Audit entries older than `days` (the settings keep `days` at the audit minimum or more).
pub async fn prune_audit(
    conn: &mut PgConnection,
    days: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"DELETE FROM audit_events WHERE id IN (
               SELECT id FROM audit_events
               WHERE at < now() - make_interval(days => GREATEST($1, 400))
               ORDER BY at LIMIT $2)"#,
        days,
        limit
    )
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// A table's size on disk (with its indexes and TOAST) and its rows, as Postgres
/// estimates them.
#[derive(Debug, Clone)]
pub struct TableSize {
    pub table: String,
    pub bytes: i64,
    pub rows: i64,
}

pub async fn sizes(
    db: impl PgExecutor<'_>,
    tables: &[&str],
) -> Result<Vec<TableSize>, sqlx::Error> {
    let names: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    sqlx::query_as!(
        TableSize,
        r#"SELECT c.relname::text AS "table!", pg_total_relation_size(c.oid) AS "bytes!",
                  GREATEST(c.reltuples, 0)::bigint AS "rows!"
           FROM pg_class c
           WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::regnamespace
           ORDER BY c.relname"#,
        &names
    )
    .fetch_all(db)
    .await
}

/// What a pass would delete now: rows, and their bytes as stored (heap tuples; the
/// index entries they free come on top).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prunable {
    pub rows: i64,
    pub bytes: i64,
}

/// Every `*_days` as the SQL above takes it (`None`: kept forever).
#[derive(Debug, Clone, Copy)]
pub struct Horizons {
    pub snapshots_full_days: Option<i32>,
    pub snapshots_days: Option<i32>,
    pub totals_history_days: Option<i32>,
    pub ledger_days: Option<i32>,
    pub closes_days: Option<i32>,
    pub refreshes_days: Option<i32>,
    pub sync_runs_days: Option<i32>,
    pub webhook_events_days: Option<i32>,
    pub audit_days: Option<i32>,
}

/// What pruning would free in `table` now, by the same rules as the pruner (all of
/// the table at once, not a batch).
pub async fn prunable(
    conn: &mut PgConnection,
    table: Table,
    horizons: &Horizons,
) -> Result<Prunable, sqlx::Error> {
    let days = |d: Option<i32>| d.unwrap_or(0);
    let (rows, bytes) = match table {
        Table::Snapshots => {
            let Some(full) = horizons.snapshots_full_days else {
                return Ok(Prunable::default());
            };
            let row = sqlx::query!(
                r#"SELECT count(*) AS "rows!", COALESCE(sum(p.bytes), 0)::bigint AS "bytes!"
                   FROM retention_snapshots_prunable(
                       now() - make_interval(days => $1),
                       now() - make_interval(days => $2::int), $3, NULL, 'infinity', NULL) p"#,
                full,
                horizons.snapshots_days,
                horizons.ledger_days
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.rows, row.bytes)
        }
        Table::Transactions => {
            let Some(ledger) = horizons.ledger_days else {
                return Ok(Prunable::default());
            };
            let row = sqlx::query!(
                r#"SELECT count(*) AS "rows!", COALESCE(sum(p.bytes), 0)::bigint AS "bytes!"
                   FROM retention_transactions_prunable($1, NULL) p"#,
                ledger
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.rows, row.bytes)
        }
        Table::Closes => {
            let Some(closes) = horizons.closes_days else {
                return Ok(Prunable::default());
            };
            let row = sqlx::query!(
                r#"SELECT count(*) AS "rows!", COALESCE(sum(pg_column_size(x.*)), 0)::bigint AS "bytes!"
                   FROM retention_closes_from($1) k
                   JOIN account_closes x ON x.tenant_id = k.tenant_id AND x.day < k.keep_from"#,
                closes
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.rows, row.bytes)
        }
        Table::TotalsHistory => {
            let Some(history) = horizons.totals_history_days else {
                return Ok(Prunable::default());
            };
            let row = sqlx::query!(
                r#"SELECT count(*) AS "rows!", COALESCE(sum(pg_column_size(o.*)), 0)::bigint AS "bytes!"
                   FROM balance_totals_history o
                   WHERE o.at < now() - make_interval(days => $1)
                     AND EXISTS (SELECT 1 FROM balance_totals_history n
                                 WHERE n.tenant_id = o.tenant_id AND n.at > o.at
                                   AND n.at <= now() - make_interval(days => $1))"#,
                history
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.rows, row.bytes)
        }
        Table::Refreshes | Table::SyncRuns | Table::WebhookEvents | Table::Audit => {
            let kept = match table {
                Table::Refreshes => horizons.refreshes_days,
                Table::SyncRuns => horizons.sync_runs_days,
                Table::WebhookEvents => horizons.webhook_events_days.map(|d| d.max(3)),
                _ => horizons.audit_days.map(|d| d.max(400)),
            };
            if kept.is_none() {
                return Ok(Prunable::default());
            }
            let row = sqlx::query!(
                r#"SELECT count(*) AS "rows!", COALESCE(sum(bytes), 0)::bigint AS "bytes!" FROM (
                       SELECT pg_column_size(r.*) AS bytes FROM balance_refreshes r
                       WHERE $1 = 'balance_refreshes' AND r.status <> 'running'
                         AND r.started_at < now() - make_interval(days => $2)
                       UNION ALL
                       SELECT pg_column_size(r.*) FROM sync_runs r
                       WHERE $1 = 'sync_runs' AND r.status <> 'running'
                         AND r.started_at < now() - make_interval(days => $2)
                         AND EXISTS (SELECT 1 FROM sync_runs n
                                     WHERE n.tenant_id = r.tenant_id AND n.started_at > r.started_at)
                       UNION ALL
                       SELECT pg_column_size(r.*) FROM webhook_events r
                       WHERE $1 = 'webhook_events' AND r.received_at < now() - make_interval(days => $2)
                       UNION ALL
                       SELECT pg_column_size(r.*) FROM audit_events r
                       WHERE $1 = 'audit_events' AND r.at < now() - make_interval(days => $2)) a"#,
                table.name(),
                days(kept)
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.rows, row.bytes)
        }
    };
    Ok(Prunable { rows, bytes })
}
