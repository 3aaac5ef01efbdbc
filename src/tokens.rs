//! The token use cases, for `tally token create | list | revoke` and the owner's HTTP
//! endpoints alike: a random token, shown once; only its hash is kept, with its name,
//! first characters, expiry and revocation.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::audit::{self, Actor};
use crate::crypto::generate_token;
use crate::domain::{api_timestamp, Role, TenantSlug};
use crate::store;
use crate::store::tokens::{NewToken, TokenRecord};

/// How many characters of a token are kept to recognise it by (`tly_` and four).
const PREFIX_CHARS: usize = 8;
/// The longest lifetime `--expires-in` takes: ten years.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("an owner token spans every tenant; drop --tenant")]
    OwnerWithTenant,
    #[error("a {0} token belongs to one tenant; name it with --tenant <slug>")]
    TenantRequired(&'static str),
    #[error("no tenant named '{0}' (see `tally tenant list`)")]
    UnknownTenant(String),
    /// Not a slug any tenant can have (a NUL, capitals, spaces).
    #[error("a tenant is named by its slug (lowercase letters, digits, - and _)")]
    MalformedTenant,
    #[error("tenant '{0}' was removed (tally tenant remove); its tokens no longer work")]
    TenantRemoved(String),
    #[error("a token name is 1 to 100 characters")]
    InvalidName,
    #[error("no token has id {0} (see `tally token list`)")]
    UnknownToken(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What a new token is for.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub role: Option<Role>,
    pub tenant: Option<String>,
    pub name: Option<String>,
    pub expires_in: Option<Duration>,
}

/// Creates a token and returns it; the caller shows it once.
pub async fn create(
    pool: &PgPool,
    role: Role,
    tenant: Option<&str>,
) -> Result<SecretString, TokenError> {
    let spec = TokenSpec {
        role: Some(role),
        tenant: tenant.map(str::to_owned),
        ..TokenSpec::default()
    };
    Ok(create_with(pool, role, &spec, &Actor::cli()).await?.0)
}

/// Creates a token as `spec` says, recording who did; returns it and its record.
pub async fn create_with(
    pool: &PgPool,
    role: Role,
    spec: &TokenSpec,
    actor: &Actor,
) -> Result<(SecretString, TokenRecord), TokenError> {
    let tenant_id = match (role, spec.tenant.as_deref()) {
        (Role::Owner, Some(_)) => return Err(TokenError::OwnerWithTenant),
        (Role::Owner, None) => None,
        (_, None) => return Err(TokenError::TenantRequired(role.as_str())),
        (_, Some(slug)) => Some(enabled_tenant(pool, slug).await?),
    };
    let name = spec.name.as_deref().map(str::trim);
    if name.is_some_and(|n| n.is_empty() || n.chars().count() > 100 || n.contains('\0')) {
        return Err(TokenError::InvalidName);
    }
    let expires_at = spec.expires_in.map(|lifetime| {
        Utc::now() + chrono::Duration::from_std(lifetime.min(MAX_LIFETIME)).unwrap_or_default()
    });
    let (token, hash) = generate_token();
    let prefix: String = token.expose_secret().chars().take(PREFIX_CHARS).collect();
    let mut tx = store::begin(pool).await?;
    let id = store::tokens::insert(
        &mut *tx,
        &NewToken {
            token_hash: &hash,
            prefix: &prefix,
            role: role.as_str(),
            tenant_id,
            name,
            expires_at,
        },
    )
    .await?;
    let record = store::tokens::get(&mut *tx, id)
        .await?
        .ok_or(TokenError::UnknownToken(id))?;
    let details = json!({
        "tokenId": id,
        "name": record.name,
        "role": role.as_str(),
        "prefix": record.prefix,
        "expiresAt": record.expires_at.as_ref().map(api_timestamp),
    });
    audit::record(
        &mut *tx,
        actor,
        "token.create",
        spec.tenant.as_deref(),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok((token, record))
}

/// The id of the tenant `slug` names, if it is one and was not removed: a removed
/// tenant gets no new tokens, and its tokens (which no longer work) are not served.
async fn enabled_tenant(pool: &PgPool, slug: &str) -> Result<i64, TokenError> {
    let slug = TenantSlug::parse(slug).ok_or(TokenError::MalformedTenant)?;
    let tenant = store::tenants::find_by_slug(pool, slug.as_str())
        .await?
        .ok_or_else(|| TokenError::UnknownTenant(slug.to_string()))?;
    if tenant.disabled_at.is_some() {
        return Err(TokenError::TenantRemoved(tenant.slug));
    }
    Ok(tenant.id)
}

/// Tokens in the order they were made, `tenant`'s only if named, after the token
/// `after_id`, at most `limit`.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&str>,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<TokenView>, TokenError> {
    let tenant_id = match tenant {
        None => None,
        Some(slug) => Some(enabled_tenant(pool, slug).await?),
    };
    Ok(store::tokens::list(pool, tenant_id, after_id, limit)
        .await?
        .iter()
        .map(TokenView::from)
        .collect())
}

/// Revokes a token, recording who did: every replica refuses it within two seconds.
pub async fn revoke(pool: &PgPool, id: i64, actor: &Actor) -> Result<TokenView, TokenError> {
    let mut tx = store::begin(pool).await?;
    let record = store::tokens::revoke(&mut *tx, id)
        .await?
        .ok_or(TokenError::UnknownToken(id))?;
    let details =
        json!({"tokenId": id, "name": record.name, "role": record.role, "prefix": record.prefix});
    audit::record(
        &mut *tx,
        actor,
        "token.revoke",
        record.tenant_slug.as_deref(),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(TokenView::from(&record))
}

/// A token as shown, by the API and `tally token list` (never the token).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ApiToken)]
pub struct TokenView {
    pub id: i64,
    #[schema(schema_with = token_kind)]
    pub object: &'static str,
    pub name: Option<String>,
    #[schema(schema_with = role_schema)]
    pub role: String,
    /// The tenant's slug (null for owner tokens).
    pub tenant: Option<String>,
    /// The token's first characters and `…`, to recognise it by.
    pub prefix: String,
    /// `active`, `expired` or `revoked`.
    #[schema(schema_with = token_status)]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Collected in memory and written every 5 s.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

fn token_kind() -> utoipa::openapi::schema::Schema {
    crate::schema::kind("apiToken")
}

/// `owner`, `admin` or `reader`.
pub fn role_schema() -> utoipa::openapi::schema::Schema {
    crate::schema::one_of_strings(&["owner", "admin", "reader"])
}

fn token_status() -> utoipa::openapi::schema::Schema {
    crate::schema::one_of_strings(&["active", "expired", "revoked"])
}

impl From<&TokenRecord> for TokenView {
    fn from(record: &TokenRecord) -> TokenView {
        let now = Utc::now();
        let status = if record.revoked_at.is_some() {
            "revoked"
        } else if record.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        };
        let time = |at: &Option<DateTime<Utc>>| at.as_ref().map(api_timestamp);
        TokenView {
            id: record.id,
            object: "apiToken",
            name: record.name.clone(),
            role: record.role.clone(),
            tenant: record.tenant_slug.clone(),
            prefix: format!("{}…", record.prefix),
            status,
            created_at: api_timestamp(&record.created_at),
            last_used_at: time(&record.last_used_at),
            expires_at: time(&record.expires_at),
            revoked_at: time(&record.revoked_at),
        }
    }
}

/// `90d`, `12h`, `30m`, `45s`: a lifetime for `--expires-in`.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit, e.g. 90d, 12h, 30m"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number of days, hours, minutes or seconds"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => return Err(format!("{text:?}: the unit is d, h, m or s")),
    }
    .filter(|secs| *secs > 0 && *secs <= MAX_LIFETIME.as_secs())
    .ok_or_else(|| format!("{text:?}: between 1 s and ten years"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units_and_bounds() {
        assert_eq!(parse_lifetime("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_lifetime("2s"), Ok(Duration::from_secs(2)));
        for bad in [
            "",
            "d",
            "90",
            "0d",
            "5y",
            "99999999999999999999d",
            "-1d",
            "4000d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
