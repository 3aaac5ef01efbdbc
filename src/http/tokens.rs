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
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Caller, Owner};
use super::error::{ApiError, Code};
use super::openapi::{api_errors, Access};
use super::paging::{list_body, respond, unknown_cursor, MAX_LIMIT};
use super::params::{Int, PageLimit, RecordId};
use super::query::ApiQuery;
use super::AppState;
use crate::audit::Actor;
use crate::domain::{Role, TenantSlug};
use crate::store;
use crate::tokens::{self as token, TokenError, TokenSpec, TokenView};

const PATH: &str = "/api/administrator/tokens";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many, in the order they were made; default 100.
    #[param(inline)]
    limit: Option<PageLimit>,
    /// The page after this token id.
    #[param(inline)]
    starting_after: Option<RecordId>,
    /// Only this tenant's tokens (a malformed slug is 400 `invalid-tenant`, an unknown
    /// tenant 404 `invalid-tenant`, a removed one 404 `tenant-removed`).
    #[param(inline)]
    tenant: Option<TenantSlug>,
}

api_errors!(
    ListErrors,
    Access::Owner,
    query: ListQuery,
    [Code::UnknownTenant, Code::TenantRemoved]
);
api_errors!(
    CreateErrors,
    Access::Owner,
    [
        Code::InvalidBody,
        Code::InvalidRole,
        Code::MalformedTenant,
        Code::InvalidName,
        Code::InvalidExpiresIn,
        Code::UnknownTenant,
        Code::TenantRemoved,
        Code::BodyTooLarge,
    ]
);
api_errors!(RevokeErrors, Access::Owner, [Code::UnknownTokenid]);

/// A token just made: its record and, this once, the token.
#[derive(Serialize, ToSchema)]
#[schema(as = NewApiToken)]
pub struct NewTokenBody {
    #[serde(flatten)]
    record: TokenView,
    /// The bearer token (`tly_…`). Shown only here; keep it.
    token: String,
}

list_body!(
    /// A page of tokens, in the order they were made.
    ApiTokenList,
    TokenView
);

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> ApiError {
        match error {
            TokenError::OwnerWithTenant
            | TokenError::TenantRequired(_)
            | TokenError::MalformedTenant => {
                ApiError::new(Code::MalformedTenant, error.to_string())
            }
            TokenError::UnknownTenant(_) => ApiError::new(Code::UnknownTenant, "no such tenant"),
            TokenError::TenantRemoved(_) => ApiError::tenant_removed(),
            TokenError::InvalidName => ApiError::new(Code::InvalidName, error.to_string()),
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
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of tokens, in the order they were made.", body = ApiTokenList,
            headers(("Link" = String, description = "RFC 8288 `rel=\"next\"`: the next page, keeping the other parameters; absent on the last page."))),
        ListErrors,
    )
)]
async fn list(
    _: Owner,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.map_or(MAX_LIMIT, |Int(limit)| limit);
    let after = query.starting_after.map(|RecordId(id)| id);
    if let Some(id) = after {
        if store::tokens::get(&state.pool, id).await?.is_none() {
            return Err(unknown_cursor("a token id"));
        }
    }
    let tokens = token::list(
        &state.pool,
        query.tenant.as_ref().map(TenantSlug::as_str),
        after,
        store::fetch_limit(limit),
    )
    .await?;
    let page = store::Page::from_fetched(tokens, limit);
    Ok(respond::<ApiTokenList, _>(
        page,
        PATH,
        raw.as_deref(),
        limit,
        |t| t.id,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = NewApiTokenRequest)]
struct CreateBody {
    #[schema(schema_with = token::role_schema)]
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
        (status = 201, description = "The token's record, and the token.", body = NewTokenBody),
        CreateErrors,
    )
)]
async fn create(
    _: Owner,
    caller: Caller,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<NewTokenBody>), ApiError> {
    let body: CreateBody = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            Code::InvalidBody,
            format!("expected a token request: {error}"),
        )
    })?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::new(Code::InvalidRole, "role is owner, admin or reader"))?;
    let expires_in = body
        .expires_in
        .as_deref()
        .map(token::parse_lifetime)
        .transpose()
        .map_err(|reason| ApiError::new(Code::InvalidExpiresIn, reason))?;
    let spec = TokenSpec {
        role: Some(role),
        tenant: body.tenant,
        name: body.name,
        expires_in,
    };
    let (secret, record) =
        token::create_with(&state.pool, role, &spec, &Actor::token(caller.token_id)).await?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenBody {
            record: TokenView::from(&record),
            token: secret.expose_secret().to_owned(),
        }),
    ))
}

/// `DELETE /api/administrator/tokens/{id}`: revoked on every replica within 2 s.
#[utoipa::path(
    delete,
    path = "/api/administrator/tokens/{id}",
    tag = "tokens",
    operation_id = "revokeToken",
    description = "Revoke a token (owner): every server refuses it within 2 s (401 \
        `token-revoked`). It is kept, marked; revoking it again answers the same record.",
    params(("id" = i64, Path, description = "The token's id (anything else is an unknown token).")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The revoked token's record.", body = TokenView),
        RevokeErrors,
    )
)]
async fn revoke(
    _: Owner,
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenView>, ApiError> {
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
    ApiError::new(Code::UnknownTokenid, "no token has that id")
}
