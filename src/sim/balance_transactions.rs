//! `GET /v1/balance_transactions` and `GET /v1/balance_transactions/{id}`: the ledger of
//! the account the request acts as (reached like `/v1/balance`). Without activity the
//! world is static and has no transactions: lists are empty. The ledger is first brought up
//! to the clock's current second, which the answer's `Date` states: a list shows exactly
//! the transactions created at or before it (newest first, as Stripe orders them).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::errors::SimError;
use super::events::platform_of;
use super::handlers::{acting, Target};
use super::ledger::{ListError, TxnFilter, TxnType, STRIPE_TXN_TYPES};
use super::objects::list_json;
use super::params;
use super::state::{SimDate, SimState};
use super::txn_objects::balance_transaction_json;
use super::world::Cursor;

pub fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/v1/balance_transactions", get(list))
        .route("/v1/balance_transactions/{id}", get(retrieve))
}

fn no_such(what: &str, id: &str, param: &str, status: StatusCode) -> SimError {
    SimError::invalid(status, format!("No such {what}: '{id}'"))
        .code("resource_missing")
        .param(param)
}

async fn list(
    State(state): State<Arc<SimState>>,
    target: Target,
    RawQuery(query): RawQuery,
) -> Result<(SimDate, Json<Value>), SimError> {
    let pairs = params::decode(query.as_deref().unwrap_or_default())?;
    let (list, extra) =
        params::list_params_with(&pairs, &["type", "payout", "currency", "source"])?;
    let mut filter = TxnFilter {
        created: list.created,
        ..TxnFilter::default()
    };
    let mut payout = None;
    for (name, value) in extra {
        match name.as_str() {
            "type" if STRIPE_TXN_TYPES.contains(&value.as_str()) => filter.kind = Some(value),
            "type" => {
                return Err(SimError::invalid(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Invalid type: must be one of {}",
                        STRIPE_TXN_TYPES.join(", ")
                    ),
                )
                .code("parameter_invalid_string")
                .param("type"))
            }
            "currency" => filter.currency = Some(value.to_ascii_lowercase()),
            "source" => filter.source = Some(value),
            _ => payout = Some(value),
        }
    }
    let world = state.world();
    let account = target.acting.account;
    acting(&world, &target)?;
    let platform = platform_of(&world, account);
    let ledger = state.ledger_now(&world);
    let at = ledger
        .as_ref()
        .map_or_else(|| state.clock.now(), |l| l.stepped_to);
    if let Some(po) = &payout {
        let found = ledger.as_ref().and_then(|l| {
            let (a, pos) = l.locate(po)?;
            let t = &l.account(a)?.txns[pos];
            (a == account && t.kind == TxnType::Payout && t.source.as_deref() == Some(po))
                .then_some(pos)
        });
        let Some(pos) = found else {
            return Err(no_such("payout", po, "payout", StatusCode::NOT_FOUND));
        };
        filter.payout = Some(pos);
    }
    let (data, has_more) = match &ledger {
        None => (Vec::new(), false),
        Some(l) => {
            let (positions, has_more) = l
                .list(account, list.limit, list.cursor.as_ref(), &filter)
                .map_err(|ListError::UnknownCursor| {
                    let (param, id) = match &list.cursor {
                        Some(Cursor::EndingBefore(id)) => ("ending_before", id.as_str()),
                        Some(Cursor::StartingAfter(id)) => ("starting_after", id.as_str()),
                        None => ("starting_after", ""),
                    };
                    no_such("balance transaction", id, param, StatusCode::BAD_REQUEST)
                })?;
            let txns = l
                .account(account)
                .map(|a| a.txns.as_slice())
                .unwrap_or_default();
            let data: Vec<Value> = positions
                .into_iter()
                .map(|pos| balance_transaction_json(&txns[pos], platform))
                .collect();
            (data, has_more)
        }
    };
    if let (None, Some(cursor)) = (&ledger, &list.cursor) {
        // Nothing exists, so no cursor can name anything.
        let (param, id) = match cursor {
            Cursor::EndingBefore(id) => ("ending_before", id),
            Cursor::StartingAfter(id) => ("starting_after", id),
        };
        return Err(no_such(
            "balance transaction",
            id,
            param,
            StatusCode::BAD_REQUEST,
        ));
    }
    Ok((
        SimDate(at),
        Json(list_json(data, has_more, "/v1/balance_transactions")),
    ))
}

async fn retrieve(
    State(state): State<Arc<SimState>>,
    target: Target,
    Path(id): Path<String>,
) -> Result<(SimDate, Json<Value>), SimError> {
    let world = state.world();
    let account = target.acting.account;
    acting(&world, &target)?;
    let platform = platform_of(&world, account);
    let ledger = state.ledger_now(&world);
    let txn = ledger.as_ref().and_then(|l| {
        let (a, pos) = l.locate(&id)?;
        let t = l.account(a)?.txns.get(pos)?;
        (a == account && t.id == id)
            .then(|| (SimDate(l.stepped_to), balance_transaction_json(t, platform)))
    });
    txn.map(|(at, t)| (at, Json(t)))
        .ok_or_else(|| no_such("balance transaction", &id, "id", StatusCode::NOT_FOUND))
}
