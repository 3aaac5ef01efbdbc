//! Tenants: one Stripe credential each, with its sealed key.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{PgExecutor, Postgres};

use crate::domain::StripeAccountId;
use crate::freshness::FreshnessMode;
use crate::stripe::CredentialKind;

/// A tenant row. The key stays sealed here; `TenantSecrets` opens it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: i64,
    pub slug: String,
    /// Parsed once, when the row is read (the column's CHECK allows only these).
    pub credential_kind: CredentialKind,
    pub key_ciphertext: Vec<u8>,
    pub key_last4: String,
    pub api_version: String,
    pub api_base: Option<String>,
    pub rate_limit: Option<i32>,
    pub platform_ids: Vec<StripeAccountId>,
    pub org_account_ids: Vec<StripeAccountId>,
    pub webhook_secret_ciphertext: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    /// Goes up with every change; a cached Stripe client built from an older row is rebuilt.
    pub version: i64,
    /// Set by `tally tenant remove`: tokens refused, refresher and sync skip it.
    pub disabled_at: Option<DateTime<Utc>>,
    /// How its balances are kept current (`poll` or `events`).
    pub freshness: FreshnessMode,
    /// The zone its days close in (an IANA name, `UTC` by default).
    pub close_timezone: String,
}

/// Stored as its name (`platform`, `organization`) in a TEXT column.
impl sqlx::Type<Postgres> for CredentialKind {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for CredentialKind {
    fn decode(value: PgValueRef<'r>) -> Result<CredentialKind, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        Ok(name.parse()?)
    }
}

/// Stored as its name (`poll`, `events`) in a TEXT column.
impl sqlx::Type<Postgres> for FreshnessMode {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for FreshnessMode {
    fn decode(value: PgValueRef<'r>) -> Result<FreshnessMode, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        Ok(name.parse()?)
    }
}

pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub credential_kind: &'a str,
    pub key_ciphertext: &'a [u8],
    pub key_last4: &'a str,
    pub api_version: &'a str,
    pub api_base: Option<&'a str>,
    pub rate_limit: Option<i32>,
    pub platform_ids: &'a [StripeAccountId],
    pub org_account_ids: &'a [StripeAccountId],
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
           RETURNING id, slug, credential_kind AS "credential_kind: CredentialKind", key_ciphertext, key_last4, api_version, api_base,
                     rate_limit, platform_ids AS "platform_ids: Vec<StripeAccountId>",
                     org_account_ids AS "org_account_ids: Vec<StripeAccountId>", webhook_secret_ciphertext,
                     created_at, version, disabled_at, freshness AS "freshness: FreshnessMode", close_timezone"#,
        tenant.slug,
        tenant.credential_kind,
        tenant.key_ciphertext,
        tenant.key_last4,
        tenant.api_version,
        tenant.api_base,
        tenant.rate_limit,
        tenant.platform_ids as &[StripeAccountId],
        tenant.org_account_ids as &[StripeAccountId],
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
        r#"SELECT id, slug, credential_kind AS "credential_kind: CredentialKind", key_ciphertext, key_last4, api_version, api_base,
                  rate_limit, platform_ids AS "platform_ids: Vec<StripeAccountId>",
                     org_account_ids AS "org_account_ids: Vec<StripeAccountId>", webhook_secret_ciphertext, created_at,
                  version, disabled_at, freshness AS "freshness: FreshnessMode", close_timezone
           FROM tenants WHERE slug = $1"#,
        slug
    )
    .fetch_optional(db)
    .await
}

pub async fn find_by_id(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"SELECT id, slug, credential_kind AS "credential_kind: CredentialKind", key_ciphertext, key_last4, api_version, api_base,
                  rate_limit, platform_ids AS "platform_ids: Vec<StripeAccountId>",
                     org_account_ids AS "org_account_ids: Vec<StripeAccountId>", webhook_secret_ciphertext, created_at,
                  version, disabled_at, freshness AS "freshness: FreshnessMode", close_timezone
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
    pub platform_ids: Vec<StripeAccountId>,
    pub org_account_ids: Vec<StripeAccountId>,
    pub has_webhook_secret: bool,
    /// Endpoints `tally tenant webhooks` registered.
    pub webhooks: i64,
    pub freshness: FreshnessMode,
    pub close_timezone: String,
    pub accounts: i64,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<TenantSummary>, sqlx::Error> {
    sqlx::query_as!(
        TenantSummary,
        r#"SELECT t.slug, t.credential_kind, t.key_last4, t.api_version, t.api_base, t.rate_limit,
                  t.platform_ids AS "platform_ids: Vec<StripeAccountId>",
                  t.org_account_ids AS "org_account_ids: Vec<StripeAccountId>",
                  t.webhook_secret_ciphertext IS NOT NULL AS "has_webhook_secret!",
                  (SELECT count(*) FROM webhook_endpoints w WHERE w.tenant_id = t.id) AS "webhooks!",
                  t.freshness AS "freshness: FreshnessMode", t.close_timezone,
                  COALESCE(c.listed, 0) AS "accounts!", t.created_at, t.disabled_at
           FROM tenants t LEFT JOIN tenant_account_counts c ON c.tenant_id = t.id
           ORDER BY t.slug"#
    )
    .fetch_all(db)
    .await
}

/// Every enabled tenant's id (the refresher works each; a removed one is skipped).
pub async fn ids(db: impl PgExecutor<'_>) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar!("SELECT id FROM tenants WHERE disabled_at IS NULL ORDER BY id")
        .fetch_all(db)
        .await
}

/// What `tally tenant update` changes; `None` keeps the stored value.
#[derive(Default)]
pub struct TenantChanges<'a> {
    pub api_version: Option<&'a str>,
    pub api_base: Option<&'a str>,
    pub rate_limit: Option<i32>,
    pub platform_ids: Option<&'a [StripeAccountId]>,
    pub org_account_ids: Option<&'a [StripeAccountId]>,
    pub webhook_secret_ciphertext: Option<&'a [u8]>,
    pub freshness: Option<FreshnessMode>,
    pub close_timezone: Option<&'a str>,
}

