//! The Dashboard-compatible stored-account endpoints (DESIGN §3): same paths,
//! parameters, codes and record shape as the Dashboard Stripe Connect module.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TenantScope;
use super::connections::Connection;
use super::error::{ApiError, Code};
use super::openapi::{api_errors, Access, TenantParam};
use super::params::{Flag, Int};
use super::query::ApiQuery;
use super::streams::StreamSlot;
use super::AppState;
use crate::domain::api_timestamp;
use crate::domain::{OwnerId, StripeAccountId};
use crate::store;
use crate::store::accounts::{AccountRow, Direction, ListingKey, CHUNK_ROWS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(count))
        .routes(routes!(one))
}

type Offset = Int<0, { i64::MAX }>;
type ListLimit = Int<1, { i64::MAX }>;

/// The listing's query parameters (checked together by [`ListParams::listing`]).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Records to skip, newest `createdAt` first (ties by stripeid); default 0. Not with
    /// a cursor.
    #[param(inline)]
    offset: Option<Offset>,
    /// Records per page; default `api.page_size` (`PAGE_SIZE`). Above 500 the page is
    /// streamed; with a cursor at most 500.
    #[param(inline)]
    limit: Option<ListLimit>,
    /// `true` (or `1`): every record, streamed, `offset` and `limit` ignored. Not with a
    /// cursor.
    #[param(inline)]
    all: Option<Flag>,
    /// Only the records of this owner (the platform's own user id, from the Stripe
    /// account's metadata). An owner with no stored account is 404 `invalid-accountid`.
    #[param(inline)]
    accountid: Option<OwnerId>,
    /// A cursor: the page of records after this listed account (at most 500 per page).
    /// With `offset`, `all=true` or `ending_before`: 400 `invalid-paging`.
    #[param(inline)]
    starting_after: Option<StripeAccountId>,
    /// A cursor: the page of records before this listed account.
    #[param(inline)]
    ending_before: Option<StripeAccountId>,
}

/// The `accountid` filter of the count.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OwnerQuery {
    /// Only the records of this owner; an owner with no stored account is 404
    /// `invalid-accountid`.
    #[param(inline)]
    pub accountid: Option<OwnerId>,
}

/// One account, by its Stripe id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AccountQuery {
    /// The account's Stripe id.
    #[param(inline)]
    pub stripeid: StripeAccountId,
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
const STREAM_ABOVE: i64 = 500;
/// Records per piece written to a streamed body.
const ROWS_PER_PIECE: usize = 64;
/// Pieces buffered between a stream's reader and its client.
const PIECES_BUFFERED: usize = 4;

static X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// The listing's query, parsed at the edge.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    owner: Option<OwnerId>,
    offset: i64,
    limit: i64,
    all: bool,
    /// `starting_after` / `ending_before`: a page by cursor instead of by offset.
    cursor: Option<(Direction, StripeAccountId)>,
}

/// The largest page by cursor (a cursor page is never streamed).
const CURSOR_LIMIT_MAX: i64 = 500;

impl ListParams {
    /// The parameters checked together: a cursor takes neither `offset` nor `all`, and
    /// at most 500 records.
    fn listing(self, default_limit: i64) -> Result<ListQuery, ApiError> {
        let cursor = match (self.starting_after, self.ending_before) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "give starting_after or ending_before, not both",
                ))
            }
            (Some(id), None) => Some((Direction::Forward, id)),
            (None, Some(id)) => Some((Direction::Backward, id)),
            (None, None) => None,
        };
        let limit = self.limit.map_or(default_limit, |Int(limit)| limit);
        let all = self.all.is_some_and(|Flag(all)| all);
        if cursor.is_some() {
            if self.offset.is_some() {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "offset and a cursor (starting_after, ending_before) cannot be combined",
                ));
            }
            if all {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "all=true and a cursor (starting_after, ending_before) cannot be combined",
                ));
            }
            if limit > CURSOR_LIMIT_MAX {
                return Err(ApiError::new(
                    Code::InvalidLimit,
                    "with a cursor, limit is an integer from 1 to 500",
                ));
            }
        }
        Ok(ListQuery {
            owner: self.accountid,
            offset: self.offset.map_or(0, |Int(offset)| offset),
            limit,
            all,
            cursor,
        })
    }
}

