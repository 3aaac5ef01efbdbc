//! Totals over time (issue 10): reading the per-hour history the triggers of the
//! `balance_totals_history` migration keep in the same transaction as each snapshot,
//! listing and removal (see that migration for what a moment holds).
//!
//! The whole tenant is read from the kept rows with carry-forward (the latest row at
//! or before each bucket end): an index lookup per bucket and currency, never a scan
//! of snapshots. One owner's totals are computed from that owner's snapshots.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Listed accounts at one bucket end: with a balance, and without one yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountsAt {
    pub at: DateTime<Utc>,
    pub accounts: i64,
    pub missing: i64,
}

/// One currency's totals at one bucket end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyAt {
    pub at: DateTime<Utc>,
    pub currency: String,
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
}

/// The whole tenant's counts at each of `ends` (in the order given).
pub async fn tenant_counts(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    ends: &[DateTime<Utc>],
) -> Result<Vec<CountsAt>, sqlx::Error> {
    sqlx::query_as!(
        CountsAt,
        r#"SELECT b.at AS "at!", COALESCE(c.accounts, 0) AS "accounts!",
                  COALESCE(c.missing, 0) AS "missing!"
           FROM unnest($2::timestamptz[]) WITH ORDINALITY AS b(at, n)
           LEFT JOIN LATERAL (
               SELECT h.accounts, h.missing FROM balance_counts_history h
               WHERE h.tenant_id = $1 AND h.at <= b.at ORDER BY h.at DESC LIMIT 1
           ) c ON true
           ORDER BY b.n"#,
        tenant_id,
        ends
    )
    .fetch_all(db)
    .await
}

/// The whole tenant's totals at each of `ends`, for every currency some listed
/// account held then (or only `currency`).
pub async fn tenant_totals(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    ends: &[DateTime<Utc>],
    currency: Option<&str>,
) -> Result<Vec<CurrencyAt>, sqlx::Error> {
    sqlx::query_as!(
        CurrencyAt,
        r#"SELECT b.at AS "at!", c.currency AS "currency!", t.available AS "available!",
                  t.pending AS "pending!", t.connect_reserved AS "connect_reserved!",
                  t.instant_available AS "instant_available!"
           FROM unnest($2::timestamptz[]) AS b(at)
           CROSS JOIN (SELECT currency FROM balance_history_currencies
                       WHERE tenant_id = $1 AND ($3::text IS NULL OR currency = $3)) c
           CROSS JOIN LATERAL (
               SELECT h.available, h.pending, h.connect_reserved, h.instant_available, h.holders
               FROM balance_totals_history h
               WHERE h.tenant_id = $1 AND h.currency = c.currency AND h.at <= b.at
               ORDER BY h.at DESC LIMIT 1
           ) t
           WHERE t.holders > 0
           ORDER BY b.at, c.currency"#,
        tenant_id,
        ends,
        currency
    )
    .fetch_all(db)
    .await
}

/// True when the tenant stores any account (listed or removed) of that owner.
pub async fn owner_known(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM stripe_accounts
                          WHERE tenant_id = $1 AND accountid = $2) AS "known!""#,
        tenant_id,
        owner
    )
    .fetch_one(db)
    .await
}

/// One owner's counts at each of `ends` (only the ends at which some of the owner's
/// accounts were listed), from the owner's listing periods and snapshots.
pub async fn owner_counts(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &str,
    ends: &[DateTime<Utc>],
) -> Result<Vec<CountsAt>, sqlx::Error> {
    sqlx::query_as!(
        CountsAt,
        r#"SELECT b.at AS "at!", count(g.balance) AS "accounts!",
                  (count(*) - count(g.balance)) AS "missing!"
           FROM stripe_accounts a
           JOIN stripe_account_listings l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
           JOIN unnest($3::timestamptz[]) AS b(at)
             ON l.listed_at <= b.at AND (l.removed_at IS NULL OR b.at < l.removed_at)
           LEFT JOIN LATERAL (
               SELECT s.balance FROM balance_snapshots s
               WHERE s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid
                 AND s.balance IS NOT NULL AND s.fetched_at >= l.listed_at AND s.fetched_at <= b.at
               ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1
           ) g ON true
           WHERE a.tenant_id = $1 AND a.accountid = $2
           GROUP BY b.at
           ORDER BY b.at"#,
        tenant_id,
        owner,
        ends
    )
    .fetch_all(db)
    .await
}

/// One owner's totals at each of `ends`, per currency (or only `currency`).
pub async fn owner_totals(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &str,
    ends: &[DateTime<Utc>],
    currency: Option<&str>,
) -> Result<Vec<CurrencyAt>, sqlx::Error> {
    sqlx::query_as!(
        CurrencyAt,
        r#"SELECT b.at AS "at!", m.currency AS "currency!",
                  sum(m.available)::bigint AS "available!", sum(m.pending)::bigint AS "pending!",
                  sum(m.connect_reserved)::bigint AS "connect_reserved!",
                  sum(m.instant_available)::bigint AS "instant_available!"
           FROM stripe_accounts a
           JOIN stripe_account_listings l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
           JOIN unnest($3::timestamptz[]) AS b(at)
             ON l.listed_at <= b.at AND (l.removed_at IS NULL OR b.at < l.removed_at)
           CROSS JOIN LATERAL (
               SELECT s.balance FROM balance_snapshots s
               WHERE s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid
                 AND s.balance IS NOT NULL AND s.fetched_at >= l.listed_at AND s.fetched_at <= b.at
               ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1
           ) g
           CROSS JOIN LATERAL balance_amounts(g.balance) m
           WHERE a.tenant_id = $1 AND a.accountid = $2 AND ($4::text IS NULL OR m.currency = $4)
           GROUP BY b.at, m.currency
           ORDER BY b.at, m.currency"#,
        tenant_id,
        owner,
        ends,
        currency
    )
    .fetch_all(db)
    .await
}
