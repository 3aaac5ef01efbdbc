//! `tally tenant add | list | set-key | update | remove`: tenants and their sealed
//! secrets. Every change is recorded in the audit log, in its own transaction.

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::audit::{self, Actor};
use crate::config::Settings;
use crate::crypto::MasterKey;
use crate::domain::{StripeAccountId, TenantSlug};
use crate::freshness::FreshnessMode;
use crate::store;
use crate::store::tenants::Tenant;
use crate::stripe::{key_last4, Credential, CredentialKind, StripeError};
use crate::tenants::StripeTenants;

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
    #[error("no tenant named '{0}' (see `tally tenant list`)")]
    UnknownTenant(String),
    #[error("tenant '{0}' was removed (tally tenant remove); its data is kept, but it can no longer be changed")]
    Removed(String),
    #[error("tenant '{slug}' has {stored} key; set-key keeps the kind, so give it {stored} key (a new tenant takes the other kind)")]
    KindChange { slug: String, stored: &'static str },
    #[error("nothing to update: give at least one of --platform, --account, --api-base, --api-version, --rate-limit, --webhook-secret-env, --freshness, --close-timezone")]
    NothingToUpdate,
    #[error("--close-timezone '{0}' is not a time zone name (an IANA name such as Europe/Berlin, or UTC)")]
    UnknownTimezone(String),
    #[error("tenant '{0}' receives no Connect events yet, so events cannot vouch for its balances: register its endpoint first (tally tenant webhooks {0} --url https://…/webhooks/stripe/{0}, or --webhook-secret-env for one made by hand)")]
    EventsNeedAnEndpoint(String),
    #[error("--purge deletes the tenant and everything it owns (accounts, balances, tokens, syncs) for good; add --yes to confirm")]
    PurgeNeedsYes,
    /// Stripe refused the key: its own message and request id. Nothing was stored.
    #[error("Stripe refused the key (HTTP {status}): {message} [request {request_id}]; nothing was stored")]
    KeyRefused {
        status: u16,
        message: String,
        request_id: String,
    },
    /// A restricted key that cannot read balances. Nothing was stored.
    #[error("the restricted key cannot read balances: {message} [request {request_id}]. Hint: in the Stripe Dashboard (Developers → API keys), give this restricted key the '{permission}' permission (Balance: Read) — and 'rak_accounts_read' (Connect: Read) for sync — or use a key that has them; nothing was stored")]
    KeyLacksPermission {
        permission: String,
        message: String,
        request_id: String,
    },
    #[error("could not check the key with Stripe: {0}; check --api-base and the network, or pass --no-verify to store it unchecked (offline set-up)")]
    KeyUnverifiable(String),
    #[error("an organization key is checked by reading the balance of an account in the organization: give --platform or --account, or pass --no-verify")]
    OrgKeyNeedsAccount,
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
    pub platforms: Vec<StripeAccountId>,
    pub org_accounts: Vec<StripeAccountId>,
    pub webhook_secret: bool,
    /// Connect webhook endpoints registered with `tally tenant webhooks`.
    pub webhooks: i64,
    /// How its balances are kept current: `poll` or `events`.
    pub freshness: &'static str,
    pub accounts: i64,
    /// `active`, or `removed` after `tally tenant remove`.
    pub status: &'static str,
}

impl TenantView {
    fn of(tenant: Tenant, accounts: i64) -> TenantView {
        TenantView {
            status: if tenant.disabled_at.is_some() {
                "removed"
            } else {
                "active"
            },
            slug: tenant.slug,
            kind: tenant.credential_kind.as_str().to_owned(),
            key_last4: tenant.key_last4,
            api_version: tenant.api_version,
            api_base: tenant.api_base,
            rate_limit: tenant.rate_limit,
            platforms: tenant.platform_ids,
            org_accounts: tenant.org_account_ids,
            webhook_secret: tenant.webhook_secret_ciphertext.is_some(),
            webhooks: 0,
            freshness: tenant.freshness.as_str(),
            accounts,
        }
    }
}

