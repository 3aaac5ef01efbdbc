//! The daily close: `GET /api/administrator/connect/balances/close?date=…` (a tenant's
//! day, JSON or streamed CSV) and `GET /api/administrator/connect/stripe-account/close`
//! (one account's days). The handlers parse and render; `crate::close::report` answers.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TenantScope;
use super::balances::wants_csv;
use super::error::{ApiError, Code};
use super::openapi::{api_errors, csv_schema, Access, TenantParam};
use super::params::Day;
use super::query::ApiQuery;
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DayQuery {
    /// The local date in the tenant's `close_timezone` (`2026-11-30`).
    #[param(inline)]
    date: Day,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AccountDaysQuery {
    /// The account's Stripe id.
    #[param(inline)]
    stripeid: StripeAccountId,
    /// The first local date (`2026-11-01`).
    #[param(inline)]
    from_date: Day,
    /// The last local date, included (default `from_date`); at most 366 days in all.
    #[param(inline)]
    to_date: Option<Day>,
}

api_errors!(
    DayErrors,
    Access::TenantRead,
    query: DayQuery,
    [Code::CloseNotReady]
);

api_errors!(
    AccountErrors,
    Access::TenantRead,
    query: AccountDaysQuery,
    [Code::InvalidRange, Code::UnknownStripeid]
);

/// The columns of the day's CSV, with `<category>` standing for each reporting
/// category the day has.
fn close_columns() -> Vec<String> {
    let per_category = report::CSV_PER_CATEGORY
        .iter()
        .map(|part| format!("<category>_{part}"));
    report::CSV_LEADING
        .iter()
        .map(|column| (*column).to_owned())
        .chain(per_category)
        .chain(
            report::CSV_TRAILING
                .iter()
                .map(|column| (*column).to_owned()),
        )
        .collect()
}

/// The day's close as CSV.
pub struct CloseCsv;

impl PartialSchema for CloseCsv {
    fn schema() -> RefOr<Schema> {
        let columns = close_columns();
        csv_schema(
            "account and currency, differences first, streamed",
            &columns.iter().map(String::as_str).collect::<Vec<_>>(),
            " `<category>_count`, `_gross`, `_fee` and `_net` come once per Stripe \
             `reporting_category` the day has (`charge`, `refund`, …), in name order.",
        )
    }
}
impl ToSchema for CloseCsv {}

impl From<ReportError> for ApiError {
    fn from(error: ReportError) -> ApiError {
        match error {
            ReportError::NotReady { .. } => ApiError::new(Code::CloseNotReady, error.to_string()),
            ReportError::Database(error) => ApiError::from(error),
            ReportError::Csv(error) => ApiError::Internal(error.into()),
        }
    }
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
    params(DayQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The day (JSON), or its rows (CSV with `Accept: text/csv`).",
            content(
                (DayCloseView = "application/json"),
                (CloseCsv = "text/csv"),
            )),
        DayErrors,
    )
)]
async fn day_close(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(DayQuery { date: Day(day) }): ApiQuery<DayQuery>,
) -> Result<Response, ApiError> {
    if wants_csv(&headers) {
        let rows =
            report::day_csv(state.pool.clone(), &state.tasks.tracker, &scope.tenant, day).await?;
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
    params(AccountDaysQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account's days.", body = AccountCloseView),
        AccountErrors,
    )
)]
async fn account_close(
    scope: TenantScope,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AccountDaysQuery>,
) -> Result<Response, ApiError> {
    let (stripeid, Day(from)) = (query.stripeid, query.from_date);
    let to = query.to_date.map_or(from, |Day(to)| to);
    if to < from || (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::new(
            Code::InvalidRange,
            format!("to_date must be on or after from_date, at most {MAX_DAYS} days in all"),
        ));
    }
    store::accounts::get(&state.pool, scope.tenant.id, &stripeid)
        .await?
        .ok_or_else(|| {
            ApiError::new(Code::UnknownStripeid, "no stored account has that stripeid")
        })?;
    let view = report::account(&state.pool, &scope.tenant, &stripeid, from, to).await?;
    Ok(Json(view).into_response())
}
