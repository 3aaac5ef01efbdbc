//! The Dashboard-compatible stored-account endpoints (DESIGN §3): same paths,
//! parameters, codes and record shape as the Dashboard Stripe Connect module.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::auth::TenantScope;
use super::error::ApiError;
use super::query::QueryParams;
use super::AppState;
use crate::domain::api_timestamp;
use crate::domain::StripeAccountId;
use crate::store;
use crate::store::accounts::AccountRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/administrator/connect/stripe-accounts", get(list))
        .route(
            "/api/administrator/connect/stripe-accounts-count",
            get(count),
        )
        .route("/api/administrator/connect/stripe-account", get(one))
}

/// Pages larger than this are streamed row by row instead of collected.
const STREAM_ABOVE: i64 = 500;
/// Rows per chunk written to a streamed body.
const ROWS_PER_CHUNK: usize = 64;

static X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// The listing's query, parsed at the edge.
#[derive(Debug, PartialEq, Eq)]
struct ListQuery {
    owner: Option<String>,
    offset: i64,
    limit: i64,
    all: bool,
}

impl ListQuery {
    fn parse(raw: Option<&str>, default_limit: i64) -> Result<ListQuery, ApiError> {
        let params = QueryParams::parse(raw)?;
        let offset = match params.get("offset") {
            None => 0,
            Some(value) => value
                .parse::<i64>()
                .ok()
                .filter(|offset| *offset >= 0)
                .ok_or_else(|| {
                    ApiError::invalid("invalid-offset", "offset must be an integer >= 0")
                })?,
        };
        let limit = match params.get("limit") {
            None => default_limit,
            Some(value) => value
                .parse::<i64>()
                .ok()
                .filter(|limit| *limit >= 1)
                .ok_or_else(|| {
                    ApiError::invalid("invalid-limit", "limit must be an integer >= 1")
                })?,
        };
        let all = match params.get("all") {
            None => false,
            Some(value) => parse_bool(value)
                .ok_or_else(|| ApiError::invalid("invalid-all", "all must be true or false"))?,
        };
        Ok(ListQuery {
            owner: params.get("accountid").map(str::to_owned),
            offset,
            limit,
            all,
        })
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn unknown_owner() -> ApiError {
    ApiError::not_found(
        "invalid-accountid",
        "invalid querystring accountid: no stored account has that owner",
    )
}

/// Counts the records the listing would walk, refusing an unknown owner.
async fn listed_count(
    state: &AppState,
    tenant_id: i64,
    owner: Option<&str>,
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
async fn list(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref(), state.settings.api.page_size)?;
    let streamed = query.all || query.limit > STREAM_ABOVE;
    let (total, rows) = match (&query.owner, streamed) {
        (_, true) => {
            let total = listed_count(&state, scope.tenant.id, query.owner.as_deref()).await?;
            let (offset, limit) = if query.all {
                (0, None)
            } else {
                (query.offset, Some(query.limit))
            };
            let mut response = stream_records(&state, &scope, query.owner, offset, limit);
            response
                .headers_mut()
                .insert(X_TOTAL_COUNT.clone(), HeaderValue::from(total));
            return Ok(response);
        }
        (owner, false) => {
            let page = store::accounts::page_with_total(
                &state.pool,
                scope.tenant.id,
                owner.as_deref(),
                query.offset,
                query.limit,
            )
            .await?;
            if owner.is_some() && page.total == 0 {
                return Err(unknown_owner());
            }
            (page.total, page.rows)
        }
    };
    let records = rows
        .iter()
        .map(|row| StripeAccountRecord::new(row, &scope.tenant.slug))
        .collect::<Result<Vec<_>, _>>()?;
    let mut response = Json(records).into_response();
    response
        .headers_mut()
        .insert(X_TOTAL_COUNT.clone(), HeaderValue::from(total));
    Ok(response)
}

/// Streams records as one JSON array from a database cursor, so `all=true` on a
/// million-account tenant holds one chunk in memory, not the tenant.
fn stream_records(
    state: &AppState,
    scope: &TenantScope,
    owner: Option<String>,
    offset: i64,
    limit: Option<i64>,
) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let pool = state.pool.clone();
    let tenant_id = scope.tenant.id;
    let slug = scope.tenant.slug.clone();
    let take = limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    });
    tokio::spawn(async move {
        let mut rows = store::accounts::stream_all(&pool, tenant_id, owner.as_deref(), offset)
            .take(take)
            .chunks(ROWS_PER_CHUNK);
        let mut first = true;
        let mut chunk = b"[".to_vec();
        while let Some(batch) = rows.next().await {
            for row in batch {
                let written = row.map_err(anyhow::Error::from).and_then(|row| {
                    let record = StripeAccountRecord::new(&row, &slug)?;
                    if !first {
                        chunk.push(b',');
                    }
                    serde_json::to_writer(&mut chunk, &record)?;
                    Ok(())
                });
                if let Err(error) = written {
                    // Headers are gone; ending the body early tells the client the
                    // array is incomplete (it no longer parses).
                    tracing::error!(error = ?error, "streaming stripe-accounts failed");
                    let _ = sender
                        .send(Err(std::io::Error::other("stream failed")))
                        .await;
                    return;
                }
                first = false;
            }
            if sender
                .send(Ok(Bytes::from(std::mem::take(&mut chunk))))
                .await
                .is_err()
            {
                return; // the client went away
            }
        }
        chunk.push(b']');
        let _ = sender.send(Ok(Bytes::from(chunk))).await;
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(ReceiverStream::new(receiver)),
    )
        .into_response()
}

/// `GET /api/administrator/connect/stripe-accounts-count`
async fn count(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<i64>, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let total = listed_count(&state, scope.tenant.id, params.get("accountid")).await?;
    Ok(Json(total))
}

/// `GET /api/administrator/connect/stripe-account?stripeid=acct_…`
async fn one(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let stripeid = params
        .get("stripeid")
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| ApiError::invalid("invalid-stripeid", "stripeid must be an acct_ id"))?;
    let row = store::accounts::get(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("invalid-stripeid", "no stored account has that stripeid")
        })?;
    let record = StripeAccountRecord::new(&row, &scope.tenant.slug)?;
    Ok(Json(record).into_response())
}

/// The Dashboard module's record shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StripeAccountRecord<'a> {
    stripeid: &'a str,
    object: &'static str,
    accountid: Option<&'a str>,
    appid: &'a str,
    platformid: Option<&'a str>,
    /// Stripe's account object exactly as stored, not re-parsed.
    stripe_object: &'a RawValue,
    created_at: String,
    updated_at: String,
    /// Only on records Stripe no longer returns; they are kept, not deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_at: Option<String>,
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

    fn parse(raw: &str) -> Result<ListQuery, &'static str> {
        ListQuery::parse(Some(raw), 10).map_err(|error| error.code())
    }

    #[test]
    fn defaults_follow_the_configured_page_size() {
        assert_eq!(
            ListQuery::parse(None, 7).ok(),
            Some(ListQuery {
                owner: None,
                offset: 0,
                limit: 7,
                all: false
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
    }

    #[test]
    fn well_formed_values_are_taken() {
        let query = parse("offset=3&limit=2&all=TRUE&accountid=acct_o").expect("valid");
        assert_eq!(
            query,
            ListQuery {
                owner: Some("acct_o".into()),
                offset: 3,
                limit: 2,
                all: true
            }
        );
    }
}