fn account_ids(ids: &[String]) -> Result<Vec<StripeAccountId>, TenantError> {
    ids.iter()
        .map(|id| {
            StripeAccountId::parse(id).ok_or_else(|| TenantError::InvalidAccountId(id.clone()))
        })
        .collect()
}

fn api_base(base: Option<&str>) -> Result<(), TenantError> {
    if let Some(base) = base {
        let valid = url::Url::parse(base).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
        if !valid {
            return Err(TenantError::InvalidApiBase(base.to_owned()));
        }
    }
    Ok(())
}

fn rate_limit(rate: Option<u32>) -> Result<Option<i32>, TenantError> {
    match rate {
        Some(0) => Err(TenantError::InvalidRateLimit),
        Some(rate) => Ok(Some(
            i32::try_from(rate).map_err(|_| TenantError::InvalidRateLimit)?,
        )),
        None => Ok(None),
    }
}

/// Adds a tenant without asking Stripe (`--no-verify`, the demo, tests); recorded in
/// the audit log as done by the CLI.
pub async fn add(
    pool: &PgPool,
    master: &MasterKey,
    settings: &Settings,
    spec: TenantSpec,
) -> Result<TenantView, TenantError> {
    add_as(pool, master, settings, spec, None, &Actor::cli()).await
}

/// `tally tenant add`: checks the key with one Stripe request first (unless `stripe`
/// is `None`: `--no-verify`), then stores it sealed and records who added it.
pub async fn add_as(
    pool: &PgPool,
    master: &MasterKey,
    settings: &Settings,
    spec: TenantSpec,
    verify_with: Option<&StripeTenants>,
    actor: &Actor,
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
    api_base(spec.api_base.as_deref())?;
    let rate_limit = rate_limit(spec.rate_limit)?;
    let api_version = spec
        .api_version
        .clone()
        .unwrap_or_else(|| settings.stripe.api_version.clone());
    if let Some(stripe) = verify_with {
        let probe = KeyProbe {
            api_base: spec
                .api_base
                .as_deref()
                .unwrap_or(&settings.stripe.api_base),
            api_version: &api_version,
            context: platform_ids.first().or(org_account_ids.first()),
        };
        verify_key(stripe, key, &probe).await?;
    }
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
    let mut tx = store::begin(pool).await?;
    let tenant = store::tenants::insert(&mut *tx, &new)
        .await
        .map_err(|error| {
            if store::is_unique_violation(&error, store::tenants::SLUG_CONSTRAINT) {
                TenantError::Exists(slug.to_string())
            } else {
                TenantError::Database(error)
            }
        })?;
    let details = json!({
        "kind": kind.as_str(),
        "keyLast4": last4,
        "verified": verify_with.is_some(),
        "apiVersion": api_version,
        "apiBase": spec.api_base,
        "rateLimit": rate_limit,
        "platforms": platform_ids,
        "accounts": org_account_ids,
        "webhookSecret": webhook_ciphertext.is_some(),
    });
    audit::record(&mut *tx, actor, "tenant.add", Some(slug.as_str()), details).await?;
    tx.commit().await?;
    Ok(TenantView::of(tenant, 0))
}

/// Where and how a key is checked.
pub struct KeyProbe<'a> {
    pub api_base: &'a str,
    pub api_version: &'a str,
    /// For an organization key: the account in the org whose balance is read.
    pub context: Option<&'a StripeAccountId>,
}