impl ListQuery {
    #[cfg(test)]
    fn parse(raw: Option<&str>, default_limit: i64) -> Result<ListQuery, ApiError> {
        super::query::parse::<ListParams>(raw)?.listing(default_limit)
    }
}

fn unknown_owner() -> ApiError {
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
            let count =
                store::accounts::count_for_owner(&state.pool, tenant_id, owner.as_str()).await?;
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
    let owner = query.owner.as_ref().map(OwnerId::as_str);
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
            // One more than asked says whether the walk goes on past this page.
            let page = store::accounts::page_from_cursor(
                &state.pool,
                scope.tenant.id,
                owner,
                stripeid.as_str(),
                *direction,
                query.limit + 1,
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
            let (mut rows, total) = (page.rows, page.total);
            let more = rows.len() as i64 > query.limit;
            match direction {
                Direction::Forward => {
                    rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
                    (rows, total, true, more)
                }
                Direction::Backward => {
                    if more {
                        rows.remove(0);
                    }
                    (rows, total, more, true)
                }
            }
        }
    };
    let records = rows
        .iter()
        .map(|row| StripeAccountRecord::new(row, &scope.tenant.slug))
        .collect::<Result<Vec<_>, _>>()?;
    let link = page_links(&query, &rows, has_prev, has_next, raw.as_deref());
    let mut response = Json(records).into_response();
    let headers = response.headers_mut();
    headers.insert(X_TOTAL_COUNT.clone(), HeaderValue::from(total));
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LINK, link);
    }
    Ok(response)
}

