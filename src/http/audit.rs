//! The audit log over HTTP, for owners: `GET /api/administrator/audit`, newest first,
//! paged by `limit` + `starting_after` (an event id) with an RFC 8288 `Link` header;
//! `tenant` (a slug, also one that was purged) and `since` filter it.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Owner;
use super::error::ApiError;
use super::openapi::{api_errors, Access};
use super::query::QueryParams;
use super::schemas;
use super::AppState;
use crate::audit::{self, AuditFilter};
use crate::domain::TenantSlug;
use crate::store;

const PATH: &str = "/api/administrator/audit";
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only this tenant's events (also a tenant that was purged).
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    tenant: Option<String>,
    /// Only events at or after this time: RFC 3339 or `YYYY-MM-DD`.
    since: Option<String>,
    /// At most this many, newest first; default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after this event id.
    #[param(pattern = "^[+-]?[0-9]{1,18}$")]
    starting_after: Option<String>,
}

api_errors!(
    ListErrors,
    Access::Owner,
    [
        (400, "invalid-query"),
        (400, "invalid-limit"),
        (400, "invalid-starting-after"),
        (400, "invalid-tenant"),
        (400, "invalid-since"),
    ]
);

fn filter(params: &QueryParams) -> Result<AuditFilter, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(value) => value
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid("invalid-limit", "limit must be an integer from 1 to 100")
            })?,
    };
    let starting_after = params
        .get("starting_after")
        .map(|id| {
            id.parse::<i64>().map_err(|_| {
                ApiError::invalid(
                    "invalid-starting-after",
                    "starting_after must be an audit event id",
                )
            })
        })
        .transpose()?;
    let tenant = params
        .get("tenant")
        .map(|slug| {
            TenantSlug::parse(slug)
                .map(|s| s.as_str().to_owned())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid-tenant",
                        "tenant must be a tenant slug (lowercase letters, digits, - and _)",
                    )
                })
        })
        .transpose()?;
    let since = params
        .get("since")
        .map(|text| {
            audit::parse_since(text).map_err(|reason| ApiError::invalid("invalid-since", reason))
        })
        .transpose()?;
    Ok(AuditFilter {
        tenant,
        since,
        starting_after,
        limit,
    })
}

/// `GET /api/administrator/audit[?tenant=…][&since=…][&limit=…][&starting_after=…]`
#[utoipa::path(
    get,
    path = "/api/administrator/audit",
    tag = "audit",
    operation_id = "listAudit",
    description = "Who changed what (owner), newest first. Secrets never appear in it.",
    params(AuditParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events.", body = schemas::AuditEventList,
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
    let filter = filter(&params)?;
    if let Some(id) = filter.starting_after {
        if !store::audit::exists(&state.pool, id).await? {
            return Err(ApiError::invalid(
                "invalid-starting-after",
                "no audit event has that id",
            ));
        }
    }
    let (events, has_more) = audit::list(&state.pool, &filter).await?;
    let next = events
        .last()
        .filter(|_| has_more)
        .map(|last| next_link(raw.as_deref(), filter.limit, last.id));
    let body = json!({"object": "list", "url": PATH, "has_more": has_more, "data": events});
    let mut response = Json(body).into_response();
    if let Some(value) = next.and_then(|link| HeaderValue::from_str(&link).ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

/// `rel="next"`: the page after event `last`, keeping the other parameters.
fn next_link(raw: Option<&str>, limit: i64, last: i64) -> String {
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, value)| key != "starting_after" && key != "limit" && !value.is_empty())
            .collect();
    pairs.push(("limit".into(), limit.to_string()));
    pairs.push(("starting_after".into(), last.to_string()));
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!("<{PATH}?{encoded}>; rel=\"next\"")
}
