//! Balances (DESIGN §3): one account's balance, the per-currency aggregate (JSON or
//! CSV), balance refreshes, and stored history. Handlers parse, call one use case in
//! `crate::balances`, and render; a freshness requirement that cannot be met within
//! `wait` answers 202 with the refresh to poll.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::accounts::AccountQuery;
use super::auth::{TenantAdmin, TenantScope};
use super::error::{ApiError, Code};
use super::openapi::{api_errors, csv_body, kind, one_of_strings, Access, TenantParam};
use super::paging::{self, unknown_cursor};
use super::params::{Int, PageLimit, RefreshCursor, RefreshRef, Seconds, Timestamp};
use super::query::ApiQuery;
use super::AppState;
use crate::audit::Actor;
use crate::balances::{self as use_cases, AccountBalance, Answer, Fresh, Since};
use crate::domain::Currency;
use crate::domain::{
    api_timestamp, FetchFailure, OwnerId, RefreshStatus, RefreshTrigger, StripeAccountId,
};
use crate::freshness::FreshnessBy;
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

/// A year: no snapshot is kept fresher than that on purpose, and larger values
/// would overflow date arithmetic.
pub const MAX_AGE_LIMIT_SECS: u64 = 31_536_000;
/// The longest a request waits for a refresh before answering 202.
pub const WAIT_LIMIT_SECS: u64 = 25;
const WAIT_DEFAULT_SECS: u64 = 10;
const REFRESHES_PATH: &str = "/api/administrator/connect/balances/refreshes";

type MaxAge = Seconds<MAX_AGE_LIMIT_SECS>;
type Wait = Seconds<WAIT_LIMIT_SECS>;
type HistoryLimit = Int<1, 1000>;

/// `max_age`, `wait` and `refresh`: how fresh an answer must be.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FreshQuery {
    /// Seconds: every account of the scope must have been tried within this long.
    /// Met at once from what is stored, else the request joins (or starts) the scope's
    /// refresh and waits up to `wait`, then answers 202 with the refresh to poll.
    #[param(inline)]
    max_age: Option<MaxAge>,
    /// Seconds to wait for a refresh before answering 202; default 10.
    #[param(inline)]
    wait: Option<Wait>,
    /// A refresh's id (not with `max_age`): answers that refresh's result, every account
    /// of its scope tried since its cutoff, or 202 while that is not yet so. A
    /// succeeded refresh's `result` link carries it.
    #[param(inline)]
    refresh: Option<RefreshRef>,
}

impl FreshQuery {
    fn wait(&self) -> Duration {
        self.wait
            .map_or(Duration::from_secs(WAIT_DEFAULT_SECS), |Seconds(wait)| wait)
    }

    /// `max_age` or `refresh` (if either is given) with `wait`.
    fn fresh(&self) -> Result<Option<Fresh>, ApiError> {
        let since = match (self.max_age, self.refresh) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    Code::InvalidScope,
                    "max_age and refresh exclude each other: a refresh's result holds what it \
                     tried since its own cutoff",
                ))
            }
            (Some(Seconds(max_age)), None) => Since::MaxAge(max_age),
            (None, Some(RefreshRef(id))) => Since::Refresh(id),
            (None, None) => return Ok(None),
        };
        Ok(Some(Fresh {
            since,
            wait: self.wait(),
        }))
    }
}

