//! `tally token create`: a random token, printed once; only its hash is kept.

use secrecy::SecretString;
use sqlx::PgPool;

use crate::crypto::generate_token;
use crate::domain::Role;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("an owner token spans every tenant; drop --tenant")]
    OwnerWithTenant,
    #[error("a {0} token belongs to one tenant; name it with --tenant <slug>")]
    TenantRequired(&'static str),
    #[error("no tenant named '{0}' (see `tally tenant list`)")]
    UnknownTenant(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a token and returns it; the caller shows it once.
pub async fn create(
    pool: &PgPool,
    role: Role,
    tenant: Option<&str>,
) -> Result<SecretString, TokenError> {
    let tenant_id = match (role, tenant) {
        (Role::Owner, Some(_)) => return Err(TokenError::OwnerWithTenant),
        (Role::Owner, None) => None,
        (_, None) => return Err(TokenError::TenantRequired(role.as_str())),
        (_, Some(slug)) => Some(
            store::tenants::find_by_slug(pool, slug)
                .await?
                .ok_or_else(|| TokenError::UnknownTenant(slug.to_owned()))?
                .id,
        ),
    };
    let (token, hash) = generate_token();
    store::tokens::insert(pool, &hash, role.as_str(), tenant_id).await?;
    Ok(token)
}
