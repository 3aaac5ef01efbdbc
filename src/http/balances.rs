//! Balances (DESIGN §3): one account's balance, the per-currency aggregate (JSON or
//! CSV), balance refreshes, and stored history. Handlers parse, call one use case in
//! `crate::balances`, and render; a freshness requirement that cannot be met within
//! `wait` answers 202 with the refresh to poll.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::auth::{TenantAdmin, TenantScope};
use super::error::ApiError;
use super::openapi::{api_errors, Access, TenantParam};
use super::paging::{unknown_cursor, PageRequest};
use super::query::QueryParams;
use super::schemas;
use super::AppState;
use crate::audit::Actor;
use crate::balances::{self as use_cases, AccountBalance, Answer, Fresh, Since};
use crate::domain::api_timestamp;
use crate::domain::{OwnerId, StripeAccountId};
use crate::refresh::{PendingRefresh, RefreshScope};
use crate::store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(account_balance))
        .routes(routes!(aggregate))
        .routes(routes!(history))
        .routes(routes!(list_refreshes, start_refresh))
        .routes(routes!(show_refresh))
}

/// `max_age` and `wait`, as documented.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct FreshParams {
    /// Seconds: every account of the scope must have been tried within this long.
    /// Met at once from what is stored, else the request joins (or starts) the scope's
    /// refresh and waits up to `wait`, then answers 202 with the refresh to poll.
    #[param(minimum = 0, maximum = 31536000)]
    max_age: Option<i64>,
    /// Seconds to wait for a refresh before answering 202; default 10.
    #[param(minimum = 0, maximum = 25)]
    wait: Option<i64>,
    /// A refresh's id (not with `max_age`): answers that refresh's result, every account
    /// of its scope tried since its cutoff, or 202 while that is not yet so. A
    /// succeeded refresh's `result` link carries it.
    #[param(format = Uuid)]
    refresh: Option<String>,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AccountBalanceParams {
    /// The account's Stripe id.
    #[param(pattern = "^acct_[A-Za-z0-9]{1,255}$")]
    stripeid: String,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct AggregateParams {
    /// Only this owner's accounts; an owner with no listed account is 404
    /// `invalid-accountid`.
    #[param(min_length = 1, max_length = 500, pattern = "^[^\\x00]+$")]
    accountid: Option<String>,
    /// Only this currency (3 letters, any case).
    #[param(pattern = "^[A-Za-z]{3}$")]
    currency: Option<String>,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryParams {
    /// The account's Stripe id.
    #[param(pattern = "^acct_[A-Za-z0-9]{1,255}$")]
    stripeid: String,
    /// Snapshots fetched at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Snapshots fetched at or before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// At most this many, newest first; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct RefreshListParams {
    /// At most this many, newest first; default 10.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The page after this refresh id (a UUID).
    #[param(
        pattern = "^([0-9A-Fa-f]{32}|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$"
    )]
    starting_after: Option<String>,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct StartRefreshParams {
    /// Refresh only this owner's accounts (not with `stripeid`).
    #[param(min_length = 1, max_length = 500, pattern = "^[^\\x00]+$")]
    accountid: Option<String>,
    /// Refresh only this account (not with `accountid`).
    #[param(pattern = "^acct_[A-Za-z0-9]{1,255}$")]
    stripeid: Option<String>,
    /// Refresh what was not tried within this many seconds; default 0 (everything).
    #[param(minimum = 0, maximum = 31536000)]
    max_age: Option<i64>,
}

api_errors!(
    AccountBalanceErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-stripeid"),
        (400, "invalid-max-age"),
        (400, "invalid-wait"),
        (400, "invalid-refreshid"),
        (400, "invalid-scope"),
        (404, "invalid-stripeid"),
        (404, "invalid-refreshid"),
        (500, "tenant-credential-unusable"),
        (502, "stripe-request-failed"),
    ]
);
api_errors!(
    AggregateErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-max-age"),
        (400, "invalid-wait"),
        (400, "invalid-refreshid"),
        (400, "invalid-scope"),
        (400, "invalid-accountid"),
        (400, "invalid-currency"),
        (404, "invalid-accountid"),
        (404, "invalid-refreshid"),
        (500, "tenant-credential-unusable"),
    ]
);
api_errors!(
    HistoryErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-stripeid"),
        (400, "invalid-from"),
        (400, "invalid-to"),
        (400, "invalid-limit"),
        (404, "invalid-stripeid"),
    ]
);
api_errors!(
    ListRefreshesErrors,
    Access::TenantRead,
    [
        (400, "invalid-query"),
        (400, "invalid-limit"),
        (400, "invalid-starting-after"),
    ]
);
api_errors!(
    StartRefreshErrors,
    Access::TenantAdmin,
    [
        (400, "invalid-query"),
        (400, "invalid-scope"),
        (400, "invalid-stripeid"),
        (400, "invalid-accountid"),
        (400, "invalid-max-age"),
        (404, "invalid-stripeid"),
        (404, "invalid-accountid"),
        (500, "tenant-credential-unusable"),
    ]
);
api_errors!(
    ShowRefreshErrors,
    Access::TenantRead,
    [(404, "invalid-refreshid")]
);

