//! The daily close: `GET /api/administrator/connect/balances/close?date=…` (a tenant's
//! day, JSON or streamed CSV) and `GET /api/administrator/connect/stripe-account/close`
//! (one account's days). The handlers parse and render; `crate::close::report` answers.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use futures::StreamExt;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TenantScope;
use super::balances::wants_csv;
use super::error::ApiError;
use super::openapi::{api_errors, Access, TenantParam};
use super::query::QueryParams;
use super::AppState;
use crate::close::report::{self, AccountCloseView, DayCloseView, ReportError};
use crate::domain::StripeAccountId;
use crate::store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(day_close))
        .routes(routes!(account_close))
}

/// Longest span `stripe-account/close` answers at once.
const MAX_DAYS: i64 = 366;

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct DayParams {
    /// The local date in the tenant's `close_timezone` (`2026-11-30`).
    #[param(pattern = "^\\d{4}-\\d{2}-\\d{2}$")]
    date: String,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AccountParams {
    /// The account's Stripe id.
    #[param(pattern = "^acct_[A-Za-z0-9]{1,255}$")]
    stripeid: String,
    /// The first local date (`2026-11-01`).
    #[param(pattern = "^\\d{4}-\\d{2}-\\d{2}$")]
    from_date: String,
    /// The last local date, included (default `from_date`); at most 366 days in all.
    #[param(pattern = "^\\d{4}-\\d{2}-\\d{2}$")]
    to_date: Option<String>,
}

api_errors!(
    DayErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-date"),
        (404, "close-not-ready"),
    ]
);

api_errors!(
    AccountErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-stripeid"),
        (400, "invalid-from-date"),
        (400, "invalid-to-date"),
        (400, "invalid-range"),
        (404, "invalid-stripeid"),
    ]
);

impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> ApiError {
        match error {
            ReportError::NotReady { .. } => {
                ApiError::not_found("close-not-ready", error.to_string())
            }
            ReportError::Database(error) => ApiError::from(error),
            ReportError::Csv(error) => ApiError::Internal(error.into()),
        }
    }
}

fn date(
    params: &QueryParams,
    key: &str,
    code: &'static str,
) -> Result<Option<NaiveDate>, ApiError> {
    params
        .get(key)
        .map(|value| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
                ApiError::invalid(code, format!("{key} must be a date such as 2026-11-30"))
            })
        })
        .transpose()
}

/// `GET /api/administrator/connect/balances/close?date=YYYY-MM-DD`.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/close",
    tag = "balances",
    operation_id = "getDailyClose",
    description = "The tenant's day in its `close_timezone`: per currency the opening balance, the \
        activity by Stripe's `reporting_category`, the closing balance (available and pending), \
        how many account rows tie out to a balance Stripe answered (`matched`), do not \
        (`difference`) or could not be checked (`unverified`), and the negative-balance \
        exposure; then the differences. With `Accept: text/csv`, one row per account and \
        currency, differences first, streamed. 404 `close-not-ready` until Stripe's clock, as \
        tally last read the tenant's ledger, has passed the day's end.",
    params(DayParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The day (JSON), or its rows (CSV with `Accept: text/csv`).",
            content(
                (DayCloseView = "application/json"),
                (String = "text/csv"),
            )),
        DayErrors,
    )
)]
async fn day_close(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let day = date(&params, "date", "invalid-date")?
        .ok_or_else(|| ApiError::invalid("invalid-date", "date is required, such as 2026-11-30"))?;
    if wants_csv(&headers) {
        let rows = report::day_csv(state.pool.clone(), &scope.tenant, day).await?;
        let filename = format!(
            "attachment; filename=\"{}-close-{day}.csv\"",
            scope.tenant.slug
        );
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&filename)
                        .unwrap_or(HeaderValue::from_static("attachment")),
                ),
            ],
            Body::from_stream(rows.map(|chunk| chunk.map(bytes::Bytes::from))),
        )
            .into_response());
    }
    Ok(Json(report::day(&state.pool, &scope.tenant, day).await?).into_response())
}

/// `GET /api/administrator/connect/stripe-account/close?stripeid=…&from_date=…&to_date=…`.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/stripe-account/close",
    tag = "stripe-accounts",
    operation_id = "getAccountDailyClose",
    description = "One account's closed days, oldest first, one entry per day and currency: \
        opening, activity by reporting category, closing and how it ties out. Dates are local \
        dates in the tenant's `close_timezone`.",
    params(AccountParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account's days.", body = AccountCloseView),
        AccountErrors,
    )
)]
async fn account_close(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let stripeid = params
        .get("stripeid")
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| ApiError::invalid("invalid-stripeid", "stripeid must be an acct_ id"))?;
    let from = date(&params, "from_date", "invalid-from-date")?.ok_or_else(|| {
        ApiError::invalid(
            "invalid-from-date",
            "from_date is required, such as 2026-11-01",
        )
    })?;
    let to = date(&params, "to_date", "invalid-to-date")?.unwrap_or(from);
    if to < from || (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::invalid(
            "invalid-range",
            format!("to_date must be on or after from_date, at most {MAX_DAYS} days in all"),
        ));
    }
    store::accounts::get(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("invalid-stripeid", "no stored account has that stripeid")
        })?;
    let view = report::account(&state.pool, &scope.tenant, stripeid.as_str(), from, to).await?;
    Ok(Json(view).into_response())
}
