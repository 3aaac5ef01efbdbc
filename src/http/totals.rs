//! Totals over time (issue 10): `GET /api/administrator/connect/balances/totals`,
//! JSON or CSV. The handler parses the query and renders what
//! `crate::totals::totals_over_time` returns; same roles as the aggregate.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::accounts::owner_param;
use super::auth::TenantScope;
use super::balances::wants_csv;
use super::error::ApiError;
use super::query::QueryParams;
use super::AppState;
use crate::totals::{self, Currency, Interval, TotalsError};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/administrator/connect/balances/totals", get(totals))
}

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
