//! The audit log over HTTP, for owners: `GET /api/administrator/audit`, newest first,
//! paged by `limit` + `starting_after` (an event id) with an RFC 8288 `Link` header;
//! `tenant` (a slug, also one that was purged) and `since` filter it.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::auth::Owner;
use super::error::ApiError;
use super::query::QueryParams;
use super::AppState;
use crate::audit::{self, AuditFilter};
use crate::domain::TenantSlug;
use crate::store;

const PATH: &str = "/api/administrator/audit";
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(list))
}

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