/// The aggregate's filters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AggregateQuery {
    /// Only this owner's accounts; an owner with no listed account is 404
    /// `invalid-accountid`.
    #[param(inline)]
    accountid: Option<OwnerId>,
    /// Only this currency (3 letters, any case).
    #[param(inline)]
    currency: Option<Currency>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// The account's Stripe id.
    #[param(inline)]
    stripeid: StripeAccountId,
    /// Snapshots fetched at or after this time (RFC 3339).
    #[param(inline)]
    from: Option<Timestamp>,
    /// Snapshots fetched at or before this time (RFC 3339).
    #[param(inline)]
    to: Option<Timestamp>,
    /// At most this many, newest first; default 100.
    #[param(inline)]
    limit: Option<HistoryLimit>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RefreshListQuery {
    /// At most this many, newest first; default 10.
    #[param(inline)]
    limit: Option<PageLimit>,
    /// The page after this refresh id.
    #[param(inline)]
    starting_after: Option<RefreshCursor>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StartRefreshQuery {
    /// Refresh what was not tried within this many seconds; default 0 (everything).
    #[param(inline)]
    max_age: Option<MaxAge>,
    /// Refresh only this owner's accounts (not with `stripeid`).
    #[param(inline)]
    accountid: Option<OwnerId>,
    /// Refresh only this account (not with `accountid`).
    #[param(inline)]
    stripeid: Option<StripeAccountId>,
}

api_errors!(
    AccountBalanceErrors,
    Access::TenantRead,
    query: AccountQuery,
    query: FreshQuery,
    [
        Code::InvalidScope,
        Code::UnknownStripeid,
        Code::UnknownRefreshid,
        Code::StripeRequestFailed,
    ]
);
api_errors!(
    AggregateErrors,
    Access::TenantRead,
    query: AggregateQuery,
    query: FreshQuery,
    [
        Code::InvalidScope,
        Code::UnknownAccountid,
        Code::UnknownRefreshid
    ]
);
api_errors!(
    HistoryErrors,
    Access::TenantRead,
    query: HistoryQuery,
    [Code::UnknownStripeid]
);
api_errors!(
    ListRefreshesErrors,
    Access::TenantRead,
    query: RefreshListQuery,
    []
);
api_errors!(
    StartRefreshErrors,
    Access::TenantAdmin,
    query: StartRefreshQuery,
    [
        Code::InvalidScope,
        Code::UnknownStripeid,
        Code::UnknownAccountid
    ]
);
api_errors!(
    ShowRefreshErrors,
    Access::TenantRead,
    [Code::UnknownRefreshid]
);

fn balance_kind() -> Schema {
    kind("balance")
}
fn balance_refresh_kind() -> Schema {
    kind("balanceRefresh")
}
fn balance_snapshot_kind() -> Schema {
    kind("balanceSnapshot")
}
fn snapshot_source() -> Schema {
    one_of_strings(&["fetch", "webhook"])
}

/// Stripe's balance object as Stripe returned it, with Stripe's own field names;
/// fields Stripe adds (`issuing`, `refund_and_dispute_prefunding`, new ones) are kept.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StripeBalance {
    #[schema(schema_with = balance_kind)]
    object: String,
    livemode: bool,
    available: Vec<BalanceAmount>,
    pending: Vec<BalanceAmount>,
    /// Funds held for Connect reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    connect_reserved: Option<Vec<BalanceAmount>>,
    /// Funds available for Instant Payouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    instant_available: Option<Vec<InstantAmount>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// One currency's amount in a balance bucket.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BalanceAmount {
    /// In the currency's minor unit (cents; yen); may be negative.
    amount: i64,
    /// An ISO currency code, as Stripe writes it (lowercase).
    currency: String,
    /// The amount by source type (`card`, `bank_account`, `fpx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    source_types: Option<BTreeMap<String, i64>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// One currency's amount available for Instant Payouts.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct InstantAmount {
    /// In the currency's minor unit; may be negative.
    amount: i64,
    currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    source_types: Option<BTreeMap<String, i64>>,
    /// What could be paid out instantly to each destination, fees taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    net_available: Option<Vec<NetAvailable>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// An instant payout's net amount to one destination.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NetAvailable {
    amount: i64,
    /// The bank account or card (`ba_…`, `card_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    source_types: Option<BTreeMap<String, i64>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl StripeBalance {
    /// A stored balance; one that is not a balance object is a fault of ours.
    fn read(stored: &Value) -> Result<StripeBalance, ApiError> {
        StripeBalance::deserialize(stored).map_err(|error| {
            ApiError::Internal(anyhow::anyhow!("a stored balance does not read: {error}"))
        })
    }
}

