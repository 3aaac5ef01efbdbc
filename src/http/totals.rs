//! Totals over time (issue 10): `GET /api/administrator/connect/balances/totals`,
//! JSON or CSV. The handler parses the query and renders what
//! `crate::totals::totals_over_time` returns; same roles as the aggregate.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::owner_param;
use super::auth::TenantScope;
use super::balances::wants_csv;
use super::error::ApiError;
use super::openapi::{api_errors, Access, TenantParam};
use super::query::QueryParams;
use super::schemas;
use super::AppState;
use crate::totals::{self, Currency, Interval, TotalsError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(totals))
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct TotalsParams {
    /// Bucket size, `hour` or `day` (the default); buckets end on UTC boundaries.
    #[param(pattern = "^(hour|day)$")]
    interval: Option<String>,
    /// The first bucket's moment: an RFC 3339 timestamp or a date (`2026-11-01`).
    /// Required, and (unlike the optional parameters) not empty.
    #[param(min_length = 1)]
    from: String,
    /// The last bucket's moment (default now); a date means the end of that day.
    to: Option<String>,
    /// Only this currency (3 letters, any case).
    #[param(pattern = "^[A-Za-z]{3}$")]
    currency: Option<String>,
    /// Only this owner's accounts; an owner with no listed account is 404
    /// `invalid-accountid`.
    #[param(min_length = 1, max_length = 500, pattern = "^[^\\x00]+$")]
    accountid: Option<String>,
}

api_errors!(
    TotalsErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-interval"),
        (400, "invalid-from"),
        (400, "invalid-to"),
        (400, "invalid-range"),
        (400, "too-many-buckets"),
        (400, "invalid-currency"),
        (400, "invalid-accountid"),
        (404, "invalid-accountid"),
    ]
);

impl From<TotalsError> for ApiError {
    fn from(error: TotalsError) -> ApiError {
        match error {
            TotalsError::InvalidRange => ApiError::invalid("invalid-range", error.to_string()),
            TotalsError::TooManyBuckets { .. } => {
                ApiError::invalid("too-many-buckets", error.to_string())
            }
            TotalsError::UnknownOwner => {
                ApiError::not_found("invalid-accountid", error.to_string())
            }
            TotalsError::Database(error) => ApiError::from(error),
        }
    }
}

fn moment(
    params: &QueryParams,
    key: &str,
    code: &'static str,
    parse: fn(&str) -> Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(key)
        .map(|value| {
            parse(value).ok_or_else(|| {
                ApiError::invalid(
                    code,
                    format!("{key} must be an RFC 3339 timestamp or a date (2026-11-01)"),
                )
            })
        })
        .transpose()
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
    params(TotalsParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The buckets, newest first (JSON), or their rows (CSV with `Accept: text/csv`).",
            content(
                (schemas::TotalsList = "application/json"),
                (String = "text/csv"),
            )),
        TotalsErrors,
    )
)]
async fn totals(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let interval = match params.get("interval") {
        None => Interval::Day,
        Some(value) => Interval::parse(value)
            .ok_or_else(|| ApiError::invalid("invalid-interval", "interval must be hour or day"))?,
    };
    let from = moment(&params, "from", "invalid-from", totals::parse_from)?.ok_or_else(|| {
        ApiError::invalid(
            "invalid-from",
            "from is required: an RFC 3339 timestamp or a date (2026-11-01)",
        )
    })?;
    let to = moment(&params, "to", "invalid-to", totals::parse_to)?.unwrap_or_else(Utc::now);
    let currency = params
        .get("currency")
        .map(|value| {
            Currency::parse(value).ok_or_else(|| {
                ApiError::invalid("invalid-currency", "currency must be a 3-letter ISO code")
            })
        })
        .transpose()?;
    let owner = owner_param(&params)?;
    let series = totals::totals_over_time(
        &state.pool,
        scope.tenant.id,
        interval,
        from,
        to,
        currency.as_ref(),
        owner.as_ref(),
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
