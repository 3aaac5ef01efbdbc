//! The audit log over HTTP, for owners: `GET /api/administrator/audit`, newest first,
//! paged by `limit` + `starting_after` (an event id) with an RFC 8288 `Link` header;
//! `tenant` (a slug, also one that was purged) and `since` filter it.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Owner;
use super::error::ApiError;
use super::openapi::{api_errors, Access};
use super::paging::{list_body, respond, unknown_cursor};
use super::params::{Int, PageLimit, RecordId};
use super::query::ApiQuery;
use super::AppState;
use crate::audit::{self, AuditFilter, AuditView};
use crate::domain::TenantSlug;
use crate::schema::text_schema;
use crate::store;

const PATH: &str = "/api/administrator/audit";
const DEFAULT_LIMIT: i64 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// At most this many, newest first; default 20.
    #[param(inline)]
    limit: Option<PageLimit>,
    /// The page after this event id.
    #[param(inline)]
    starting_after: Option<RecordId>,
    /// Only this tenant's events (also a tenant that was purged).
    #[param(inline)]
    tenant: Option<TenantSlug>,
    /// Only events at or after this time: RFC 3339 or `YYYY-MM-DD`.
    #[param(inline)]
    since: Option<Since>,
}

/// `since`: an RFC 3339 timestamp, or a date meaning its midnight UTC.
struct Since(DateTime<Utc>);

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        audit::parse_since(&text)
            .map(Since)
            .map_err(serde::de::Error::custom)
    }
}

impl PartialSchema for Since {
    fn schema() -> RefOr<Schema> {
        text_schema(None, "An RFC 3339 timestamp, or a date (`2026-12-01`).")
    }
}
impl ToSchema for Since {}

api_errors!(ListErrors, Access::Owner, query: AuditQuery, []);

list_body!(
    /// A page of audit events, newest first.
    AuditEventList,
    AuditView
);

/// `GET /api/administrator/audit[?tenant=…][&since=…][&limit=…][&starting_after=…]`
#[utoipa::path(
    get,
    path = "/api/administrator/audit",
    tag = "audit",
    operation_id = "listAudit",
    description = "Who changed what (owner), newest first. Secrets never appear in it.",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events.", body = AuditEventList,
            headers(("Link" = String, description = "RFC 8288 `rel=\"next\"`: the next page, keeping the other parameters; absent on the last page."))),
        ListErrors,
    )
)]
async fn list(
    _: Owner,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let filter = AuditFilter {
        tenant: query.tenant.map(|slug| slug.as_str().to_owned()),
        since: query.since.map(|Since(at)| at),
        starting_after: query.starting_after.map(|RecordId(id)| id),
        limit: query.limit.map_or(DEFAULT_LIMIT, |Int(limit)| limit),
    };
    if let Some(id) = filter.starting_after {
        if !store::audit::exists(&state.pool, id).await? {
            return Err(unknown_cursor("an audit event id"));
        }
    }
    let page = audit::list(&state.pool, &filter).await?;
    Ok(respond::<AuditEventList, _>(
        page,
        PATH,
        raw.as_deref(),
        filter.limit,
        |event| event.id,
    ))
}