/// One account's balance: Stripe's balance object with `stripeid`, `fetchedAt`,
/// `source`, `confirmedAt` and `freshnessBy` added.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AccountBalance)]
pub struct AccountBalanceBody {
    #[serde(flatten)]
    balance: StripeBalance,
    /// The account.
    #[schema(value_type = String)]
    stripeid: String,
    /// When the balance was read from Stripe (or arrived by webhook).
    #[schema(format = DateTime)]
    fetched_at: String,
    /// `fetch` (tally asked Stripe) or `webhook` (a `balance.available` event).
    #[schema(schema_with = snapshot_source)]
    source: String,
    /// Up to when this balance is known to be the account's: `fetchedAt`, or, for a
    /// tenant in `events` mode whose live event stream named no change since the
    /// fetch, the stream's latest event.
    #[schema(format = DateTime)]
    confirmed_at: String,
    /// How `confirmedAt` is known: `fetch` or `events`.
    freshness_by: FreshnessBy,
}

impl AccountBalanceBody {
    fn new(account: &AccountBalance) -> Result<AccountBalanceBody, ApiError> {
        Ok(AccountBalanceBody {
            balance: StripeBalance::read(&account.balance)?,
            stripeid: account.stripeid.to_string(),
            fetched_at: api_timestamp(&account.snapshot.fetched_at),
            source: account.snapshot.source.clone(),
            confirmed_at: api_timestamp(&account.confirmation.confirmed_at),
            freshness_by: account.confirmation.by,
        })
    }
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
    params(AccountQuery, FreshQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The balance.", body = AccountBalanceBody),
        (status = 202, description = "Not fresh within `wait`: poll the refresh.", body = RefreshBody,
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
    ApiQuery(AccountQuery { stripeid }): ApiQuery<AccountQuery>,
    ApiQuery(fresh): ApiQuery<FreshQuery>,
) -> Result<Response, ApiError> {
    let fresh = match fresh.fresh()? {
        Some(asked) => asked,
        None => Fresh::max_age(
            Duration::from_secs(state.settings.refresh.interval_secs),
            fresh.wait(),
        ),
    };
    let tenant = scope.tenant.clone();
    match state.balances().account(&tenant, &stripeid, fresh).await? {
        Answer::Ready(account) => Ok(Json(AccountBalanceBody::new(&account)?).into_response()),
        Answer::Pending(pending) => Ok(accepted(&scope.tenant.slug, &pending)),
    }
}

csv_body!(
    /// The aggregate as CSV.
    BalancesCsv,
    "account and currency",
    &crate::fanout::aggregate::CSV_COLUMNS,
    " `status` is `ok` or `failed` (the account's latest try; `error_code` then says what \
     Stripe answered, or `not-fetched`); an account never read has one row with empty \
     currency and amounts; `last_good_at` is when the balance the totals hold was fetched."
);

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
        (`BalancesCsv`).",
    params(AggregateQuery, FreshQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The aggregate (JSON), or its rows (CSV with `Accept: text/csv`).",
            content(
                (crate::fanout::aggregate::Aggregate = "application/json"),
                (BalancesCsv = "text/csv"),
            )),
        (status = 202, description = "Not fresh within `wait`: poll the refresh.", body = RefreshBody,
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
    ApiQuery(filter): ApiQuery<AggregateQuery>,
    ApiQuery(fresh): ApiQuery<FreshQuery>,
) -> Result<Response, ApiError> {
    let fresh = fresh.fresh()?;
    let owner = filter.accountid.as_ref();
    let currency = filter.currency;
    let tenant = scope.tenant.clone();
    let balances = state.balances();
    if wants_csv(&headers) {
        return Ok(
            match balances
                .aggregate_csv(&tenant, owner, currency.as_ref(), fresh)
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
            .aggregate(&tenant, owner, currency.as_ref(), fresh)
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

/// The scope of a refresh: a whole tenant (both null), one owner or one account.
#[derive(Serialize, ToSchema)]
#[schema(as = RefreshScope)]
pub struct RefreshScopeBody {
    accountid: Option<String>,
    stripeid: Option<String>,
}

/// A balance refresh: what the refresher does to meet a `max_age`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BalanceRefresh)]
pub struct RefreshBody {
    id: Uuid,
    #[schema(schema_with = balance_refresh_kind)]
    object: &'static str,
    /// The tenant's slug.
    appid: String,
    scope: RefreshScopeBody,
    /// `succeeded`: every account of its scope was tried since `cutoff`; `result`
    /// answers with what it tried. `failed`: it can no longer finish (the tenant was
    /// removed, or Stripe rejected its key, or no replica can open the key; `error` says
    /// why): stop polling. `interrupted`: every worker stopped before it finished;
    /// `result` then starts a refresh with the same cutoff.
    status: RefreshStatus,
    /// What started it: a poll with `max_age`, a person's `POST`, the background
    /// schedule, or `tally balances`.
    trigger: RefreshTrigger,
    /// Accounts in its scope.
    total: i64,
    /// Accounts tried so far (failed ones included).
    done: i64,
    failed: i64,
    /// Accounts not tried since this moment are due.
    #[schema(format = DateTime)]
    cutoff: String,
    #[schema(format = DateTime)]
    started_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// While running: when it should be done, at the tenant's rate.
    #[schema(format = DateTime)]
    estimated_completion_at: Option<String>,
    error: Option<String>,
    /// Once `succeeded`: where its result is answered, 200 with every account of its
    /// scope tried since its `cutoff` (`/api/administrator/connect/balances?refresh={id}`,
    /// or for one account's refresh `…/stripe-account/balance?stripeid=…&refresh={id}`)
    /// for as long as the refresh is listed. A poll of a succeeded refresh also names it in
    /// `Location`. Asking `max_age` again instead moves the cutoff, and a refresh that takes
    /// longer than `max_age` would never meet it.
    result: Option<String>,
}

impl RefreshBody {
    fn new(appid: &str, pending: &PendingRefresh) -> RefreshBody {
        let refresh = &pending.refresh;
        let running = refresh.status == RefreshStatus::Running;
        let (done, failed) = if running {
            (pending.progress.tried(), pending.progress.failed)
        } else {
            (refresh.done, refresh.failed)
        };
        RefreshBody {
            id: refresh.id,
            object: "balanceRefresh",
            appid: appid.to_owned(),
            scope: RefreshScopeBody {
                accountid: refresh.scope.owner().map(ToString::to_string),
                stripeid: refresh.scope.stripeid().map(ToString::to_string),
            },
            status: refresh.status,
            trigger: refresh.trigger,
            total: refresh.total.max(pending.progress.listed),
            done,
            failed,
            cutoff: api_timestamp(&refresh.cutoff),
            started_at: api_timestamp(&refresh.started_at),
            finished_at: refresh.finished_at.as_ref().map(api_timestamp),
            estimated_completion_at: running.then(|| api_timestamp(&pending.estimated_completion)),
            error: refresh.error.clone(),
            result: result_link(refresh),
        }
    }
}

paging::list_body!(
    /// A page of refreshes, newest first.
    BalanceRefreshList,
    RefreshBody
);

/// Where a succeeded refresh's result is answered (`None` until it succeeded).
fn result_link(refresh: &crate::refresh::Refresh) -> Option<String> {
    (refresh.status == RefreshStatus::Succeeded)
        .then(|| use_cases::result_path(&refresh.scope, refresh.id))
}

/// 202 with `Retry-After`, `Location` and the refresh.
fn accepted(appid: &str, pending: &PendingRefresh) -> Response {
    let mut response =
        (StatusCode::ACCEPTED, Json(RefreshBody::new(appid, pending))).into_response();
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
    params(StartRefreshQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The refresh, running.", body = RefreshBody,
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
    ApiQuery(query): ApiQuery<StartRefreshQuery>,
) -> Result<Response, ApiError> {
    let max_age = query
        .max_age
        .map_or(Duration::ZERO, |Seconds(max_age)| max_age);
    let refresh_scope = match (query.accountid, query.stripeid) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Code::InvalidScope,
                "give accountid or stripeid, not both",
            ))
        }
        (Some(owner), None) => RefreshScope::Owner(owner),
        (None, Some(stripeid)) => RefreshScope::Account(stripeid),
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
    params(RefreshListQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of refreshes.", body = BalanceRefreshList,
            headers(("Link" = String, description = "RFC 8288 `rel=\"next\"`: the next page, keeping the other parameters; absent on the last page."))),
        ListRefreshesErrors,
    )
)]
async fn list_refreshes(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    ApiQuery(query): ApiQuery<RefreshListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.map_or(10, |Int(limit)| limit);
    let after = query.starting_after.map(|RefreshCursor(id)| id);
    if let Some(id) = after {
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
        store::fetch_limit(limit),
        after,
    )
    .await?;
    let rows = store::Page::from_fetched(rows, limit);
    let tenant = scope.tenant.clone();
    let mut data = Vec::with_capacity(rows.data.len());
    for refresh in rows.data {
        let view = state.balances().refresh_view(&tenant, refresh).await?;
        data.push(RefreshBody::new(&scope.tenant.slug, &view));
    }
    let page = store::Page {
        data,
        has_more: rows.has_more,
    };
    Ok(paging::respond::<BalanceRefreshList, _>(
        page,
        REFRESHES_PATH,
        raw.as_deref(),
        limit,
        |body| body.id,
    ))
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
        (status = 200, description = "The refresh.", body = RefreshBody),
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
    let mut response = Json(RefreshBody::new(&scope.tenant.slug, &view)).into_response();
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

/// One stored try to read an account's balance: the balance, or the error.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BalanceSnapshot)]
pub struct SnapshotBody {
    #[schema(schema_with = balance_snapshot_kind)]
    object: &'static str,
    id: i64,
    #[schema(value_type = String)]
    stripeid: StripeAccountId,
    #[schema(format = DateTime)]
    fetched_at: String,
    #[schema(schema_with = snapshot_source)]
    source: String,
    /// Stripe's balance object as returned (null when the try failed).
    balance: Option<StripeBalance>,
    /// What Stripe answered (null when the try succeeded).
    error: Option<FetchFailure>,
}

/// `GET /api/administrator/connect/balances/history?stripeid=…&from=…&to=…&limit=…`
#[utoipa::path(
    get,
    path = "/api/administrator/connect/balances/history",
    tag = "balances",
    operation_id = "getBalanceHistory",
    description = "An account's stored snapshots (balances and failed tries), newest first.",
    params(HistoryQuery, TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The snapshots (a JSON array).", body = [SnapshotBody]),
        HistoryErrors,
    )
)]
async fn history(
    scope: TenantScope,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<SnapshotBody>>, ApiError> {
    let stripeid = query.stripeid;
    store::accounts::get(&state.pool, scope.tenant.id, &stripeid)
        .await?
        .ok_or_else(|| {
            ApiError::new(Code::UnknownStripeid, "no stored account has that stripeid")
        })?;
    let snapshots = store::snapshots::history(
        &state.pool,
        scope.tenant.id,
        &stripeid,
        query.from.map(|Timestamp(at)| at),
        query.to.map(|Timestamp(at)| at),
        query.limit.map_or(100, |Int(limit)| limit),
    )
    .await?;
    let bodies = snapshots
        .into_iter()
        .map(|s| {
            Ok(SnapshotBody {
                object: "balanceSnapshot",
                id: s.id,
                stripeid: stripeid.clone(),
                fetched_at: api_timestamp(&s.fetched_at),
                source: s.source,
                balance: s.balance.as_ref().map(StripeBalance::read).transpose()?,
                error: s.error.map(|error| error.0),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(bodies))
}
