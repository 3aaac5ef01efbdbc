//! Tenants: one Stripe credential each, with its sealed key.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A tenant row. The key stays sealed here; `TenantSecrets` opens it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: i64,
    pub slug: String,
    pub credential_kind: String,
    pub key_ciphertext: Vec<u8>,
    pub key_last4: String,
    pub api_version: String,
    pub api_base: Option<String>,
    pub rate_limit: Option<i32>,
    pub platform_ids: Vec<String>,
    pub org_account_ids: Vec<String>,
    pub webhook_secret_ciphertext: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
}

pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub credential_kind: &'a str,
    pub key_ciphertext: &'a [u8],
    pub key_last4: &'a str,
    pub api_version: &'a str,
    pub api_base: Option<&'a str>,
    pub rate_limit: Option<i32>,
    pub platform_ids: &'a [String],
    pub org_account_ids: &'a [String],
    pub webhook_secret_ciphertext: Option<&'a [u8]>,
}

pub const SLUG_CONSTRAINT: &str = "tenants_slug_key";

pub async fn insert(
    db: impl PgExecutor<'_>,
    tenant: &NewTenant<'_>,
) -> Result<Tenant, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"INSERT INTO tenants (slug, credential_kind, key_ciphertext, key_last4, api_version,
                               api_base, rate_limit, platform_ids, org_account_ids,
                               webhook_secret_ciphertext)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           RETURNING id, slug, credential_kind, key_ciphertext, key_last4, api_version, api_base,
                     rate_limit, platform_ids, org_account_ids, webhook_secret_ciphertext,
                     created_at"#,
        tenant.slug,
        tenant.credential_kind,
        tenant.key_ciphertext,
        tenant.key_last4,
        tenant.api_version,
        tenant.api_base,
        tenant.rate_limit,
        tenant.platform_ids,
        tenant.org_account_ids,
        tenant.webhook_secret_ciphertext,
    )
    .fetch_one(db)
    .await
}

pub async fn find_by_slug(
    db: impl PgExecutor<'_>,
    slug: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"SELECT id, slug, credential_kind, key_ciphertext, key_last4, api_version, api_base,
                  rate_limit, platform_ids, org_account_ids, webhook_secret_ciphertext, created_at
           FROM tenants WHERE slug = $1"#,
        slug
    )
    .fetch_optional(db)
    .await
}

pub async fn find_by_id(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"SELECT id, slug, credential_kind, key_ciphertext, key_last4, api_version, api_base,
                  rate_limit, platform_ids, org_account_ids, webhook_secret_ciphertext, created_at
           FROM tenants WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// A tenant with its number of listed accounts, for `tally tenant list`.
#[derive(Debug, Clone)]
pub struct TenantSummary {
    pub slug: String,
    pub credential_kind: String,
    pub key_last4: String,
    pub api_version: String,
    pub api_base: Option<String>,
    pub rate_limit: Option<i32>,
    pub platform_ids: Vec<String>,
    pub org_account_ids: Vec<String>,
    pub has_webhook_secret: bool,
    pub accounts: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<TenantSummary>, sqlx::Error> {
    sqlx::query_as!(
        TenantSummary,
        r#"SELECT t.slug, t.credential_kind, t.key_last4, t.api_version, t.api_base, t.rate_limit,
                  t.platform_ids, t.org_account_ids,
                  t.webhook_secret_ciphertext IS NOT NULL AS "has_webhook_secret!",
                  COALESCE(c.listed, 0) AS "accounts!", t.created_at
           FROM tenants t LEFT JOIN tenant_account_counts c ON c.tenant_id = t.id
           ORDER BY t.slug"#
    )
    .fetch_all(db)
    .await
}

/// Every tenant's id (the refresher works each).
pub async fn ids(db: impl PgExecutor<'_>) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT id FROM tenants ORDER BY id")
        .fetch_all(db)
        .await
}