/// The RFC 8288 `Link` header of a page: `rel="next"` (records after its last) and
/// `rel="prev"` (records before its first), by cursor, keeping the other parameters.
fn page_links(
    query: &ListQuery,
    rows: &[AccountRow],
    has_prev: bool,
    has_next: bool,
    raw: Option<&str>,
) -> Option<String> {
    let kept: Vec<(String, String)> = super::query::pairs(raw)
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| !matches!(key.as_str(), "offset" | "starting_after" | "ending_before"))
        .collect();
    let link = |cursor: &str, id: &str, rel: &str| {
        let mut pairs = kept.clone();
        if !pairs.iter().any(|(key, _)| key == "limit") {
            pairs.push(("limit".into(), query.limit.to_string()));
        }
        pairs.push((cursor.into(), id.into()));
        let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("</api/administrator/connect/stripe-accounts?{encoded}>; rel=\"{rel}\"")
    };
    let mut links = Vec::new();
    if let (true, Some(first)) = (has_prev, rows.first()) {
        links.push(link("ending_before", &first.stripeid, "prev"));
    }
    if let (true, Some(last)) = (has_next, rows.last()) {
        links.push(link("starting_after", &last.stripeid, "next"));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

/// A streamed listing: `all=true`, or a page above [`STREAM_ABOVE`]. The first chunk
/// is an ordinary offset page (with the total for `X-Total-Count`); the rest follow
/// by keyset, one short query per chunk, so the stream holds a pooled connection only
/// while a chunk is read. The body is the same JSON array, in the same order, as the
/// offset pages would give.
async fn stream_listing(
    state: &AppState,
    scope: &TenantScope,
    query: ListQuery,
    connection: Option<Connection>,
) -> Result<Response, ApiError> {
    let slot = state.streams.open(scope.token_id)?;
    let (offset, wanted) = if query.all {
        (0, usize::MAX)
    } else {
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        (query.offset, limit)
    };
    let owner = query.owner.map(|owner| owner.as_str().to_owned());
    let first_chunk = wanted.min(CHUNK_ROWS);
    let first = {
        let _turn = slot.read_turn().await;
        store::accounts::page_with_total(
            &state.pool,
            scope.tenant.id,
            owner.as_deref(),
            offset,
            i64::try_from(first_chunk).expect("a chunk fits i64"),
        )
        .await?
    };
    if owner.is_some() && first.total == 0 {
        return Err(unknown_owner());
    }
    let listing = StreamedListing {
        pool: state.pool.clone(),
        tenant_id: scope.tenant.id,
        slug: scope.tenant.slug.clone(),
        owner,
        wanted,
    };
    let body = listing.spawn(slot, first.rows, first_chunk, connection);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(X_TOTAL_COUNT.clone(), HeaderValue::from(first.total));
    Ok(response)
}

/// What a streamed listing reads, and how much of it.
struct StreamedListing {
    pool: sqlx::PgPool,
    tenant_id: i64,
    slug: String,
    owner: Option<String>,
    /// Records to send at most (`usize::MAX`: every one).
    wanted: usize,
}

/// Why a stream ended before its closing bracket.
#[derive(Debug)]
enum StreamStop {
    /// The client went away.
    Gone,
    /// The client took nothing for the idle timeout.
    Idle,
    Failed(anyhow::Error),
}

impl StreamedListing {
    /// Starts the reader task and returns the body it feeds. The body ends with an
    /// error (the connection is cut, so the client sees an incomplete response, never
    /// a short array) unless the reader got to the closing bracket. A client that
    /// took nothing for the idle timeout loses its slot and its connection together:
    /// the connection is closed at once, not left to hyper's stalled write.
    fn spawn(
        self,
        slot: StreamSlot,
        first: Vec<AccountRow>,
        first_asked: usize,
        connection: Option<Connection>,
    ) -> Body {
        let (pieces, receiver) = mpsc::channel::<Bytes>(PIECES_BUFFERED);
        let (finished, completed) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut out = ArrayWriter::new(pieces, slot.idle_timeout());
            let outcome = self.run(&slot, &mut out, first, first_asked).await;
            match outcome {
                Ok(()) => {
                    let _ = finished.send(());
                }
                Err(StreamStop::Gone) => tracing::debug!("the client left a streamed listing"),
                Err(StreamStop::Idle) => {
                    tracing::info!(
                        timeout_secs = slot.idle_timeout().as_secs(),
                        "the client stopped reading a streamed listing; ended it and closed its connection"
                    );
                    if let Some(connection) = &connection {
                        connection.close();
                    }
                }
                Err(StreamStop::Failed(error)) => {
                    tracing::error!(error = ?error, "streaming stripe-accounts failed");
                }
            }
            // The slot is freed here, with the task.
        });
        let ending = futures::stream::once(async move {
            match completed.await {
                Ok(()) => None,
                Err(_) => Some(Err(std::io::Error::other("the listing stream ended early"))),
            }
        })
        .filter_map(std::future::ready);
        Body::from_stream(
            ReceiverStream::new(receiver)
                .map(Ok::<_, std::io::Error>)
                .chain(ending),
        )
    }

    async fn run(
        &self,
        slot: &StreamSlot,
        out: &mut ArrayWriter,
        mut rows: Vec<AccountRow>,
        mut asked: usize,
    ) -> Result<(), StreamStop> {
        let mut left = self.wanted;
        loop {
            let more_stored = rows.len() >= asked;
            for row in rows.iter().take(left) {
                let record = StripeAccountRecord::new(row, &self.slug)
                    .map_err(|error| StreamStop::Failed(error.into()))?;
                out.push(&record).await?;
            }
            left = left.saturating_sub(rows.len());
            let Some(last) = rows.last() else { break };
            if left == 0 || !more_stored {
                break;
            }
            let after = ListingKey::from(last);
            rows = {
                let _turn = slot.read_turn().await;
                store::accounts::chunk_after(
                    &self.pool,
                    self.tenant_id,
                    self.owner.as_deref(),
                    &after,
                )
                .await
                .map_err(|error| StreamStop::Failed(error.into()))?
            };
            asked = CHUNK_ROWS;
        }
        out.finish().await
    }
}