/// One `GET /v1/balance` with `key`: proves the key is live and may read balances.
/// Stripe's refusal comes back with its message and request id; a restricted key
/// without the permission, with a hint naming it.
pub async fn verify_key(
    stripe: &StripeTenants,
    key: &str,
    probe: &KeyProbe<'_>,
) -> Result<(), TenantError> {
    let base = url::Url::parse(probe.api_base)
        .map_err(|_| TenantError::InvalidApiBase(probe.api_base.to_owned()))?;
    let credential = Credential::new(
        SecretString::from(key.to_owned()),
        probe.api_version.to_owned(),
        base,
    )?;
    if credential.kind == CredentialKind::Organization && probe.context.is_none() {
        return Err(TenantError::OrgKeyNeedsAccount);
    }
    let client = stripe.unstored_client(credential);
    match client.retrieve_own_balance(probe.context).await {
        Ok(_) => Ok(()),
        Err(error) => Err(key_refusal(&error)),
    }
}

fn key_refusal(error: &StripeError) -> TenantError {
    let (Some(status), StripeError::Api { .. }) = (error.status(), error) else {
        return TenantError::KeyUnverifiable(error.to_string());
    };
    let message = error.message();
    let request_id = error.request_id().unwrap_or("none").to_owned();
    if status == 429 || status >= 500 {
        return TenantError::KeyUnverifiable(error.to_string());
    }
    match missing_permission(&message) {
        Some(permission) if status == 403 => TenantError::KeyLacksPermission {
            permission,
            message,
            request_id,
        },
        _ => TenantError::KeyRefused {
            status,
            message,
            request_id,
        },
    }
}

/// The permission Stripe names in "Having the 'rak_balance_read' permission would
/// allow this request to continue."
fn missing_permission(message: &str) -> Option<String> {
    let rest = &message[message.find("Having the '")? + "Having the '".len()..];
    let name = &rest[..rest.find('\'')?];
    name.starts_with("rak_").then(|| name.to_owned())
}

pub(crate) async fn enabled_tenant(pool: &PgPool, slug: &str) -> Result<Tenant, TenantError> {
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(slug.to_owned()))?;
    if tenant.disabled_at.is_some() {
        return Err(TenantError::Removed(tenant.slug));
    }
    Ok(tenant)
}

/// `tally tenant set-key`: checks the new key (unless `verify_with` is `None`), then
/// replaces the sealed key. Every running server switches to it within about a
/// second: each rereads the row and rebuilds its client when the version moved, while
/// requests already sent finish with the old key.
pub async fn set_key(
    pool: &PgPool,
    master: &MasterKey,
    settings: &Settings,
    slug: &str,
    key: &SecretString,
    verify_with: Option<&StripeTenants>,
    actor: &Actor,
) -> Result<TenantView, TenantError> {
    let tenant = enabled_tenant(pool, slug).await?;
    let key = key.expose_secret().trim();
    let kind = CredentialKind::from_key(key)?;
    if kind != tenant.credential_kind {
        let stored = if tenant.credential_kind == CredentialKind::Organization {
            "an organization"
        } else {
            "a platform"
        };
        return Err(TenantError::KindChange {
            slug: tenant.slug,
            stored,
        });
    }
    if let Some(stripe) = verify_with {
        let probe = KeyProbe {
            api_base: tenant
                .api_base
                .as_deref()
                .unwrap_or(&settings.stripe.api_base),
            api_version: &tenant.api_version,
            context: tenant
                .platform_ids
                .first()
                .or(tenant.org_account_ids.first()),
        };
        verify_key(stripe, key, &probe).await?;
    }
    let sealed = master.seal(&tenant.slug, key);
    let last4 = key_last4(key);
    let mut tx = store::begin(pool).await?;
    let updated = store::tenants::set_key(&mut *tx, tenant.id, kind.as_str(), &sealed, &last4)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(slug.to_owned()))?;
    let details = json!({
        "keyLast4": {"from": tenant.key_last4, "to": last4},
        "verified": verify_with.is_some(),
    });
    audit::record(
        &mut *tx,
        actor,
        "tenant.set-key",
        Some(&tenant.slug),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(TenantView::of(updated, 0))
}

