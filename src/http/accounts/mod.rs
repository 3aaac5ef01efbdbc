//! The Dashboard-compatible stored-account endpoints (DESIGN §3): same paths,
//! parameters, codes and record shape as the Dashboard Stripe Connect module.

mod params;
mod record;
mod stream;

use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use url::form_urlencoded;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) use self::params::AccountQuery;
use self::params::{ListParams, ListQuery, OwnerQuery};
pub use self::record::StripeAccountRecord;
use self::stream::stream_listing;
use super::auth::TenantScope;
use super::connections::Connection;
use super::error::{ApiError, Code};
use super::openapi::{api_errors, Access, TenantParam};
use super::query::ApiQuery;
use super::AppState;
use crate::domain::OwnerId;
use crate::store;
use crate::store::accounts::{AccountRow, Direction};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(count))
        .routes(routes!(one))
}

api_errors!(
    ListErrors,
    Access::TenantRead,
    query: ListParams,
    [
        Code::InvalidPaging,
        Code::UnknownAccountid,
        Code::TooManyStreams
    ]
);
api_errors!(
    CountErrors,
    Access::TenantRead,
    query: OwnerQuery,
    [Code::UnknownAccountid]
);
api_errors!(
    OneErrors,
    Access::TenantRead,
    query: AccountQuery,
    [Code::UnknownStripeid]
);

/// Pages larger than this are streamed chunk by chunk instead of collected.
pub(crate) const STREAM_ABOVE: i64 = 500;

pub(crate) static X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

pub(crate) fn unknown_owner() -> ApiError {
    ApiError::new(
        Code::UnknownAccountid,
        "invalid querystring accountid: no stored account has that owner",
    )
}

/// Counts the records the listing would walk, refusing an unknown owner.
async fn listed_count(
    state: &AppState,
    tenant_id: i64,
    owner: Option<&OwnerId>,
) -> Result<i64, ApiError> {
    match owner {
        None => Ok(store::accounts::count(&state.pool, tenant_id).await?),
        Some(owner) => {
            let count = store::accounts::count_for_owner(&state.pool, tenant_id, owner).await?;
            if count == 0 {
                return Err(unknown_owner());
            }
            Ok(count)
        }
    }
}

/// `GET /api/administrator/connect/stripe-accounts`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/stripe-accounts",
    tag = "accounts",
    operation_id = "listStripeAccounts",
    description = "Stored accounts, newest `createdAt` first (ties by stripeid), as the \
        Dashboard module lists them: the body is a JSON array of records (empty when there \
        are none), never a list object. Page by `offset`/`limit`, or by cursor \
        (`starting_after`/`ending_before`). `all=true`, and pages with `limit` above 500, \
        are streamed: the same array, written as it is read, with no `Link`; a stream that \
        ends early is cut off before its closing `]`. At most `api.max_streams_per_token` (4) \
        streams per token and `api.max_streams` (32) in all are open at once.",
    params(ListParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of records (or every record, streamed).",
            body = [StripeAccountRecord<'static>],
            headers(
                ("X-Total-Count" = i64, description = "How many records the listing walks (the filter applied), whatever the page."),
                ("Link" = String, description = "RFC 8288 links to the neighbouring pages by cursor, `rel=\"prev\"` and `rel=\"next\"`, keeping the other parameters; absent on streamed listings and when there is no neighbour."),
            )),
        ListErrors,
    )
)]
async fn list(
    scope: TenantScope,
    State(state): State<AppState>,
    connection: Option<Extension<Connection>>,
    RawQuery(raw): RawQuery,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let query = params.listing(state.settings.api.page_size)?;
    if query.all || query.limit > STREAM_ABOVE {
        let connection = connection.map(|Extension(connection)| connection);
        return stream_listing(&state, &scope, query, connection).await;
    }
    let owner = query.owner.as_ref();
    let (rows, total, has_prev, has_next) = match &query.cursor {
        None => {
            let page = store::accounts::page_with_total(
                &state.pool,
                scope.tenant.id,
                owner,
                query.offset,
                query.limit,
            )
            .await?;
            if owner.is_some() && page.total == 0 {
                return Err(unknown_owner());
            }
            let shown = i64::try_from(page.rows.len()).unwrap_or(i64::MAX);
            let has_next = query.offset.saturating_add(shown) < page.total;
            (page.rows, page.total, query.offset > 0, has_next)
        }
        Some((direction, stripeid)) => {
            let (code, key_name) = match direction {
                Direction::Forward => (Code::InvalidStartingAfter, "starting_after"),
                Direction::Backward => (Code::InvalidEndingBefore, "ending_before"),
            };
            let page = store::accounts::page_from_cursor(
                &state.pool,
                scope.tenant.id,
                owner,
                stripeid.as_str(),
                *direction,
                query.limit,
            )
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    code,
                    format!("{key_name}: no listed account has that stripeid"),
                )
            })?;
            if owner.is_some() && page.total == 0 {
                return Err(unknown_owner());
            }
            match direction {
                Direction::Forward => (page.rows, page.total, true, page.more),
                Direction::Backward => (page.rows, page.total, page.more, true),
            }
        }
    };
    let records = rows
        .iter()
        .map(|row| StripeAccountRecord::new(row, &scope.tenant.slug))
        .collect::<Result<Vec<_>, _>>()?;
    let link = page_links(&query, &rows, has_prev, has_next, raw.as_deref());
    let mut response = page_body(&records, &rows);
    let headers = response.headers_mut();
    headers.insert(X_TOTAL_COUNT.clone(), HeaderValue::from(total));
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LINK, link);
    }
    Ok(response)
}