/// Writes records as one JSON array, a piece of [`ROWS_PER_PIECE`] at a time.
struct ArrayWriter {
    pieces: mpsc::Sender<Bytes>,
    idle_timeout: Duration,
    buffer: Vec<u8>,
    buffered: usize,
    written: usize,
}

impl ArrayWriter {
    fn new(pieces: mpsc::Sender<Bytes>, idle_timeout: Duration) -> ArrayWriter {
        ArrayWriter {
            pieces,
            idle_timeout,
            buffer: b"[".to_vec(),
            buffered: 0,
            written: 0,
        }
    }

    async fn push(&mut self, record: &impl Serialize) -> Result<(), StreamStop> {
        if self.written > 0 {
            self.buffer.push(b',');
        }
        serde_json::to_writer(&mut self.buffer, record)
            .map_err(|error| StreamStop::Failed(error.into()))?;
        self.written += 1;
        self.buffered += 1;
        if self.buffered >= ROWS_PER_PIECE {
            self.send().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StreamStop> {
        self.buffer.push(b']');
        self.send().await
    }

    async fn send(&mut self) -> Result<(), StreamStop> {
        let piece = Bytes::from(std::mem::take(&mut self.buffer));
        self.buffered = 0;
        match tokio::time::timeout(self.idle_timeout, self.pieces.send(piece)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamStop::Gone),
            Err(_) => Err(StreamStop::Idle),
        }
    }
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
    let row = store::accounts::get(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::new(Code::UnknownStripeid, "no stored account has that stripeid")
        })?;
    let record = StripeAccountRecord::new(&row, &scope.tenant.slug)?;
    Ok(Json(record).into_response())
}

/// The Dashboard module's record shape.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = StripeAccount)]
pub struct StripeAccountRecord<'a> {
    /// The Stripe account id.
    #[schema(value_type = String, pattern = "^acct_[A-Za-z0-9]+$")]
    stripeid: &'a str,
    #[schema(schema_with = stripe_account_kind)]
    object: &'static str,
    /// The owner: the platform's own id for the user owning the account, from the
    /// Stripe account's metadata (`accounts.owner_metadata_key`); null when absent.
    #[schema(value_type = Option<String>)]
    accountid: Option<&'a str>,
    /// The tenant's slug.
    #[schema(value_type = String)]
    appid: &'a str,
    /// The platform controlling the account (organization tenants); null for accounts
    /// directly in the organization and for platform tenants.
    #[schema(value_type = Option<String>)]
    platformid: Option<&'a str>,
    /// Stripe's account object exactly as stored, not re-parsed.
    #[schema(value_type = Object)]
    stripe_object: &'a RawValue,
    /// Stripe's `created`.
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Only on records Stripe no longer returns; they are kept, not deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    removed_at: Option<String>,
}

fn stripe_account_kind() -> utoipa::openapi::schema::Schema {
    super::openapi::kind("stripeAccount")
}

impl<'a> StripeAccountRecord<'a> {
    pub fn new(row: &'a AccountRow, appid: &'a str) -> Result<StripeAccountRecord<'a>, ApiError> {
        let stripe_object = serde_json::from_str::<&RawValue>(&row.stripe_object)
            .map_err(|error| ApiError::Internal(error.into()))?;
        Ok(StripeAccountRecord {
            stripeid: &row.stripeid,
            object: "stripeAccount",
            accountid: row.accountid.as_deref(),
            appid,
            platformid: row.platform_id.as_deref(),
            stripe_object,
            created_at: api_timestamp(&row.created_at),
            updated_at: api_timestamp(&row.updated_at),
            removed_at: row.removed_at.as_ref().map(api_timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str) -> Result<ListQuery, &'static str> {
        ListQuery::parse(Some(raw), 10).map_err(|error| error.code().as_str())
    }

    #[test]
    fn defaults_follow_the_configured_page_size() {
        assert_eq!(
            ListQuery::parse(None, 7).ok(),
            Some(ListQuery {
                owner: None,
                offset: 0,
                limit: 7,
                all: false,
                cursor: None,
            })
        );
    }

    #[test]
    fn malformed_values_get_their_own_codes() {
        assert_eq!(parse("offset=-1").unwrap_err(), "invalid-offset");
        assert_eq!(parse("offset=x").unwrap_err(), "invalid-offset");
        assert_eq!(parse("limit=0").unwrap_err(), "invalid-limit");
        assert_eq!(parse("limit=1.5").unwrap_err(), "invalid-limit");
        assert_eq!(parse("all=yes").unwrap_err(), "invalid-all");
        assert_eq!(
            parse("starting_after=x").unwrap_err(),
            "invalid-starting-after"
        );
        assert_eq!(
            parse("ending_before=x").unwrap_err(),
            "invalid-ending-before"
        );
        assert_eq!(
            parse("starting_after=acct_1A&ending_before=acct_1B").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&offset=2").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&all=true").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&limit=501").unwrap_err(),
            "invalid-limit"
        );
    }

