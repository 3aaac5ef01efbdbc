//! What the admin pages (`/admin`) read and write that no API endpoint does: their
//! sessions, each tenant's latest sync run, and the balances of one page of accounts.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

/// A live session: its token's grant, read fresh on every page.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    pub token_id: i64,
    pub role: String,
    pub tenant_id: Option<i64>,
    pub tenant_slug: Option<String>,
}

pub async fn insert_session(
    db: impl PgExecutor<'_>,
    session_hash: &[u8],
    token_id: i64,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO admin_sessions (session_hash, token_id, expires_at) VALUES ($1, $2, $3)"#,
        session_hash,
        token_id,
        expires_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The session's grant, if the session has not expired and its token is neither
/// revoked nor expired: one indexed lookup, no cache, so a revocation ends every
/// session of the token at once, on every replica.
pub async fn find_session(
    db: impl PgExecutor<'_>,
    session_hash: &[u8],
) -> Result<Option<SessionGrant>, sqlx::Error> {
    sqlx::query_as!(
        SessionGrant,
        r#"SELECT k.id AS token_id, k.role, k.tenant_id, t.slug AS "tenant_slug?"
           FROM admin_sessions s
           JOIN api_tokens k ON k.id = s.token_id
           LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE s.session_hash = $1 AND s.expires_at > now()
             AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
             -- A removed tenant's tokens stop working, and so do their sessions.
             AND t.disabled_at IS NULL"#,
        session_hash
    )
    .fetch_optional(db)
    .await
}

pub async fn delete_session(
    db: impl PgExecutor<'_>,
    session_hash: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM admin_sessions WHERE session_hash = $1",
        session_hash
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes sessions that have expired (they already grant nothing).
pub async fn delete_expired_sessions(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM admin_sessions WHERE expires_at <= now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// The tenant's most recently started sync run.
#[derive(Debug, Clone)]
pub struct LastSync {
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub accounts_seen: i64,
    pub error: Option<String>,
}

pub async fn last_sync(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Option<LastSync>, sqlx::Error> {
    sqlx::query_as!(
        LastSync,
        r#"SELECT status, started_at, finished_at, accounts_seen, error FROM sync_runs
           WHERE tenant_id = $1 ORDER BY started_at DESC LIMIT 1"#,
        tenant_id
    )
    .fetch_optional(db)
    .await
}

/// One account's latest try and the last good amounts it adds to the totals.
#[derive(Debug, Clone)]
pub struct AccountBalanceRow {
    pub stripeid: String,
    pub ok: bool,
    pub fetched_at: DateTime<Utc>,
    /// `[{currency, available, pending, connect_reserved, instant_available}]`.
    pub amounts: Value,
    pub good_at: Option<DateTime<Utc>>,
    /// When the first event about it since that fetch arrived (it waits for a fetch).
    pub changed_at: Option<DateTime<Utc>>,
}

/// The latest balances of the given accounts (a page of the listing): one index
/// lookup per account.
pub async fn balances_of(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeids: &[String],
) -> Result<Vec<AccountBalanceRow>, sqlx::Error> {
    sqlx::query_as!(
        AccountBalanceRow,
        r#"SELECT l.stripeid, l.ok, l.fetched_at, l.amounts, l.good_at,
                  (SELECT c.first_event_at FROM changed_accounts c
                   WHERE c.tenant_id = l.tenant_id AND c.stripeid = l.stripeid) AS "changed_at?"
           FROM latest_balances l
           WHERE l.tenant_id = $1 AND l.stripeid = ANY($2)"#,
        tenant_id,
        stripeids
    )
    .fetch_all(db)
    .await
}

/// A listed account whose available balance in one currency is below zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BelowZero {
    pub stripeid: String,
    pub accountid: Option<String>,
    pub currency: String,
    /// The account's net available amount there (negative), in minor units.
    pub available: i64,
    /// When that balance was fetched (its last good one).
    pub good_at: Option<DateTime<Utc>>,
}

/// The tenant's accounts below zero, one row per account and currency, by currency
/// and most owed first, at most `limit`. Read through the partial index of such
/// accounts, so it costs what they are, not the tenant.
pub async fn below_zero(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    limit: i64,
) -> Result<Vec<BelowZero>, sqlx::Error> {
    sqlx::query_as!(
        BelowZero,
        r#"SELECT l.stripeid, a.accountid, e.currency AS "currency!", e.available AS "available!",
                  l.good_at
           FROM latest_balances l
           JOIN stripe_accounts a ON a.tenant_id = l.tenant_id AND a.stripeid = l.stripeid
           CROSS JOIN LATERAL jsonb_to_recordset(l.amounts) AS e(currency text, available bigint)
           WHERE l.tenant_id = $1 AND a.removed_at IS NULL
             AND jsonb_path_exists(l.amounts, '$[*] ? (@.available < 0)')
             AND e.available < 0
           ORDER BY e.currency, e.available, l.stripeid
           LIMIT $2"#,
        tenant_id,
        limit
    )
    .fetch_all(db)
    .await
}
