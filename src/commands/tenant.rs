//! `tally tenant add` and `tally tenant list`.

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Settings;
use crate::crypto::MasterKey;
use crate::domain::{StripeAccountId, TenantSlug};
use crate::store;
use crate::stripe::{key_last4, CredentialKind};

/// Everything `tenant add` takes; the key arrives here already read from the
/// environment variable the operator named (never from argv).
pub struct TenantSpec {
    pub slug: String,
    pub key: SecretString,
    pub platforms: Vec<String>,
    pub accounts: Vec<String>,
    pub api_base: Option<String>,
    pub api_version: Option<String>,
    pub rate_limit: Option<u32>,
    pub webhook_secret: Option<SecretString>,
}

impl TenantSpec {
    /// A tenant with nothing but its slug and key; the rest from config defaults.
    pub fn new(slug: &str, key: SecretString) -> TenantSpec {
        TenantSpec {
            slug: slug.to_owned(),
            key,
            platforms: vec![],
            accounts: vec![],
            api_base: None,
            api_version: None,
            rate_limit: None,
            webhook_secret: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("invalid tenant slug '{0}': use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    InvalidSlug(String),
    #[error(transparent)]
    UnknownKeyPrefix(#[from] crate::stripe::UnknownKeyPrefix),
    #[error("--platform and --account list an organization key's platforms and org accounts; a platform key reaches its connected accounts directly, so drop them")]
    OrgOptionsWithPlatformKey,
    #[error("'{0}' is not a Stripe account id (acct_…)")]
    InvalidAccountId(String),
    #[error("--api-base '{0}' is not an absolute http(s) URL")]
    InvalidApiBase(String),
    #[error("--rate-limit must be at least 1 request per second")]
    InvalidRateLimit,
    #[error("tenant '{0}' already exists")]
    Exists(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What `tenant add` and `tenant list` show: never the key, only its last four.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub slug: String,
    pub kind: String,
    pub key_last4: String,
    pub api_version: String,
    pub api_base: Option<String>,
    pub rate_limit: Option<i32>,
    pub platforms: Vec<String>,
    pub org_accounts: Vec<String>,
    pub webhook_secret: bool,
    pub accounts: i64,
}

fn account_ids(ids: &[String]) -> Result<Vec<String>, TenantError> {
    ids.iter()
        .map(|id| {
            StripeAccountId::parse(id)
                .map(String::from)
                .ok_or_else(|| TenantError::InvalidAccountId(id.clone()))
        })
        .collect()
}

pub async fn add(
    pool: &PgPool,
    master: &MasterKey,
    settings: &Settings,
    spec: TenantSpec,
) -> Result<TenantView, TenantError> {
    let slug =
        TenantSlug::parse(&spec.slug).ok_or_else(|| TenantError::InvalidSlug(spec.slug.clone()))?;
    let key = spec.key.expose_secret().trim();
    let kind = CredentialKind::from_key(key)?;
    if kind == CredentialKind::Platform && !(spec.platforms.is_empty() && spec.accounts.is_empty())
    {
        return Err(TenantError::OrgOptionsWithPlatformKey);
    }
    let platform_ids = account_ids(&spec.platforms)?;
    let org_account_ids = account_ids(&spec.accounts)?;
    if let Some(base) = &spec.api_base {
        let valid = url::Url::parse(base).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
        if !valid {
            return Err(TenantError::InvalidApiBase(base.clone()));
        }
    }
    let rate_limit = match spec.rate_limit {
        Some(0) => return Err(TenantError::InvalidRateLimit),
        Some(rate) => Some(i32::try_from(rate).map_err(|_| TenantError::InvalidRateLimit)?),
        None => None,
    };
    let api_version = spec
        .api_version
        .clone()
        .unwrap_or_else(|| settings.stripe.api_version.clone());
    let key_ciphertext = master.seal(slug.as_str(), key);
    let webhook_ciphertext = spec
        .webhook_secret
        .as_ref()
        .map(|secret| master.seal(slug.as_str(), secret.expose_secret()));
    let last4 = key_last4(key);
    let new = store::tenants::NewTenant {
        slug: slug.as_str(),
        credential_kind: kind.as_str(),
        key_ciphertext: &key_ciphertext,
        key_last4: &last4,
        api_version: &api_version,
        api_base: spec.api_base.as_deref(),
        rate_limit,
        platform_ids: &platform_ids,
        org_account_ids: &org_account_ids,
        webhook_secret_ciphertext: webhook_ciphertext.as_deref(),
    };
    let tenant = store::tenants::insert(pool, &new).await.map_err(|error| {
        if store::is_unique_violation(&error, store::tenants::SLUG_CONSTRAINT) {
            TenantError::Exists(slug.to_string())
        } else {
            TenantError::Database(error)
        }
    })?;
    Ok(TenantView {
        slug: tenant.slug,
        kind: tenant.credential_kind,
        key_last4: tenant.key_last4,
        api_version: tenant.api_version,
        api_base: tenant.api_base,
        rate_limit: tenant.rate_limit,
        platforms: tenant.platform_ids,
        org_accounts: tenant.org_account_ids,
        webhook_secret: tenant.webhook_secret_ciphertext.is_some(),
        accounts: 0,
    })
}

pub async fn list(pool: &PgPool) -> Result<Vec<TenantView>, sqlx::Error> {
    Ok(store::tenants::list(pool)
        .await?
        .into_iter()
        .map(|t| TenantView {
            slug: t.slug,
            kind: t.credential_kind,
            key_last4: t.key_last4,
            api_version: t.api_version,
            api_base: t.api_base,
            rate_limit: t.rate_limit,
            platforms: t.platform_ids,
            org_accounts: t.org_account_ids,
            webhook_secret: t.has_webhook_secret,
            accounts: t.accounts,
        })
        .collect())
}

/// `tenant list` as a table for people.
pub fn render_table(tenants: &[TenantView]) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:<9} {:<20} {:>9} {}\n",
        "SLUG", "KIND", "KEY", "API VERSION", "ACCOUNTS", "PLATFORMS"
    );
    for t in tenants {
        out.push_str(&format!(
            "{:<20} {:<13} {:<9} {:<20} {:>9} {}\n",
            t.slug,
            t.kind,
            format!("…{}", t.key_last4),
            t.api_version,
            t.accounts,
            if t.platforms.is_empty() {
                "-".to_owned()
            } else {
                t.platforms.join(",")
            }
        ));
    }
    out
}
