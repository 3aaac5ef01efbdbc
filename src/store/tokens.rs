//! API tokens: only their hashes are stored.

use sqlx::PgExecutor;

/// Who a presented token belongs to.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub id: i64,
    pub role: String,
    pub tenant_id: Option<i64>,
    pub tenant_slug: Option<String>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    role: &str,
    tenant_id: Option<i64>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO api_tokens (token_hash, role, tenant_id) VALUES ($1, $2, $3) RETURNING id",
        token_hash,
        role,
        tenant_id
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
        r#"SELECT k.id, k.role, k.tenant_id, t.slug AS "tenant_slug?"
           FROM api_tokens k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE k.token_hash = $1"#,
        token_hash
    )
    .fetch_optional(db)
    .await
}
