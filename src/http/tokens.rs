//! Tokens over HTTP, for owners: `GET/POST /api/administrator/tokens`,
//! `DELETE /api/administrator/tokens/{id}`. A token is shown once, in the answer to
//! the POST that made it; lists show its first characters only.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Caller, Owner};
use super::error::ApiError;
use super::openapi::{api_errors, kind, one_of_strings, Access};
use super::paging::{unknown_cursor, PageRequest, MAX_LIMIT};
use super::query::QueryParams;
use super::AppState;
use crate::audit::Actor;
use crate::domain::Role;
use crate::store;
use crate::tokens::{self as token, TokenError, TokenSpec};

const PATH: &str = "/api/administrator/tokens";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only this tenant's tokens (an unknown tenant is 404 `invalid-tenant`, a removed
    /// one 404 `tenant-removed`).
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    tenant: Option<String>,
    /// At most this many, in the order they were made; default 100.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after this token id.
    #[param(pattern = "^[+-]?[0-9]{1,18}$")]
    starting_after: Option<String>,
}

api_errors!(
    ListErrors,
    Access::Owner,
    [
        (400, "invalid-query"),
        (400, "invalid-tenant"),
        (400, "invalid-limit"),
        (400, "invalid-starting-after"),
        (404, "invalid-tenant"),
        (404, "tenant-removed"),
    ]
);
api_errors!(
    CreateErrors,
    Access::Owner,
    [
        (400, "invalid-body"),
        (400, "invalid-role"),
        (400, "invalid-tenant"),
        (400, "invalid-name"),
        (400, "invalid-expires-in"),
        (404, "invalid-tenant"),
        (404, "tenant-removed"),
        (413, "body-too-large"),
    ]
);
api_errors!(RevokeErrors, Access::Owner, [(404, "invalid-tokenid")]);

/// A token record, as listed (never the token).
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(as = ApiToken)]
#[serde(rename_all = "camelCase")]
struct TokenDoc {
    id: i64,
    #[schema(schema_with = token_kind)]
    object: String,
    name: Option<String>,
    #[schema(schema_with = role)]
    role: String,
    /// The tenant's slug (null for owner tokens).
    tenant: Option<String>,
    /// The token's first characters and `…`, to recognise it by.
    prefix: String,
    #[schema(schema_with = token_status)]
    status: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// Collected in memory and written every 5 s.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
}

/// A token just made: its record and, this once, the token.
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(as = NewApiToken)]
#[serde(rename_all = "camelCase")]
struct NewTokenDoc {
    #[serde(flatten)]
    record: TokenDoc,
    /// The bearer token (`tly_…`). Shown only here; keep it.
    token: String,
}

#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(as = ApiTokenList)]
struct TokenListDoc {
    #[schema(schema_with = list_kind)]
    object: String,
    url: String,
    /// More tokens follow: the `Link` header's `rel="next"` reads them.
    has_more: bool,
    data: Vec<TokenDoc>,
}

fn token_kind() -> Schema {
    kind("apiToken")
}
fn list_kind() -> Schema {
    kind("list")
}
fn role() -> Schema {
    one_of_strings(&["owner", "admin", "reader"])
}
fn token_status() -> Schema {
    one_of_strings(&["active", "expired", "revoked"])
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> ApiError {
        match error {
            TokenError::OwnerWithTenant
            | TokenError::TenantRequired(_)
            | TokenError::MalformedTenant => ApiError::invalid("invalid-tenant", error.to_string()),
            TokenError::UnknownTenant(_) => ApiError::not_found("invalid-tenant", "no such tenant"),
            TokenError::TenantRemoved(_) => ApiError::tenant_removed(),
            TokenError::InvalidName => ApiError::invalid("invalid-name", error.to_string()),
            TokenError::UnknownToken(_) => unknown_token(),
            TokenError::Database(error) => ApiError::from(error),
        }
    }
}

/// `GET /api/administrator/tokens[?tenant=<slug>]`
#[utoipa::path(
    get,
    path = "/api/administrator/tokens",
    tag = "tokens",
    operation_id = "listTokens",
    description = "Every token (owner), or one tenant's; never the tokens themselves.",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of tokens, in the order they were made.", body = TokenListDoc,
            headers(("Link" = String, description = "RFC 8288 `rel=\"next\"`: the next page, keeping the other parameters; absent on the last page."))),
        ListErrors,
    )
)]
async fn list(
    _: Owner,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let page = PageRequest::<i64>::parse(&params, MAX_LIMIT, "a token id")?;
    if let Some(id) = page.starting_after {
        if store::tokens::get(&state.pool, id).await?.is_none() {
            return Err(unknown_cursor("a token id"));
        }
    }
    let tokens = token::list(
        &state.pool,
        params.get("tenant"),
        page.starting_after,
        page.fetch_limit(),
    )
    .await?;
    Ok(store::Page::from_fetched(tokens, page.limit).respond(
        PATH,
        raw.as_deref(),
        page.limit,
        |t| t.id,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = NewApiTokenRequest)]
struct CreateBody {
    #[schema(schema_with = role)]
    role: String,
    /// The tenant's slug: required for admin and reader tokens, refused for owner ones
    /// (a removed tenant is 404 `tenant-removed`).
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    tenant: Option<String>,
    /// 1 to 100 characters, not only spaces, no NUL.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"
    )]
    name: Option<String>,
    /// `90d`, `12h`, `30m`, `45s`: a number of days, hours, minutes or seconds,
    /// between 1 s and ten years.
    #[schema(pattern = "^0*[1-9][0-9]{0,2}[dhms]$")]
    expires_in: Option<String>,
}

/// `POST /api/administrator/tokens` with `{"role", "tenant"?, "name"?, "expiresIn"?}`:
/// 201 with the token record and, this once, the token.
#[utoipa::path(
    post,
    path = "/api/administrator/tokens",
    tag = "tokens",
    operation_id = "createToken",
    description = "Make a token (owner). The answer holds the token, shown this once.",
    request_body(content = CreateBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The token's record, and the token.", body = NewTokenDoc),
        CreateErrors,
    )
)]
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
#[utoipa::path(
    delete,
    path = "/api/administrator/tokens/{id}",
    tag = "tokens",
    operation_id = "revokeToken",
    description = "Revoke a token (owner): every server refuses it within 2 s (401 \
        `token-revoked`). It is kept, marked; revoking it again answers the same record.",
    params(("id" = String, Path, description = "The token's id (an integer; anything else is an unknown token).")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The revoked token's record.", body = TokenDoc),
        RevokeErrors,
    )
)]
async fn revoke(
    _: Owner,
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<token::TokenView>, ApiError> {
    let unknown = unknown_token;
    // A segment that is not even UTF-8 (`%FF`) cannot name a token either.
    let Path(id) = id.map_err(|_| unknown())?;
    let id: i64 = id.parse().map_err(|_| unknown())?;
    Ok(Json(
        token::revoke(&state.pool, id, &Actor::token(caller.token_id)).await?,
    ))
}

/// The answer for an id that names no token.
pub(crate) fn unknown_token() -> ApiError {
    ApiError::not_found("invalid-tokenid", "no token has that id")
}