/// Applies `changes` and bumps the version, so every process rebuilds its client.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: i64,
    changes: &TenantChanges<'_>,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"UPDATE tenants SET
               api_version = COALESCE($2, api_version),
               api_base = COALESCE($3, api_base),
               rate_limit = COALESCE($4, rate_limit),
               platform_ids = COALESCE($5, platform_ids),
               org_account_ids = COALESCE($6, org_account_ids),
               webhook_secret_ciphertext = COALESCE($7, webhook_secret_ciphertext),
               freshness = COALESCE($8, freshness),
               close_timezone = COALESCE($9, close_timezone),
               version = version + 1, updated_at = now()
           WHERE id = $1
           RETURNING id, slug, credential_kind AS "credential_kind: CredentialKind", key_ciphertext, key_last4, api_version, api_base,
                     rate_limit, platform_ids AS "platform_ids: Vec<StripeAccountId>",
                     org_account_ids AS "org_account_ids: Vec<StripeAccountId>", webhook_secret_ciphertext,
                     created_at, version, disabled_at, freshness AS "freshness: FreshnessMode", close_timezone"#,
        id,
        changes.api_version,
        changes.api_base,
        changes.rate_limit,
        changes.platform_ids as Option<&[StripeAccountId]>,
        changes.org_account_ids as Option<&[StripeAccountId]>,
        changes.webhook_secret_ciphertext,
        changes.freshness.map(FreshnessMode::as_str),
        changes.close_timezone,
    )
    .fetch_optional(db)
    .await
}

/// Replaces the sealed Stripe key (and its kind and last four); bumps the version.
pub async fn set_key(
    db: impl PgExecutor<'_>,
    id: i64,
    credential_kind: &str,
    key_ciphertext: &[u8],
    key_last4: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        Tenant,
        r#"UPDATE tenants SET credential_kind = $2, key_ciphertext = $3, key_last4 = $4,
                              version = version + 1, updated_at = now()
           WHERE id = $1
           RETURNING id, slug, credential_kind AS "credential_kind: CredentialKind", key_ciphertext, key_last4, api_version, api_base,
                     rate_limit, platform_ids AS "platform_ids: Vec<StripeAccountId>",
                     org_account_ids AS "org_account_ids: Vec<StripeAccountId>", webhook_secret_ciphertext,
                     created_at, version, disabled_at, freshness AS "freshness: FreshnessMode", close_timezone"#,
        id,
        credential_kind,
        key_ciphertext,
        key_last4,
    )
    .fetch_optional(db)
    .await
}

/// Disables the tenant (removing twice keeps the first time). True if it was enabled.
pub async fn disable(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query!(
        r#"UPDATE tenants SET disabled_at = now(), version = version + 1, updated_at = now()
           WHERE id = $1 AND disabled_at IS NULL"#,
        id
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// True when the tenant exists and is not removed, holding a share lock on its row
/// until the transaction ends: a removal waits for the caller's work to be recorded
/// (and then ends it), and work recorded after a removal sees the removal. Work is
/// only ever started under this check (`sync_runs::claim`; `refreshes::start_or_join`
/// makes the same check in its statement).
pub async fn lock_if_enabled(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        r#"SELECT disabled_at IS NULL AS "enabled!" FROM tenants WHERE id = $1 FOR SHARE"#,
        id
    )
    .fetch_optional(db)
    .await?
    .unwrap_or(false))
}

/// Deletes the tenant and, by cascade, everything it owns (accounts, snapshots,
/// tokens, syncs, refreshes, budgets). The audit log keeps its slug as text.
pub async fn purge(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!("DELETE FROM tenants WHERE id = $1", id)
        .execute(db)
        .await?
        .rows_affected();
    Ok(deleted > 0)
}

/// A tenant's sealed secrets, for `tally rekey`.
pub struct SealedSecrets {
    pub id: i64,
    pub slug: String,
    pub key_ciphertext: Vec<u8>,
    pub webhook_secret_ciphertext: Option<Vec<u8>>,
}

/// Every tenant's sealed secrets, locked until the transaction ends.
pub async fn sealed_for_rekey(db: impl PgExecutor<'_>) -> Result<Vec<SealedSecrets>, sqlx::Error> {
    sqlx::query_as!(
        SealedSecrets,
        r#"SELECT id, slug, key_ciphertext, webhook_secret_ciphertext
           FROM tenants ORDER BY id FOR UPDATE"#
    )
    .fetch_all(db)
    .await
}

/// Stores re-sealed secrets (same plaintext, so the version stays: no client rebuilds).
pub async fn reseal(
    db: impl PgExecutor<'_>,
    id: i64,
    key_ciphertext: &[u8],
    webhook_secret_ciphertext: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE tenants SET key_ciphertext = $2, webhook_secret_ciphertext = $3 WHERE id = $1"#,
        id,
        key_ciphertext,
        webhook_secret_ciphertext,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// How many accounts and tokens the tenant owns (what a purge deletes).
pub async fn owned_counts(db: impl PgExecutor<'_>, id: i64) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM stripe_accounts WHERE tenant_id = $1) AS "accounts!",
                  (SELECT count(*) FROM api_tokens WHERE tenant_id = $1) AS "tokens!""#,
        id
    )
    .fetch_one(db)
    .await?;
    Ok((row.accounts, row.tokens))
}
