//! The audit log over HTTP, for owners: `GET /api/administrator/audit`, newest first,
//! paged by `limit` + `starting_after` (an event id) with an RFC 8288 `Link` header;
//! `tenant` (a slug, also one that was purged) and `since` filter it.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Owner;
use super::error::ApiError;
use super::openapi::{api_errors, Access};
use super::paging::{unknown_cursor, PageRequest};
use super::query::QueryParams;
use super::schemas;
use super::AppState;
use crate::audit::{self, AuditFilter};
use crate::domain::TenantSlug;
use crate::store;

const PATH: &str = "/api/administrator/audit";
const DEFAULT_LIMIT: i64 = 20;

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
    let page = PageRequest::<i64>::parse(params, DEFAULT_LIMIT, "an audit event id")?;
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
        starting_after: page.starting_after,
        limit: page.limit,
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
            return Err(unknown_cursor("an audit event id"));
        }
    }
    let page = audit::list(&state.pool, &filter).await?;
    Ok(page.respond(PATH, raw.as_deref(), filter.limit, |event| event.id))
}
