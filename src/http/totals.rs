//! Totals over time (issue 10): `GET /api/administrator/connect/balances/totals`,
//! JSON or CSV. The handler parses the query and renders what
//! `crate::totals::totals_over_time` returns; same roles as the aggregate.

use std::fmt;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TenantScope;
use super::balances::wants_csv;
use super::error::{ApiError, Code};
use super::openapi::{api_errors, csv_body, Access, TenantParam};
use super::query::ApiQuery;
use super::AppState;
use crate::domain::Currency;
use crate::domain::{FromText, OwnerId};
use crate::totals::{self, Interval, TotalsError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(totals))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TotalsQuery {
    /// Bucket size, `hour` or `day` (the default); buckets end on UTC boundaries.
    #[param(inline)]
    interval: Option<Interval>,
    /// The first bucket's moment: an RFC 3339 timestamp or a date (`2026-11-01`).
    /// Required, and (unlike the optional parameters) not empty.
    #[param(inline)]
    from: Start,
    /// The last bucket's moment (default now); a date means the end of that day.
    #[param(inline)]
    to: Option<End>,
    /// Only this currency (3 letters, any case).
    #[param(inline)]
    currency: Option<Currency>,
    /// Only this owner's accounts; an owner with no listed account is 404
    /// `invalid-accountid`.
    #[param(inline)]
    accountid: Option<OwnerId>,
}

/// `from`: an RFC 3339 timestamp, or a date meaning the start of that UTC day.
struct Start(DateTime<Utc>);

/// `to`: an RFC 3339 timestamp, or a date meaning the end of that UTC day.
struct End(DateTime<Utc>);

impl FromText for Start {
    fn from_text(text: &str) -> Option<Self> {
        totals::parse_from(text).map(Start)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MOMENT)
    }
}

impl FromText for End {
    fn from_text(text: &str) -> Option<Self> {
        totals::parse_to(text).map(End)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MOMENT)
    }
}

const MOMENT: &str = "an RFC 3339 timestamp or a date (2026-11-01)";

impl PartialSchema for Start {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some("An RFC 3339 timestamp, or a date (`2026-11-01`)."))
            .build()
            .into()
    }
}
impl ToSchema for Start {}

impl PartialSchema for End {
    fn schema() -> RefOr<Schema> {
        Start::schema()
    }
}
impl ToSchema for End {}

crate::deserialize_from_text!(Start, End);

csv_body!(
    /// Totals over time as CSV.
    TotalsCsv,
    "bucket and currency (a bucket in which no account held any currency gets one row \
     with empty currency and amounts)",
    &totals::CSV_COLUMNS,
    " `negative` and `negative_accounts` are empty where unknown."
);

api_errors!(
    TotalsErrors,
    Access::TenantRead,
    query: TotalsQuery,
    [
        Code::InvalidRange,
        Code::TooManyBuckets,
        Code::UnknownAccountid
    ]
);

impl From<TotalsError> for ApiError {
    fn from(error: TotalsError) -> ApiError {
        match error {
            TotalsError::InvalidRange => ApiError::new(Code::InvalidRange, error.to_string()),
            TotalsError::TooManyBuckets { .. } => {
                ApiError::new(Code::TooManyBuckets, error.to_string())
            }
            TotalsError::UnknownOwner => ApiError::new(Code::UnknownAccountid, error.to_string()),
            TotalsError::Database(error) => ApiError::from(error),
        }
    }
}

/// `GET /api/administrator/connect/balances/totals?interval=hour|day&from=…&to=…
/// [&currency=…][&accountid=…]`, newest bucket first; `Accept: text/csv` for CSV.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/totals",
    tag = "balances",
    operation_id = "getBalanceTotals",
    description = "Per-currency totals as of each bucket end: every listed account's latest \
        balance at or before it (accounts never read yet counted as `missing`). At most 1,000 \
        buckets. With `Accept: text/csv`, one row per bucket and currency.",
    params(TotalsQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The buckets, newest first (JSON), or their rows (CSV with `Accept: text/csv`).",
            content(
                (crate::totals::TotalsList<'static> = "application/json"),
                (TotalsCsv = "text/csv"),
            )),
        TotalsErrors,
    )
)]
async fn totals(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<TotalsQuery>,
) -> Result<Response, ApiError> {
    let series = totals::totals_over_time(
        &state.pool,
        scope.tenant.id,
        query.interval.unwrap_or(Interval::Day),
        query.from.0,
        query.to.map_or_else(Utc::now, |End(to)| to),
        query.currency.as_ref(),
        query.accountid.as_ref(),
    )
    .await?;
    if wants_csv(&headers) {
        let csv = series
            .to_csv()
            .map_err(|error| ApiError::Internal(error.into()))?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            )],
            csv,
        )
            .into_response());
    }
    Ok(Json(series).into_response())
}