/// A year: no snapshot is kept fresher than that on purpose, and larger values
/// would overflow date arithmetic.
pub const MAX_AGE_LIMIT_SECS: u64 = 31_536_000;
/// The longest a request waits for a refresh before answering 202.
pub const WAIT_LIMIT_SECS: u64 = 25;
const WAIT_DEFAULT_SECS: u64 = 10;
const REFRESHES_PATH: &str = "/api/administrator/connect/balances/refreshes";

fn seconds(
    params: &QueryParams,
    key: &str,
    code: &'static str,
    limit: u64,
) -> Result<Option<Duration>, ApiError> {
    params
        .get(key)
        .map(|value| {
            value
                .parse::<u64>()
                .ok()
                .filter(|secs| *secs <= limit)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    ApiError::invalid(
                        code,
                        format!("{key} must be a whole number of seconds from 0 to {limit}"),
                    )
                })
        })
        .transpose()
}

fn max_age(params: &QueryParams) -> Result<Option<Duration>, ApiError> {
    seconds(params, "max_age", "invalid-max-age", MAX_AGE_LIMIT_SECS)
}

/// `max_age` or `refresh` (if either is given) with `wait`.
fn fresh(params: &QueryParams) -> Result<Option<Fresh>, ApiError> {
    let wait = seconds(params, "wait", "invalid-wait", WAIT_LIMIT_SECS)?
        .unwrap_or(Duration::from_secs(WAIT_DEFAULT_SECS));
    let since =
        match (max_age(params)?, refresh_id(params)?) {
            (Some(_), Some(_)) => return Err(ApiError::invalid(
                "invalid-scope",
                "max_age and refresh exclude each other: a refresh's result holds what it tried \
                 since its own cutoff",
            )),
            (Some(max_age), None) => Since::MaxAge(max_age),
            (None, Some(id)) => Since::Refresh(id),
            (None, None) => return Ok(None),
        };
    Ok(Some(Fresh { since, wait }))
}

/// `refresh`: the id of the refresh whose result is asked for.
fn refresh_id(params: &QueryParams) -> Result<Option<Uuid>, ApiError> {
    params
        .get("refresh")
        .map(|value| {
            Uuid::try_parse(value).map_err(|_| {
                ApiError::invalid(
                    "invalid-refreshid",
                    "refresh must be a balance refresh id (a UUID)",
                )
            })
        })
        .transpose()
}

fn stripeid(params: &QueryParams) -> Result<StripeAccountId, ApiError> {
    params
        .get("stripeid")
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| ApiError::invalid("invalid-stripeid", "stripeid must be an acct_ id"))
}

/// The `accountid` of the aggregate and of a refresh.
fn owner(params: &QueryParams) -> Result<Option<&str>, ApiError> {
    params
        .get("accountid")
        .map(|value| {
            OwnerId::parse(value).map(|_| value).ok_or_else(|| {
                ApiError::invalid(
                    "invalid-accountid",
                    "accountid must be an owner id: at most 500 characters, no NUL",
                )
            })
        })
        .transpose()
}

fn currency(params: &QueryParams) -> Result<Option<String>, ApiError> {
    match params.get("currency") {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(Some(c.to_ascii_lowercase()))
        }
        Some(_) => Err(ApiError::invalid(
            "invalid-currency",
            "currency must be a 3-letter ISO code",
        )),
    }
}