    #[test]
    fn well_formed_values_are_taken() {
        let query = parse("offset=3&limit=2&all=TRUE&accountid=acct_o").expect("valid");
        assert_eq!(
            query,
            ListQuery {
                owner: OwnerId::parse("acct_o"),
                offset: 3,
                limit: 2,
                all: true,
                cursor: None,
            }
        );
    }

    /// Pieces of query strings that break parsers.
    fn query() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("offset"),
            Just("limit"),
            Just("all"),
            Just("accountid"),
            Just("stripeid"),
            Just("starting_after"),
            Just("ending_before"),
            Just("x")
        ];
        let value = prop_oneof![
            any::<i128>().prop_map(|n| n.to_string()),
            Just("%00".to_owned()),
            Just("%FF".to_owned()),
            Just("%".to_owned()),
            "[ -~]{0,10}",
            "\\PC{0,6}",
        ];
        let pairs = prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        });
        prop_oneof![pairs, "[ -~]{0,40}", "\\PC{0,20}"]
    }

    proptest! {
        #[test]
        fn the_listing_parser_never_panics_and_answers_only_its_codes(raw in query()) {
            match ListQuery::parse(Some(&raw), 10) {
                Ok(query) => {
                    prop_assert!(query.offset >= 0);
                    prop_assert!(query.limit >= 1);
                }
                Err(error) => {
                    prop_assert_eq!(error.status().as_u16(), 400);
                    prop_assert!(matches!(
                        error.code().as_str(),
                        "invalid-query" | "invalid-offset" | "invalid-limit" | "invalid-all"
                            | "invalid-accountid" | "invalid-starting-after" | "invalid-ending-before"
                    ), "{}", error.code());
                }
            }
        }

        #[test]
        fn the_owner_and_stripeid_parsers_never_let_nul_through(raw in query()) {
            match super::super::query::parse::<OwnerQuery>(Some(&raw)) {
                Ok(OwnerQuery { accountid: Some(owner) }) => prop_assert!(!owner.as_str().contains('\0')),
                Ok(OwnerQuery { accountid: None }) => {}
                Err(error) => prop_assert_eq!(error.code(), Code::MalformedAccountid),
            }
            match super::super::query::parse::<AccountQuery>(Some(&raw)) {
                Ok(AccountQuery { stripeid }) => prop_assert!(stripeid.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
                Err(error) => prop_assert_eq!(error.code(), Code::MalformedStripeid),
            }
        }

        #[test]
        fn every_i64_offset_and_limit_in_range_is_taken_and_nothing_else(n in any::<i128>()) {
            let offset = parse(&format!("offset={n}"));
            let limit = parse(&format!("limit={n}"));
            let fits = i64::try_from(n).is_ok();
            prop_assert_eq!(offset.is_ok(), fits && n >= 0);
            prop_assert_eq!(limit.is_ok(), fits && n >= 1);
            if let Err(code) = offset { prop_assert_eq!(code, "invalid-offset"); }
            if let Err(code) = limit { prop_assert_eq!(code, "invalid-limit"); }
        }
    }
}