/// A page's JSON array, written into a buffer sized for it up front: a page is
/// mostly its Stripe objects, whose lengths are known, and growing a small buffer
/// by doubling copies the body several times over.
fn page_body(records: &[StripeAccountRecord<'_>], rows: &[AccountRow]) -> Response {
    /// Room for a record's own fields around its object.
    const RECORD_FIELDS_BYTES: usize = 320;
    let capacity = rows
        .iter()
        .map(|row| row.stripe_object.len() + RECORD_FIELDS_BYTES)
        .sum::<usize>()
        + 2;
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, records) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => ApiError::Internal(error.into()).into_response(),
    }
}

/// The RFC 8288 `Link` header of a page: `rel="next"` (records after its last) and
/// `rel="prev"` (records before its first), by cursor, keeping the other parameters.
/// The kept parameters are encoded once for both links.
fn page_links(
    query: &ListQuery,
    rows: &[AccountRow],
    has_prev: bool,
    has_next: bool,
    raw: Option<&str>,
) -> Option<String> {
    let prev = rows.first().filter(|_| has_prev);
    let next = rows.last().filter(|_| has_next);
    if prev.is_none() && next.is_none() {
        return None;
    }
    let mut kept = form_urlencoded::Serializer::new(String::new());
    let mut has_limit = false;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "offset" | "starting_after" | "ending_before" => continue,
            "limit" => has_limit = true,
            _ => {}
        }
        kept.append_pair(&key, &value);
    }
    if !has_limit {
        kept.append_pair("limit", &query.limit.to_string());
    }
    let kept = kept.finish();
    let link = |cursor: &str, row: &AccountRow, rel: &str| {
        let id: String = form_urlencoded::byte_serialize(row.stripeid.as_bytes()).collect();
        format!("</api/administrator/connect/stripe-accounts?{kept}&{cursor}={id}>; rel=\"{rel}\"")
    };
    let links = [
        prev.map(|row| link("ending_before", row, "prev")),
        next.map(|row| link("starting_after", row, "next")),
    ];
    Some(links.into_iter().flatten().collect::<Vec<_>>().join(", "))
}

/// `GET /api/administrator/connect/stripe-accounts-count`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/stripe-accounts-count",
    tag = "accounts",
    operation_id = "countStripeAccounts",
    description = "How many stored accounts the listing walks (the same `accountid` filter).",
    params(OwnerQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The count, a bare integer.", body = i64, content_type = "application/json"),
        CountErrors,
    )
)]
async fn count(
    scope: TenantScope,
    State(state): State<AppState>,
    ApiQuery(OwnerQuery { accountid }): ApiQuery<OwnerQuery>,
) -> Result<Json<i64>, ApiError> {
    let total = listed_count(&state, scope.tenant.id, accountid.as_ref()).await?;
    Ok(Json(total))
}

/// `GET /api/administrator/connect/stripe-account?stripeid=acct_…`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/stripe-account",
    tag = "accounts",
    operation_id = "getStripeAccount",
    description = "One stored account, also one Stripe no longer returns (then with `removedAt`).",
    params(AccountQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The record.", body = StripeAccountRecord<'static>),
        OneErrors,
    )
)]
async fn one(
    scope: TenantScope,
    State(state): State<AppState>,
    ApiQuery(AccountQuery { stripeid }): ApiQuery<AccountQuery>,
) -> Result<Response, ApiError> {
    let row = store::accounts::get(&state.pool, scope.tenant.id, &stripeid)
        .await?
        .ok_or_else(|| {
            ApiError::new(Code::UnknownStripeid, "no stored account has that stripeid")
        })?;
    let record = StripeAccountRecord::new(&row, &scope.tenant.slug)?;
    Ok(Json(record).into_response())
}
