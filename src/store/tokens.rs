//! API tokens: only their hashes are stored, with a name, the first characters (to
//! recognise one in a list), an expiry, revocation, and the last use.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Who a presented token belongs to, and whether it may still be used.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub id: i64,
    pub role: String,
    pub tenant_id: Option<i64>,
    pub tenant_slug: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Set when the token's tenant was removed (`tally tenant remove`).
    pub tenant_disabled_at: Option<DateTime<Utc>>,
}

pub struct NewToken<'a> {
    pub token_hash: &'a [u8],
    pub prefix: &'a str,
    pub role: &'a str,
    pub tenant_id: Option<i64>,
    pub name: Option<&'a str>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(db: impl PgExecutor<'_>, token: &NewToken<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"INSERT INTO api_tokens (token_hash, prefix, role, tenant_id, name, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"#,
        token.token_hash,
        token.prefix,
        token.role,
        token.tenant_id,
        token.name,
        token.expires_at
    )
    .fetch_one(db)
    .await
}

pub async fn find_by_hash(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<TokenGrant>, sqlx::Error> {
    sqlx::query_as!(
        TokenGrant,
        r#"SELECT k.id, k.role, k.tenant_id, t.slug AS "tenant_slug?", k.expires_at, k.revoked_at,
                  t.disabled_at AS "tenant_disabled_at?"
           FROM api_tokens k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE k.token_hash = $1"#,
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: i64,
    pub name: Option<String>,
    pub role: String,
    pub tenant_slug: Option<String>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Tokens in the order they were made (by id), after `after_id`, at most `limit`.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Option<i64>,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<TokenRecord>, sqlx::Error> {
    sqlx::query_as!(
        TokenRecord,
        r#"SELECT k.id, k.name, k.role, t.slug AS "tenant_slug?", k.prefix, k.created_at,
                  k.last_used_at, k.expires_at, k.revoked_at
           FROM api_tokens k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE ($1::bigint IS NULL OR k.tenant_id = $1)
             AND ($2::bigint IS NULL OR k.id > $2)
           ORDER BY k.id
           LIMIT $3"#,
        tenant_id,
        after_id,
        limit
    )
    .fetch_all(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<TokenRecord>, sqlx::Error> {
    sqlx::query_as!(
        TokenRecord,
        r#"SELECT k.id, k.name, k.role, t.slug AS "tenant_slug?", k.prefix, k.created_at,
                  k.last_used_at, k.expires_at, k.revoked_at
           FROM api_tokens k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE k.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Revokes a token (kept, marked). `None` when there is no such token; revoking
/// twice keeps the first time.
pub async fn revoke(db: impl PgExecutor<'_>, id: i64) -> Result<Option<TokenRecord>, sqlx::Error> {
    sqlx::query_as!(
        TokenRecord,
        r#"WITH revoked AS (
               UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
               RETURNING id, name, role, tenant_id, prefix, created_at, last_used_at,
                         expires_at, revoked_at
           )
           SELECT r.id, r.name, r.role, t.slug AS "tenant_slug?", r.prefix, r.created_at,
                  r.last_used_at, r.expires_at, r.revoked_at
           FROM revoked r LEFT JOIN tenants t ON t.id = r.tenant_id"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// Records last uses in one statement (a batch collected in memory).
pub async fn record_uses(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    at: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE api_tokens k SET last_used_at = GREATEST(k.last_used_at, u.at)
           FROM UNNEST($1::bigint[], $2::timestamptz[]) AS u(id, at)
           WHERE k.id = u.id"#,
        ids,
        at
    )
    .execute(db)
    .await?;
    Ok(())
}