/// Stripe's balance object with `stripeid`, `fetchedAt`, `source`, `confirmedAt` and
/// `freshnessBy` added.
fn balance_body(account: &AccountBalance) -> Value {
    let mut body = match &account.balance {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    body.insert("stripeid".into(), json!(account.stripeid));
    body.insert(
        "fetchedAt".into(),
        json!(api_timestamp(&account.snapshot.fetched_at)),
    );
    body.insert("source".into(), json!(account.snapshot.source));
    body.insert(
        "confirmedAt".into(),
        json!(api_timestamp(&account.confirmation.confirmed_at)),
    );
    body.insert(
        "freshnessBy".into(),
        json!(account.confirmation.by.as_str()),
    );
    Value::Object(body)
}

/// `GET /api/administrator/connect/stripe-account/balance?stripeid=…&max_age=…&wait=…`
/// Without `max_age`, a snapshot younger than `refresh.interval_secs` is served.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/stripe-account/balance",
    tag = "balances",
    operation_id = "getStripeAccountBalance",
    description = "One account's Stripe balance. `max_age` defaults to \
        `refresh.interval_secs`: a younger snapshot is served, else the account is fetched \
        (and stored) within `wait`, else 202. An account whose latest try failed answers 502 \
        with Stripe's error.",
    params(AccountBalanceParams, FreshParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The balance.", body = schemas::AccountBalance),
        (status = 202, description = "Not fresh within `wait`: poll the refresh.", body = schemas::BalanceRefresh,
            headers(
                ("Retry-After" = i64, description = "Seconds until the refresh should be done (the work left over the tenant's rate)."),
                ("Location" = String, description = "`/api/administrator/connect/balances/refreshes/{id}`: the refresh to poll."),
            )),
        AccountBalanceErrors,
    )
)]
async fn account_balance(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let stripeid = stripeid(&params)?;
    let fresh = match fresh(&params)? {
        Some(fresh) => fresh,
        None => Fresh::max_age(
            Duration::from_secs(state.settings.refresh.interval_secs),
            seconds(&params, "wait", "invalid-wait", WAIT_LIMIT_SECS)?
                .unwrap_or(Duration::from_secs(WAIT_DEFAULT_SECS)),
        ),
    };
    let tenant = scope.tenant.clone();
    match state
        .balances()
        .account(&tenant, stripeid.as_str(), fresh)
        .await?
    {
        Answer::Ready(account) => Ok(Json(balance_body(&account)).into_response()),
        Answer::Pending(pending) => Ok(accepted(&scope.tenant.slug, &pending)),
    }
}

pub(super) fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

/// `GET /api/administrator/connect/balances?max_age=…&wait=…&accountid=…&currency=…`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances",
    tag = "balances",
    operation_id = "getBalances",
    description = "Per-currency totals across the tenant's listed accounts (or one owner's), \
        with freshness and every failing account explained. Without `max_age` it answers at \
        once from what is stored. With `Accept: text/csv`, one row per account and currency \
        (columns `stripeid`, `accountid`, `platformid`, `currency`, `available`, `pending`, \
        `connect_reserved`, `instant_available`, `fetched_at`, `status`, `error_code`, \
        `last_good_at`).",
    params(AggregateParams, FreshParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The aggregate (JSON), or its rows (CSV with `Accept: text/csv`).",
            content(
                (crate::fanout::aggregate::Aggregate = "application/json"),
                (String = "text/csv"),
            )),
        (status = 202, description = "Not fresh within `wait`: poll the refresh.", body = schemas::BalanceRefresh,
            headers(
                ("Retry-After" = i64, description = "Seconds until the refresh should be done (the work left over the tenant's rate)."),
                ("Location" = String, description = "`/api/administrator/connect/balances/refreshes/{id}`: the refresh to poll."),
            )),
        AggregateErrors,
    )
)]
async fn aggregate(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let fresh = fresh(&params)?;
    let owner = owner(&params)?;
    let currency = currency(&params)?;
    let tenant = scope.tenant.clone();
    let balances = state.balances();
    if wants_csv(&headers) {
        return Ok(
            match balances
                .aggregate_csv(&tenant, owner, currency.as_deref(), fresh)
                .await?
            {
                Answer::Ready(csv) => (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/csv; charset=utf-8"),
                    )],
                    csv,
                )
                    .into_response(),
                Answer::Pending(pending) => accepted(&scope.tenant.slug, &pending),
            },
        );
    }
    Ok(
        match balances
            .aggregate(&tenant, owner, currency.as_deref(), fresh)
            .await?
        {
            Answer::Ready(aggregate) => Json(aggregate).into_response(),
            Answer::Pending(pending) => accepted(&scope.tenant.slug, &pending),
        },
    )
}

