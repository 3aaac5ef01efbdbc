//! The Stripe endpoints: `GET /v1/balance`, `GET /v1/account`, `GET|POST /v1/accounts`,
//! `GET /v1/accounts/{id}`; and what every handler shares (`Target`, idempotent POSTs).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::auth::{self, Acting, Caller};
use super::errors::SimError;
use super::idempotency::Lookup;
use super::objects::{account_json, list_json};
use super::params;
use super::state::{SimDate, SimState};
use super::world::{Account, UnknownCursor, World};

pub fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/v1/balance", get(balance))
        .route("/v1/account", get(own_account))
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route("/v1/accounts/{id}", get(retrieve_account))
}

/// Who is calling and which account the request acts as, after DESIGN §1's header rules.
pub struct Target {
    pub caller: Caller,
    pub acting: Acting,
}

impl FromRequestParts<Arc<SimState>> for Target {
    type Rejection = SimError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<SimState>,
    ) -> Result<Self, Self::Rejection> {
        // The gate middleware authenticates every request before it reaches a handler.
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(SimError::api_error)?;
        let world = state.world();
        let acting = auth::resolve(&caller, &parts.headers, &world)?;
        state.stats.targeted(&world.accounts[acting.account].id);
        Ok(Target { caller, acting })
    }
}

/// An account `fail_account` broke answers its forced status to everything.
pub fn check_failing(account: &Account) -> Result<(), SimError> {
    match account.fail_status {
        Some(status) => Err(SimError::forced(status, &account.id)),
        None => Ok(()),
    }
}

/// The account the request acts as, unless it is set to fail.
pub fn acting<'w>(world: &'w World, target: &Target) -> Result<&'w Account, SimError> {
    let account = &world.accounts[target.acting.account];
    check_failing(account)?;
    Ok(account)
}

/// The balance at the clock's current second, which the `Date` header states: it shows
/// exactly the account's transactions created at or before that second.
async fn balance(
    State(state): State<Arc<SimState>>,
    target: Target,
) -> Result<(SimDate, Json<Value>), SimError> {
    let world = state.world();
    acting(&world, &target)?;
    let (balance, at) = state.balance_now(&world, target.acting.account);
    Ok((SimDate(at), Json(balance)))
}

async fn own_account(
    State(state): State<Arc<SimState>>,
    target: Target,
) -> Result<Json<Value>, SimError> {
    let world = state.world();
    Ok(Json(account_json(acting(&world, &target)?)))
}

async fn retrieve_account(
    State(state): State<Arc<SimState>>,
    target: Target,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    let world = state.world();
    let acting = &world.accounts[target.acting.account];
    check_failing(acting)?;
    let reachable = if acting.id == id {
        Some(target.acting.account)
    } else {
        target
            .acting
            .platform
            .and_then(|p| world.connected_index(&id, p))
    };
    let Some(idx) = reachable else {
        return Err(auth::account_invalid(&target.caller.masked, &id));
    };
    let account = &world.accounts[idx];
    check_failing(account)?;
    Ok(Json(account_json(account)))
}

async fn list_accounts(
    State(state): State<Arc<SimState>>,
    target: Target,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, SimError> {
    let pairs = params::decode(query.as_deref().unwrap_or_default())?;
    let params = params::list_params(&pairs)?;
    let world = state.world();
    check_failing(&world.accounts[target.acting.account])?;
    // Only a platform has connected accounts; anyone else lists nothing.
    let Some(p) = target.acting.platform else {
        return Ok(Json(list_body(&world, &[], false)));
    };
    let page = world
        .list_connected(p, params.limit, params.cursor.as_ref(), &params.created)
        .map_err(|UnknownCursor| {
            let (name, id) = match &params.cursor {
                Some(super::world::Cursor::EndingBefore(id)) => ("ending_before", id.as_str()),
                Some(super::world::Cursor::StartingAfter(id)) => ("starting_after", id.as_str()),
                None => ("starting_after", ""),
            };
            let mut err = SimError::no_such_account(id, name);
            // A bad cursor is a bad parameter, not a missing URL.
            err.status = StatusCode::BAD_REQUEST;
            err
        })?;
    Ok(Json(list_body(&world, &page.data, page.has_more)))
}

fn list_body(world: &World, data: &[usize], has_more: bool) -> Value {
    let data: Vec<Value> = data
        .iter()
        .map(|&i| account_json(&world.accounts[i]))
        .collect();
    list_json(data, has_more, "/v1/accounts")
}

async fn create_account(
    State(state): State<Arc<SimState>>,
    target: Target,
    headers: HeaderMap,
    body: String,
) -> Result<Response, SimError> {
    let Some(p) = target.acting.platform else {
        return Err(SimError::invalid(
            StatusCode::BAD_REQUEST,
            "Only platforms can create connected accounts. Make this request with your \
             platform's key and without the Stripe-Account header.",
        ));
    };
    let pairs = params::decode(&body)?;
    let new = params::new_account(&pairs)?;
    idempotent_post(&state, &target, &headers, pairs, || {
        let idx = state.world_mut().create_connected(p, new);
        tracing::debug!(platform = p, "account created");
        Ok(account_json(&state.world().accounts[idx]))
    })
}

/// Answers a POST with what `create` made, once per `Idempotency-Key`: the same key with
/// the same parameters replays the first response, with others it is refused.
pub fn idempotent_post(
    state: &SimState,
    target: &Target,
    headers: &HeaderMap,
    mut pairs: params::Pairs,
    create: impl FnOnce() -> Result<Value, SimError>,
) -> Result<Response, SimError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(key) = key else {
        return Ok(Json(create()?).into_response());
    };
    // The replay table stays locked while the object is created, so two concurrent
    // requests with one key create one object.
    pairs.sort();
    let scope = (
        target.caller.label.clone(),
        target.acting.account,
        key.clone(),
    );
    let mut replays = state.replays();
    if let Lookup::Replay(body) = replays.lookup(&scope, &pairs)? {
        let mut response = Json(body).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        echo_key(&mut response, &key);
        return Ok(response);
    }
    let body = create()?;
    replays.store(scope, pairs, body.clone());
    drop(replays);
    let mut response = Json(body).into_response();
    echo_key(&mut response, &key);
    Ok(response)
}

/// Stripe echoes the `Idempotency-Key` of a POST on its response.
fn echo_key(response: &mut Response, key: &str) {
    if let Ok(value) = HeaderValue::from_str(key) {
        response.headers_mut().insert("idempotency-key", value);
    }
}
