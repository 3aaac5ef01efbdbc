//! Tokens over HTTP, for owners: `GET/POST /api/administrator/tokens`,
//! `DELETE /api/administrator/tokens/{id}`. A token is shown once, in the answer to
//! the POST that made it; lists show its first characters only.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, Owner};
use super::error::ApiError;
use super::query::QueryParams;
use super::AppState;
use crate::audit::Actor;
use crate::commands::token::{self, TokenError, TokenSpec};
use crate::domain::Role;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/administrator/tokens", get(list).post(create))
        .route("/api/administrator/tokens/{id}", delete(revoke))
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> ApiError {
        match error {
            TokenError::OwnerWithTenant | TokenError::TenantRequired(_) => {
                ApiError::invalid("invalid-tenant", error.to_string())
            }
            TokenError::UnknownTenant(_) => ApiError::not_found("invalid-tenant", "no such tenant"),
            TokenError::InvalidName => ApiError::invalid("invalid-name", error.to_string()),
            TokenError::UnknownToken(_) => {
                ApiError::not_found("invalid-tokenid", "no token has that id")
            }
            TokenError::Database(error) => ApiError::from(error),
        }
    }
}

/// `GET /api/administrator/tokens[?tenant=<slug>]`
async fn list(
    _: Owner,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let tokens = token::list(&state.pool, params.get("tenant")).await?;
    Ok(Json(json!({"object": "list", "data": tokens})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    role: String,
    tenant: Option<String>,
    name: Option<String>,
    /// `90d`, `12h`, `30m`, `45s`.
    expires_in: Option<String>,
}

/// `POST /api/administrator/tokens` with `{"role", "tenant"?, "name"?, "expiresIn"?}`:
/// 201 with the token record and, this once, the token.
async fn create(
    _: Owner,
    caller: Caller,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: CreateBody = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid("invalid-body", format!("expected a token request: {error}"))
    })?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("invalid-role", "role is owner, admin or reader"))?;
    let expires_in = body
        .expires_in
        .as_deref()
        .map(token::parse_lifetime)
        .transpose()
        .map_err(|reason| ApiError::invalid("invalid-expires-in", reason))?;
    let spec = TokenSpec {
        role: Some(role),
        tenant: body.tenant,
        name: body.name,
        expires_in,
    };
    let (secret, record) =
        token::create_with(&state.pool, role, &spec, &Actor::token(caller.token_id)).await?;
    let mut view = serde_json::to_value(token::TokenView::from(&record))
        .map_err(|error| ApiError::Internal(error.into()))?;
    view["token"] = json!(secret.expose_secret());
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /api/administrator/tokens/{id}`: revoked on every replica within 2 s.
async fn revoke(
    _: Owner,
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<token::TokenView>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found("invalid-tokenid", "no token has that id"))?;
    Ok(Json(
        token::revoke(&state.pool, id, &Actor::token(caller.token_id)).await?,
    ))
}