/// Where a refresh can be polled.
pub fn refresh_location(id: Uuid) -> String {
    format!("/api/administrator/connect/balances/refreshes/{id}")
}

/// The `balanceRefresh` object.
pub fn refresh_body(appid: &str, pending: &PendingRefresh) -> Value {
    let refresh = &pending.refresh;
    let running = refresh.status == "running";
    let (done, failed) = if running {
        (pending.progress.tried(), pending.progress.failed)
    } else {
        (refresh.done, refresh.failed)
    };
    json!({
        "id": refresh.id,
        "object": "balanceRefresh",
        "appid": appid,
        "scope": {
            "accountid": refresh.scope.owner(),
            "stripeid": refresh.scope.stripeid(),
        },
        "status": refresh.status,
        "trigger": refresh.trigger,
        "total": refresh.total.max(pending.progress.listed),
        "done": done,
        "failed": failed,
        "cutoff": api_timestamp(&refresh.cutoff),
        "startedAt": api_timestamp(&refresh.started_at),
        "finishedAt": refresh.finished_at.as_ref().map(api_timestamp),
        "estimatedCompletionAt": running.then(|| api_timestamp(&pending.estimated_completion)),
        "error": refresh.error,
        "result": result_link(refresh),
    })
}

/// Where a succeeded refresh's result is answered (`None` until it succeeded).
fn result_link(refresh: &crate::refresh::Refresh) -> Option<String> {
    (refresh.status == "succeeded").then(|| use_cases::result_path(&refresh.scope, refresh.id))
}

/// 202 with `Retry-After`, `Location` and the refresh.
fn accepted(appid: &str, pending: &PendingRefresh) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(refresh_body(appid, pending))).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(pending.retry_after.as_secs()),
    );
    if let Ok(location) = HeaderValue::from_str(&refresh_location(pending.refresh.id)) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// `POST /api/administrator/connect/balances/refreshes[?accountid=…|stripeid=…][&max_age=…]`
/// (admin or owner): refresh now whatever is older than `max_age` (default 0: all).
#[utoipa::path(
    post,
    path = "/api/administrator/connect/balances/refreshes",
    tag = "balances",
    operation_id = "startBalanceRefresh",
    description = "Refresh now (admin or owner): the tenant, one owner (`accountid`) or one \
        account (`stripeid`), whatever was not tried within `max_age` (default 0: all). Joins \
        the scope's running refresh if there is one.",
    params(StartRefreshParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The refresh, running.", body = schemas::BalanceRefresh,
            headers(
                ("Retry-After" = i64, description = "Seconds until the refresh should be done (the work left over the tenant's rate)."),
                ("Location" = String, description = "`/api/administrator/connect/balances/refreshes/{id}`: the refresh to poll."),
            )),
        StartRefreshErrors,
    )
)]
async fn start_refresh(
    TenantAdmin(scope): TenantAdmin,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let max_age = max_age(&params)?.unwrap_or(Duration::ZERO);
    let refresh_scope = match (owner(&params)?, params.get("stripeid")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "invalid-scope",
                "give accountid or stripeid, not both",
            ))
        }
        (Some(owner), None) => RefreshScope::Owner(owner.to_owned()),
        (None, Some(_)) => RefreshScope::Account(stripeid(&params)?.as_str().to_owned()),
        (None, None) => RefreshScope::Tenant,
    };
    let tenant = scope.tenant.clone();
    let pending = state
        .balances()
        .start_refresh(
            &tenant,
            refresh_scope,
            max_age,
            &Actor::token(scope.token_id),
        )
        .await?;
    Ok(accepted(&scope.tenant.slug, &pending))
}

