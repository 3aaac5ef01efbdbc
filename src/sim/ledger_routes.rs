//! `/_sim/ledger/…`, the ledger's side of a daily close (ledger mode only):
//!
//! - `GET /_sim/ledger/balances?at=<unix seconds>[&account=acct_…]`: the ground truth, per
//!   account and currency the balance the transactions alone give at instant `at` (total:
//!   the `net` of those created at or before `at`; available: the part with
//!   `available_on <= at`; pending: the rest). Injected drift is not part of it.
//! - `POST /_sim/ledger/drift {"account", "currency", "amount"}`: an injected difference,
//!   `amount` added to the account's available balance (what `GET /v1/balance` answers)
//!   with no balance transaction and no event, so the balance no longer ties out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ledger::{known_currency, DriftError};
use super::state::SimState;
use super::world::Home;

pub fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/ledger/balances", get(balances))
        .route("/_sim/ledger/drift", post(drift))
}

/// What `GET /_sim/ledger/balances` answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerBalances {
    /// The instant asked about (simulated unix seconds).
    pub at: i64,
    /// By account id; only accounts with a transaction created by `at`.
    pub accounts: BTreeMap<String, Vec<LedgerBalance>>,
}

/// One currency of an account's ground-truth balance, integer minor units.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerBalance {
    pub currency: String,
    pub available: i64,
    pub pending: i64,
}

/// The body of `POST /_sim/ledger/drift`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriftRequest {
    pub account: String,
    pub currency: String,
    /// Minor units added to the available balance (negative takes away).
    pub amount: i64,
}

/// What `POST /_sim/ledger/drift` answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DriftApplied {
    pub account: String,
    pub currency: String,
    /// All drift injected into this account and currency so far.
    pub drift: i64,
    /// The available balance `GET /v1/balance` now answers in that currency.
    pub available: i64,
}

/// Why a `/_sim/ledger/…` request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// 409: the simulator runs without activity (no ledger).
    NotLedgerMode,
    /// 404.
    UnknownAccount(String),
    /// 400: a malformed query or body, an unknown currency, an instant after the clock's.
    Invalid(String),
    /// 400 for a drift, 500 for the ground truth: a sum would overflow i64.
    Overflow,
}

impl LedgerError {
    fn status(&self, overflow: StatusCode) -> StatusCode {
        match self {
            LedgerError::NotLedgerMode => StatusCode::CONFLICT,
            LedgerError::UnknownAccount(_) => StatusCode::NOT_FOUND,
            LedgerError::Invalid(_) => StatusCode::BAD_REQUEST,
            LedgerError::Overflow => overflow,
        }
    }

    fn message(&self) -> String {
        match self {
            LedgerError::NotLedgerMode => {
                "the simulator has no ledger: start it with --activity-per-hour above 0".into()
            }
            LedgerError::UnknownAccount(id) => format!("no account {id}"),
            LedgerError::Invalid(message) => message.clone(),
            LedgerError::Overflow => "the balance would overflow i64".into(),
        }
    }

    fn answer(&self, overflow: StatusCode) -> Response {
        (
            self.status(overflow),
            Json(json!({ "error": self.message() })),
        )
            .into_response()
    }
}

/// The ground truth at `at` (`None`: the clock's current second) for every connected
/// account, or only for `account` (any account of the simulator). The ledger is first
/// brought up to the clock's second, so every transaction created by `at` exists; an `at`
/// after that second is refused (its transactions do not exist yet).
pub fn balances_at(
    state: &Arc<SimState>,
    at: Option<i64>,
    account: Option<&str>,
) -> Result<LedgerBalances, LedgerError> {
    let world = state.world();
    let ledger = state.ledger_now(&world).ok_or(LedgerError::NotLedgerMode)?;
    let only = account
        .map(|id| {
            world
                .by_id
                .get(id)
                .copied()
                .ok_or_else(|| LedgerError::UnknownAccount(id.to_string()))
        })
        .transpose()?;
    let now = ledger.stepped_to;
    let at = at.unwrap_or(now);
    if at > now {
        return Err(LedgerError::Invalid(format!(
            "at={at} is after the simulated clock ({now}): its transactions do not exist yet"
        )));
    }
    let indexes: Vec<usize> = match only {
        Some(idx) => vec![idx],
        None => (0..world.accounts.len())
            .filter(|&i| matches!(world.accounts[i].home, Home::Connected { .. }))
            .collect(),
    };
    let mut accounts = BTreeMap::new();
    for idx in indexes {
        let Some(l) = ledger.account(idx) else {
            continue;
        };
        let balances = l.balance_at(at).ok_or(LedgerError::Overflow)?;
        if balances.is_empty() {
            continue;
        }
        accounts.insert(
            world.accounts[idx].id.clone(),
            balances
                .into_iter()
                .map(|b| LedgerBalance {
                    currency: b.currency.to_string(),
                    available: b.available,
                    pending: b.pending,
                })
                .collect(),
        );
    }
    Ok(LedgerBalances { at, accounts })
}

/// Injects a difference into an account's available balance (any account of the
/// simulator, in any of its currencies).
pub fn inject_drift(state: &SimState, request: &DriftRequest) -> Result<DriftApplied, LedgerError> {
    let currency = known_currency(&request.currency)
        .ok_or_else(|| LedgerError::Invalid(format!("unknown currency '{}'", request.currency)))?;
    let world = state.world();
    let mut ledger = state
        .ledger_synced(&world)
        .ok_or(LedgerError::NotLedgerMode)?;
    let unknown = || LedgerError::UnknownAccount(request.account.clone());
    let idx = *world.by_id.get(&request.account).ok_or_else(unknown)?;
    let balance = ledger
        .inject_drift(idx, currency, request.amount)
        .map_err(|err| match err {
            DriftError::UnknownAccount => unknown(),
            DriftError::Overflow => LedgerError::Overflow,
        })?;
    let drift = ledger.account(idx).map_or(0, |l| l.drift(currency));
    tracing::debug!(account = %request.account, currency, amount = request.amount, "drift injected");
    Ok(DriftApplied {
        account: request.account.clone(),
        currency: currency.to_string(),
        drift,
        available: balance.available,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancesQuery {
    at: Option<i64>,
    account: Option<String>,
}

async fn balances(State(state): State<Arc<SimState>>, RawQuery(query): RawQuery) -> Response {
    let q: BalancesQuery = match serde_urlencoded::from_str(query.as_deref().unwrap_or_default()) {
        Ok(q) => q,
        Err(err) => {
            return LedgerError::Invalid(format!(
                "bad query ({err}): expected at=<unix seconds> and optionally account=acct_…"
            ))
            .answer(StatusCode::BAD_REQUEST)
        }
    };
    match balances_at(&state, q.at, q.account.as_deref()) {
        Ok(truth) => Json(truth).into_response(),
        Err(err) => err.answer(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

async fn drift(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let request: DriftRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return LedgerError::Invalid(format!(
                "bad body ({err}): expected {{\"account\": \"acct_…\", \"currency\": \"usd\", \
                 \"amount\": <integer minor units>}}"
            ))
            .answer(StatusCode::BAD_REQUEST)
        }
    };
    match inject_drift(&state, &request) {
        Ok(applied) => Json(applied).into_response(),
        Err(err) => err.answer(StatusCode::BAD_REQUEST),
    }
}
