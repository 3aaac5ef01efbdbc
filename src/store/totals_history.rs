//! Totals over time (issue 10): reading the per-hour history the triggers of the
//! `balance_totals_history` migration keep in the same transaction as each snapshot,
//! listing and removal (see that migration for what a moment holds).
//!
//! The whole tenant is read from the kept rows with carry-forward (the latest row at
//! or before each bucket end): an index lookup per bucket, never a scan of snapshots.
//! One owner's totals are computed from that owner's snapshots.

use crate::domain::{Currency, OwnerId};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Listed accounts at one bucket end: with a balance, and without one yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountsAt {
    pub at: DateTime<Utc>,
    pub accounts: i64,
    pub missing: i64,
}

/// One currency's totals at one bucket end, with the exposure of the accounts whose
/// available balance is below zero then (`negative` as a positive amount, and how many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyAt {
    pub at: DateTime<Utc>,
    pub currency: String,
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
    pub negative: i64,
    pub negative_accounts: i64,
}

/// The whole tenant's kept row at or before one bucket end.
#[derive(Debug, Clone)]
pub struct TenantAt {
    pub at: DateTime<Utc>,
    pub accounts: i64,
    pub missing: i64,
    /// `{"usd": [available, pending, connect_reserved, instant_available, holders], …}`
    pub totals: serde_json::Value,
    /// `{"usd": [negative, accounts below zero], …}`, a currency with none absent;
    /// `None` when the row was kept before the exposure was (or there is no row).
    pub exposure: Option<serde_json::Value>,
}

/// The whole tenant's totals and counts at each of `ends` (in the order given): one
/// index lookup per bucket end.
pub async fn tenant_series(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    ends: &[DateTime<Utc>],
) -> Result<Vec<TenantAt>, sqlx::Error> {
    sqlx::query_as!(
        TenantAt,
        r#"SELECT b.at AS "at!", COALESCE(h.accounts, 0) AS "accounts!",
                  COALESCE(h.missing, 0) AS "missing!", COALESCE(h.totals, '{}') AS "totals!",
                  h.exposure AS "exposure?"
           FROM unnest($2::timestamptz[]) WITH ORDINALITY AS b(at, n)
           LEFT JOIN LATERAL (
               SELECT t.accounts, t.missing, t.totals, t.exposure FROM balance_totals_history t
               WHERE t.tenant_id = $1 AND t.at <= b.at ORDER BY t.at DESC LIMIT 1
           ) h ON true
           ORDER BY b.n"#,
        tenant_id,
        ends
    )
    .fetch_all(db)
    .await
}

/// True when the tenant stores any account (listed or removed) of that owner.
pub async fn owner_known(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &OwnerId,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM stripe_accounts
                          WHERE tenant_id = $1 AND accountid = $2) AS "known!""#,
        tenant_id,
        owner.as_str()
    )
    .fetch_one(db)
    .await
}

/// One owner's counts at each of `ends` (only the ends at which some of the owner's
/// accounts were listed), from the owner's listing periods and snapshots. Same
/// definition as the kept history (see the migration).
pub async fn owner_counts(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &OwnerId,
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
                 AND s.balance IS NOT NULL AND s.fetched_at >= l.balances_from
                 AND s.fetched_at <= b.at
               ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1
           ) g ON true
           WHERE a.tenant_id = $1 AND a.accountid = $2
           GROUP BY b.at
           ORDER BY b.at"#,
        tenant_id,
        owner.as_str(),
        ends
    )
    .fetch_all(db)
    .await
}

/// One owner's totals at each of `ends`, per currency (or only `currency`).
pub async fn owner_totals(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: &OwnerId,
    ends: &[DateTime<Utc>],
    currency: Option<&Currency>,
) -> Result<Vec<CurrencyAt>, sqlx::Error> {
    sqlx::query_as!(
        CurrencyAt,
        r#"SELECT b.at AS "at!", m.currency AS "currency!",
                  sum(m.available)::bigint AS "available!", sum(m.pending)::bigint AS "pending!",
                  sum(m.connect_reserved)::bigint AS "connect_reserved!",
                  sum(m.instant_available)::bigint AS "instant_available!",
                  COALESCE(sum(-m.available) FILTER (WHERE m.available < 0), 0)::bigint
                      AS "negative!",
                  count(*) FILTER (WHERE m.available < 0) AS "negative_accounts!"
           FROM stripe_accounts a
           JOIN stripe_account_listings l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
           JOIN unnest($3::timestamptz[]) AS b(at)
             ON l.listed_at <= b.at AND (l.removed_at IS NULL OR b.at < l.removed_at)
           CROSS JOIN LATERAL (
               SELECT s.balance FROM balance_snapshots s
               WHERE s.tenant_id = l.tenant_id AND s.stripeid = l.stripeid
                 AND s.balance IS NOT NULL AND s.fetched_at >= l.balances_from
                 AND s.fetched_at <= b.at
               ORDER BY s.fetched_at DESC, s.id DESC LIMIT 1
           ) g
           CROSS JOIN LATERAL balance_amounts(g.balance) m
           WHERE a.tenant_id = $1 AND a.accountid = $2 AND ($4::text IS NULL OR m.currency = $4)
           GROUP BY b.at, m.currency
           ORDER BY b.at, m.currency"#,
        tenant_id,
        owner.as_str(),
        ends,
        currency.map(Currency::as_str)
    )
    .fetch_all(db)
    .await
}