/// `GET /api/administrator/connect/balances/refreshes?limit=…&starting_after=…`,
/// newest first.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/refreshes",
    tag = "balances",
    operation_id = "listBalanceRefreshes",
    description = "What the refresher did and is doing, newest first.",
    params(RefreshListParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of refreshes.", body = schemas::BalanceRefreshList,
            headers(("Link" = String, description = "RFC 8288 `rel=\"next\"`: the next page, keeping the other parameters; absent on the last page."))),
        ListRefreshesErrors,
    )
)]
async fn list_refreshes(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let page = PageRequest::<Uuid>::parse(&params, 10, "a refresh id")?;
    if let Some(id) = page.starting_after {
        // Another tenant's refresh is as unknown as one that never was.
        if store::refreshes::get(&state.pool, scope.tenant.id, id)
            .await?
            .is_none()
        {
            return Err(unknown_cursor("a refresh id"));
        }
    }
    let rows = store::refreshes::list(
        &state.pool,
        scope.tenant.id,
        page.fetch_limit(),
        page.starting_after,
    )
    .await?;
    let rows = store::Page::from_fetched(rows, page.limit);
    let tenant = scope.tenant.clone();
    let mut data = Vec::with_capacity(rows.data.len());
    for refresh in rows.data {
        let view = state.balances().refresh_view(&tenant, refresh).await?;
        data.push(refresh_body(&scope.tenant.slug, &view));
    }
    let page_of_bodies = store::Page {
        data,
        has_more: rows.has_more,
    };
    Ok(
        page_of_bodies.respond(REFRESHES_PATH, raw.as_deref(), page.limit, |body| {
            body["id"].as_str().unwrap_or_default().to_owned()
        }),
    )
}

/// `GET /api/administrator/connect/balances/refreshes/{id}`; another tenant's id is
/// not found.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/refreshes/{id}",
    tag = "balances",
    operation_id = "getBalanceRefresh",
    description = "One refresh, with its progress.",
    params(
        ("id" = String, Path, description = "The refresh's id (a UUID; anything else is an unknown refresh)."),
        TenantParam,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The refresh.", body = schemas::BalanceRefresh),
        ShowRefreshErrors,
    )
)]
async fn show_refresh(
    scope: TenantScope,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let missing = unknown_refresh;
    // A segment that is not even UTF-8 (`%FF`) cannot name a refresh either.
    let Path(id) = id.map_err(|_| missing())?;
    let id = Uuid::parse_str(&id).map_err(|_| missing())?;
    let refresh = store::refreshes::get(&state.pool, scope.tenant.id, id)
        .await?
        .ok_or_else(missing)?;
    let tenant = scope.tenant.clone();
    let view = state.balances().refresh_view(&tenant, refresh).await?;
    let mut response = Json(refresh_body(&scope.tenant.slug, &view)).into_response();
    // Once it succeeded, `Location` names its result as the body's `result` does.
    if let Some(location) =
        result_link(&view.refresh).and_then(|link| HeaderValue::from_str(&link).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The answer for an id that names no refresh of the caller's tenant.
pub(crate) fn unknown_refresh() -> ApiError {
    ApiError::from(use_cases::BalanceError::UnknownRefresh)
}

fn parse_time(
    params: &QueryParams,
    key: &str,
    code: &'static str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(key)
        .map(|value| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(code, format!("{key} must be an RFC 3339 timestamp"))
                })
        })
        .transpose()
}

/// `GET /api/administrator/connect/balances/history?stripeid=…&from=…&to=…&limit=…`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/history",
    tag = "balances",
    operation_id = "getBalanceHistory",
    description = "An account's stored snapshots (balances and failed tries), newest first.",
    params(HistoryParams, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The snapshots (a JSON array).", body = [schemas::BalanceSnapshot]),
        HistoryErrors,
    )
)]
async fn history(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let stripeid = stripeid(&params)?;
    let from = parse_time(&params, "from", "invalid-from")?;
    let to = parse_time(&params, "to", "invalid-to")?;
    let limit = match params.get("limit") {
        None => 100,
        Some(value) => value
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::invalid("invalid-limit", "limit must be an integer from 1 to 1000")
            })?,
    };
    store::accounts::get(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("invalid-stripeid", "no stored account has that stripeid")
        })?;
    let snapshots = store::snapshots::history(
        &state.pool,
        scope.tenant.id,
        stripeid.as_str(),
        from,
        to,
        limit,
    )
    .await?;
    Ok(Json(
        snapshots
            .into_iter()
            .map(|s| {
                json!({
                    "object": "balanceSnapshot",
                    "id": s.id,
                    "stripeid": stripeid.as_str(),
                    "fetchedAt": api_timestamp(&s.fetched_at),
                    "source": s.source,
                    "balance": s.balance,
                    "error": s.error,
                })
            })
            .collect(),
    ))
}
