//! Bearer-token authentication and tenant scope as extractors: a handler's
//! signature says who may call it (DESIGN §3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};

use super::error::{ApiError, Code};
use super::openapi::TenantParam;
use super::query;
use super::AppState;
use crate::crypto::hash_token;
use crate::domain::{Role, TenantSlug};
use crate::store;
use crate::store::tenants::Tenant;

/// Any valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's id (what per-token limits count by).
    pub token_id: i64,
    pub role: Role,
    /// The tenant an admin or reader token is bound to, as read with the token
    /// (cached with it, so at most [`TOKEN_CACHE_TTL`] old); `None` for owners. Shared,
    /// not copied: every request of the token reads the same row.
    pub tenant: Option<Arc<Tenant>>,
}

/// A caller allowed to read one tenant: an owner naming it with `?tenant=`, or that
/// tenant's own admin or reader token.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub role: Role,
    /// The tenant's row, read once by the extractor: handlers never load it again.
    pub tenant: Arc<Tenant>,
    /// The token's id (what per-token limits count by).
    pub token_id: i64,
}

/// A caller allowed to change one tenant's state (sync, refresh): owner or admin.
#[derive(Debug, Clone)]
pub struct TenantAdmin(pub TenantScope);

/// An owner token.
#[derive(Debug, Clone)]
pub struct Owner;

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthorized, "malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            Code::Unauthorized,
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token.trim())
}

/// Recently verified tokens, so a dashboard or poller does not cost a database
/// round trip per request. Entries live [`TOKEN_CACHE_TTL`]; that bounds how long a
/// token revoked (on any replica, or with the CLI) keeps working in this process.
/// An expiry is checked on every request, cached or not.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Vec<u8>, CachedToken>>,
}

/// A verified caller, its expiry, and when it was verified.
type CachedToken = (Caller, Option<DateTime<Utc>>, Instant);

/// Short enough that a revoked token stops working everywhere within 2 s.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
const TOKEN_CACHE_MAX: usize = 10_000;

impl TokenCache {
    fn get(&self, hash: &[u8]) -> Option<(Caller, Option<DateTime<Utc>>)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, _, at)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(caller, expires_at, _)| (caller.clone(), *expires_at))
    }

    fn put(&self, hash: Vec<u8>, caller: Caller, expires_at: Option<DateTime<Utc>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.retain(|_, (_, _, at)| at.elapsed() < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (caller, expires_at, Instant::now()));
    }
}

/// When each token was last used, collected in memory and written in one statement
/// every few seconds (`flush`), never one write per request.
#[derive(Default)]
pub struct TokenUses {
    pending: Mutex<HashMap<i64, DateTime<Utc>>>,
}

impl TokenUses {
    fn record(&self, token_id: i64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token_id, Utc::now());
    }

    /// Writes what was collected; on failure it is kept for the next flush.
    pub async fn flush(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let batch: Vec<(i64, DateTime<Utc>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let (ids, at): (Vec<i64>, Vec<DateTime<Utc>>) = batch.iter().copied().unzip();
        if let Err(error) = store::tokens::record_uses(pool, &ids, &at).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, when) in batch {
                pending.entry(id).or_insert(when);
            }
            return Err(error);
        }
        Ok(())
    }
}

fn refuse_expired(expires_at: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::new(
            Code::TokenExpired,
            "this token has expired; create a new one (tally token create)",
        ));
    }
    Ok(())
}

/// The caller a presented token stands for, as every request checks it: unknown
/// 401 `unauthorized`, revoked `token-revoked`, expired `token-expired`. The admin
/// pages sign in with it too.
pub async fn verify_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let hash = hash_token(token);
    if let Some((caller, expires_at)) = state.tokens.get(&hash) {
        refuse_expired(expires_at)?;
        state.token_uses.record(caller.token_id);
        return Ok(caller);
    }
    let grant = store::tokens::find_by_hash(&state.pool, &hash)
        .await?
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "invalid or revoked token"))?;
    if grant.revoked_at.is_some() {
        return Err(ApiError::new(Code::TokenRevoked, "this token was revoked"));
    }
    refuse_expired(grant.expires_at)?;
    if grant.tenant_disabled_at.is_some() {
        return Err(ApiError::new(
            Code::TokenOfRemovedTenant,
            "this token's tenant was removed (tally tenant remove); its tokens no longer work",
        ));
    }
    let role = Role::parse(&grant.role)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored token has unknown role")))?;
    let tenant = match grant.tenant_id {
        Some(id) => Some(Arc::new(
            store::tenants::find_by_id(&state.pool, id)
                .await?
                .ok_or_else(|| ApiError::new(Code::Unauthorized, "invalid or revoked token"))?,
        )),
        None => None,
    };
    let caller = Caller {
        token_id: grant.id,
        role,
        tenant,
    };
    state.tokens.put(hash, caller.clone(), grant.expires_at);
    state.token_uses.record(caller.token_id);
    Ok(caller)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = verify_token(state, bearer_token(parts)?).await?;
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// The `tenant` query parameter, if any, read beside the handler's own parameters.
/// A value that cannot be a slug (a NUL, capitals, spaces) is 400 `invalid-tenant`:
/// no tenant has such a slug, so saying so reveals nothing.
fn tenant_param(parts: &Parts) -> Result<Option<TenantSlug>, ApiError> {
    query::parse::<TenantParam>(parts.uri.query()).map(|param| param.tenant)
}

fn unknown_tenant() -> ApiError {
    ApiError::new(Code::UnknownTenant, "no such tenant")
}

impl FromRequestParts<AppState> for TenantScope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<TenantScope, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let requested = tenant_param(parts)?;
        let tenant = match (caller.role, caller.tenant) {
            (Role::Owner, _) => {
                let slug = requested.ok_or_else(|| {
                    ApiError::new(
                        Code::MissingTenant,
                        "an owner token names the tenant with ?tenant=<slug>",
                    )
                })?;
                let tenant = store::tenants::find_by_slug(&state.pool, slug.as_str())
                    .await?
                    .ok_or_else(unknown_tenant)?;
                if tenant.disabled_at.is_some() {
                    return Err(ApiError::tenant_removed());
                }
                Arc::new(tenant)
            }
            (_, Some(own)) => match requested {
                // Another tenant's slug gets exactly the answer an unknown one gets.
                Some(slug) if slug.as_str() != own.slug => return Err(unknown_tenant()),
                _ => own,
            },
            (_, None) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "tenant token without a tenant"
                )))
            }
        };
        Ok(TenantScope {
            role: caller.role,
            tenant,
            token_id: caller.token_id,
        })
    }
}

impl FromRequestParts<AppState> for TenantAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<TenantAdmin, ApiError> {
        let scope = TenantScope::from_request_parts(parts, state).await?;
        match scope.role {
            Role::Owner | Role::Admin => Ok(TenantAdmin(scope)),
            Role::Reader => Err(ApiError::new(
                Code::Forbidden,
                "this needs an admin or owner token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Owner, ApiError> {
        match Caller::from_request_parts(parts, state).await?.role {
            Role::Owner => Ok(Owner),
            _ => Err(ApiError::new(Code::Forbidden, "this needs an owner token")),
        }
    }
}
