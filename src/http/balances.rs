//! Balances (DESIGN §3): one account's live or recent balance, the per-currency
//! aggregate (JSON or CSV), and stored history.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::auth::TenantScope;
use super::error::ApiError;
use super::query::QueryParams;
use super::AppState;
use crate::domain::api_timestamp;
use crate::domain::StripeAccountId;
use crate::fanout::{self, Silent};
use crate::store;
use crate::store::tenants::Tenant;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/administrator/connect/stripe-account/balance",
            get(account_balance),
        )
        .route("/api/administrator/connect/balances", get(aggregate))
        .route("/api/administrator/connect/balances/history", get(history))
}

fn max_age(params: &QueryParams, state: &AppState) -> Result<Duration, ApiError> {
    match params.get("max_age") {
        None => Ok(Duration::from_secs(state.settings.refresh.interval_secs)),
        Some(value) => value.parse::<u64>().map(Duration::from_secs).map_err(|_| {
            ApiError::invalid(
                "invalid-max-age",
                "max_age must be a whole number of seconds >= 0",
            )
        }),
    }
}

fn stripeid(params: &QueryParams) -> Result<StripeAccountId, ApiError> {
    params
        .get("stripeid")
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| ApiError::invalid("invalid-stripeid", "stripeid must be an acct_ id"))
}

async fn tenant_row(state: &AppState, scope: &TenantScope) -> Result<Tenant, ApiError> {
    store::tenants::find_by_id(&state.pool, scope.tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("invalid-tenant", "no such tenant"))
}

/// Stripe's balance object with `stripeid`, `fetchedAt` and `source` added.
fn balance_body(stripeid: &str, snapshot: &store::snapshots::Snapshot, balance: &Value) -> Value {
    let mut body = match balance {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    body.insert("stripeid".into(), json!(stripeid));
    body.insert(
        "fetchedAt".into(),
        json!(api_timestamp(&snapshot.fetched_at)),
    );
    body.insert("source".into(), json!(snapshot.source));
    Value::Object(body)
}

/// `GET /api/administrator/connect/stripe-account/balance?stripeid=…&max_age=…`
async fn account_balance(
    scope: TenantScope,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let stripeid = stripeid(&params)?;
    let max_age = max_age(&params, &state)?;
    let account = store::accounts::get(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .filter(|account| account.removed_at.is_none())
        .ok_or_else(|| {
            ApiError::not_found("invalid-stripeid", "no stored account has that stripeid")
        })?;
    let cutoff = Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let recent = store::snapshots::latest(&state.pool, scope.tenant.id, stripeid.as_str())
        .await?
        .filter(|snapshot| snapshot.fetched_at >= cutoff && snapshot.balance.is_some());
    let snapshot = match recent {
        Some(snapshot) => snapshot,
        None => {
            let tenant = tenant_row(&state, &scope).await?;
            state
                .fanout
                .fetch_one(&tenant, stripeid.as_str(), account.platform_id.as_deref())
                .await?;
            store::snapshots::latest(&state.pool, scope.tenant.id, stripeid.as_str())
                .await?
                .ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("snapshot vanished after fetch"))
                })?
        }
    };
    match (&snapshot.balance, &snapshot.error) {
        (Some(balance), _) => Ok(Json(balance_body(stripeid.as_str(), &snapshot, balance))),
        (None, Some(error)) => Err(ApiError::Upstream(error.clone())),
        (None, None) => Err(ApiError::Internal(anyhow::anyhow!(
            "snapshot without balance or error"
        ))),
    }
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

/// `GET /api/administrator/connect/balances?max_age=…&accountid=…&currency=…`
async fn aggregate(
    scope: TenantScope,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let max_age = max_age(&params, &state)?;
    let owner = params.get("accountid");
    let currency = match params.get("currency") {
        None => None,
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(c.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid-currency",
                "currency must be a 3-letter ISO code",
            ))
        }
    };
    if let Some(owner) = owner {
        if store::accounts::count_for_owner(&state.pool, scope.tenant.id, owner).await? == 0 {
            return Err(ApiError::not_found(
                "invalid-accountid",
                "no stored account has that owner",
            ));
        }
    }
    let cutoff = Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    // The polling case: everything is fresh enough, so answer from the kept totals.
    let fresh =
        owner.is_none() && fanout::tenant_is_fresh(&state.pool, scope.tenant.id, cutoff).await?;
    if !fresh {
        let tenant = tenant_row(&state, &scope).await?;
        state
            .fanout
            .refresh(&tenant, owner, max_age, Arc::new(Silent))
            .await
            .map_err(|error| ApiError::from(&*error))?;
    }
    if wants_csv(&headers) {
        let csv = fanout::aggregate::csv(&state.pool, scope.tenant.id, owner, currency.as_deref())
            .await?;
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            )],
            csv,
        )
            .into_response());
    }
    let aggregate = fanout::aggregate::read(
        &state.pool,
        scope.tenant.id,
        &scope.tenant.slug,
        owner,
        currency.as_deref(),
    )
    .await?;
    Ok(Json(aggregate).into_response())
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