/// What `tally tenant update` changes: `tenant add`'s flags, each optional;
/// `platforms` / `accounts` replace the stored lists.
#[derive(Default)]
pub struct TenantUpdate {
    pub platforms: Option<Vec<String>>,
    pub accounts: Option<Vec<String>>,
    pub api_base: Option<String>,
    pub api_version: Option<String>,
    pub rate_limit: Option<u32>,
    pub webhook_secret: Option<SecretString>,
    pub freshness: Option<FreshnessMode>,
    pub close_timezone: Option<String>,
}

/// `tally tenant update`: every running server uses the new settings within about a second.
pub async fn update(
    pool: &PgPool,
    master: &MasterKey,
    slug: &str,
    change: TenantUpdate,
    actor: &Actor,
) -> Result<TenantView, TenantError> {
    let tenant = enabled_tenant(pool, slug).await?;
    let lists_given = change.platforms.is_some() || change.accounts.is_some();
    if lists_given && tenant.credential_kind != CredentialKind::Organization {
        return Err(TenantError::OrgOptionsWithPlatformKey);
    }
    let platforms = change.platforms.as_deref().map(account_ids).transpose()?;
    let accounts = change.accounts.as_deref().map(account_ids).transpose()?;
    api_base(change.api_base.as_deref())?;
    let rate = rate_limit(change.rate_limit)?;
    let api_version = change
        .api_version
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let webhook = change
        .webhook_secret
        .as_ref()
        .map(|secret| master.seal(&tenant.slug, secret.expose_secret()));
    let mut changed = serde_json::Map::new();
    let mut note = |field: &str, value: Value| {
        changed.insert(field.to_owned(), value);
    };
    if let Some(p) = &platforms {
        note("platforms", json!(p));
    }
    if let Some(a) = &accounts {
        note("accounts", json!(a));
    }
    if let Some(base) = &change.api_base {
        note("apiBase", json!(base));
    }
    if let Some(version) = api_version {
        note("apiVersion", json!(version));
    }
    if let Some(rate) = rate {
        note("rateLimit", json!(rate));
    }
    if webhook.is_some() {
        // Which field, never the secret.
        note("webhookSecret", json!("replaced"));
    }
    if let Some(mode) = change.freshness {
        // Events vouch only if tally can receive them: a secret to verify them with.
        let can_receive = webhook.is_some()
            || tenant.webhook_secret_ciphertext.is_some()
            || store::webhook_endpoints::count(pool, tenant.id).await? > 0;
        if mode == FreshnessMode::Events && !can_receive {
            return Err(TenantError::EventsNeedAnEndpoint(tenant.slug.clone()));
        }
        note("freshness", json!(mode.as_str()));
    }
    if let Some(zone) = &change.close_timezone {
        if !store::closes::zone_exists(pool, zone).await? {
            return Err(TenantError::UnknownTimezone(zone.clone()));
        }
        note("closeTimezone", json!(zone));
    }
    if changed.is_empty() {
        return Err(TenantError::NothingToUpdate);
    }
    let changes = store::tenants::TenantChanges {
        api_version,
        api_base: change.api_base.as_deref(),
        rate_limit: rate,
        platform_ids: platforms.as_deref(),
        org_account_ids: accounts.as_deref(),
        webhook_secret_ciphertext: webhook.as_deref(),
        freshness: change.freshness,
        close_timezone: change.close_timezone.as_deref(),
    };
    let mut tx = store::begin(pool).await?;
    let updated = store::tenants::update(&mut *tx, tenant.id, &changes)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(slug.to_owned()))?;
    let fields: Vec<&String> = changed.keys().collect();
    let details = json!({"changed": fields, "to": changed});
    audit::record(
        &mut *tx,
        actor,
        "tenant.update",
        Some(&tenant.slug),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(TenantView::of(updated, 0))
}

/// What `tally tenant remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Disabled now (false: it already was).
    Disabled(bool),
    /// Deleted with everything it owned: how many accounts and tokens went with it.
    Purged { accounts: i64, tokens: i64 },
}

/// `tally tenant remove`: disables the tenant (its tokens are refused within about
/// two seconds, the refresher and sync skip it, its data stays); with `purge` (which
/// needs `yes`) deletes it and everything it owns. The audit log keeps the slug.
pub async fn remove(
    pool: &PgPool,
    slug: &str,
    purge: bool,
    yes: bool,
    actor: &Actor,
) -> Result<Removal, TenantError> {
    if purge && !yes {
        return Err(TenantError::PurgeNeedsYes);
    }
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(slug.to_owned()))?;
    let mut tx = store::begin(pool).await?;
    let removal = if purge {
        let accounts = store::tenants::owned_counts(&mut *tx, tenant.id).await?;
        store::tenants::purge(&mut *tx, tenant.id).await?;
        let details = json!({"accounts": accounts.0, "tokens": accounts.1});
        audit::record(&mut *tx, actor, "tenant.purge", Some(&tenant.slug), details).await?;
        Removal::Purged {
            accounts: accounts.0,
            tokens: accounts.1,
        }
    } else {
        let disabled = store::tenants::disable(&mut *tx, tenant.id).await?;
        // Nothing works on a removed tenant any more: what was running ends now,
        // saying why, rather than staying `running` forever. Statements of their own,
        // after the tenant's: one that started work under the tenant's share lock
        // committed before `disable` got the row, and these see what it started.
        store::refreshes::end_for_removed_tenant(&mut *tx, tenant.id).await?;
        store::sync_runs::end_for_removed_tenant(&mut *tx, tenant.id).await?;
        if disabled {
            audit::record(
                &mut *tx,
                actor,
                "tenant.remove",
                Some(&tenant.slug),
                json!({}),
            )
            .await?;
        }
        Removal::Disabled(disabled)
    };
    tx.commit().await?;
    Ok(removal)
}

pub async fn list(pool: &PgPool) -> Result<Vec<TenantView>, sqlx::Error> {
    Ok(store::tenants::list(pool)
        .await?
        .into_iter()
        .map(|t| TenantView {
            status: if t.disabled_at.is_some() {
                "removed"
            } else {
                "active"
            },
            slug: t.slug,
            kind: t.credential_kind.as_str().to_owned(),
            key_last4: t.key_last4,
            api_version: t.api_version,
            api_base: t.api_base,
            rate_limit: t.rate_limit,
            platforms: t.platform_ids,
            org_accounts: t.org_account_ids,
            webhook_secret: t.has_webhook_secret,
            webhooks: t.webhooks,
            freshness: t.freshness.as_str(),
            accounts: t.accounts,
        })
        .collect())
}

/// `tenant list` as a table for people.
pub fn render_table(tenants: &[TenantView]) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:<9} {:<20} {:>9} {:<9} {:>8} {:<8} {}\n",
        "SLUG",
        "KIND",
        "KEY",
        "API VERSION",
        "ACCOUNTS",
        "FRESHNESS",
        "WEBHOOKS",
        "STATUS",
        "PLATFORMS"
    );
    for t in tenants {
        out.push_str(&format!(
            "{:<20} {:<13} {:<9} {:<20} {:>9} {:<9} {:>8} {:<8} {}\n",
            t.slug,
            t.kind,
            format!("…{}", t.key_last4),
            t.api_version,
            t.accounts,
            t.freshness,
            t.webhooks,
            t.status,
            if t.platforms.is_empty() {
                "-".to_owned()
            } else {
                t.platforms
                    .iter()
                    .map(StripeAccountId::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_permission_is_read_from_stripes_message() {
        let message = "The provided key 'rk_test_****abcd' does not have the required permissions \
                       for this endpoint on account 'acct_1'. Having the 'rak_balance_read' \
                       permission would allow this request to continue.";
        assert_eq!(
            missing_permission(message).as_deref(),
            Some("rak_balance_read")
        );
        assert_eq!(
            missing_permission("Invalid API Key provided: sk_test_****"),
            None
        );
        assert_eq!(missing_permission("Having the 'something' else"), None);
    }
}
