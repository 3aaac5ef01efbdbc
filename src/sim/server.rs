//! Routing, shared state and the middleware every Stripe request passes through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::Deserialize;

use super::auth;
use super::errors::SimError;
use super::handlers;
use super::idempotency::Replays;
use super::knobs::{Knobs, RateLimiter};
use super::stats::{Outcome, Recorder};
use super::webhook;
use super::world::World;
use super::SimConfig;

/// The API version the simulator answers with when a request names none.
pub const API_VERSION: &str = "2025-04-30.basil";

pub struct SimState {
    world: RwLock<World>,
    knobs: RwLock<Knobs>,
    limiter: Mutex<RateLimiter>,
    pub stats: Recorder,
    pub replays: Mutex<Replays>,
}

// Locks are never held across an await, so a poisoned lock only means another request
// panicked mid-update; the simulator keeps serving rather than failing every request.
impl SimState {
    pub fn new(world: World, config: &SimConfig) -> Self {
        SimState {
            world: RwLock::new(world),
            knobs: RwLock::new(Knobs::from(config)),
            limiter: Mutex::new(RateLimiter::default()),
            stats: Recorder::default(),
            replays: Mutex::new(Replays::default()),
        }
    }

    pub fn world(&self) -> RwLockReadGuard<'_, World> {
        self.world.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn world_mut(&self) -> RwLockWriteGuard<'_, World> {
        self.world.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.knobs.write().unwrap_or_else(PoisonError::into_inner));
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn replays(&self) -> MutexGuard<'_, Replays> {
        self.replays.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn router(state: Arc<SimState>) -> Router {
    let stripe = handlers::router()
        .fallback(unrecognized_url)
        .method_not_allowed_fallback(unrecognized_url)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    let control = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset))
        .route("/_sim/webhooks", post(send_webhook));
    control.merge(stripe).with_state(state)
}

/// Outermost: request id, in-flight count, stats, Stripe's response headers, and the
/// rendering of error bodies (which need the request id).
async fn observe(
    State(state): State<Arc<SimState>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = new_request_id();
    let path = matched.map_or_else(|| request.uri().path().to_string(), |m| m.as_str().into());
    let route = format!("{} {path}", request.method());
    let version = request
        .headers()
        .get("stripe-version")
        .cloned()
        .unwrap_or(HeaderValue::from_static(API_VERSION));
    let in_flight = state.stats.begin();
    let mut response = next.run(request).await;
    drop(in_flight);

    let error = response.extensions_mut().remove::<SimError>();
    if let Some(error) = &error {
        *response.body_mut() = Body::from(error.body(&request_id).to_string());
        tracing::debug!(%request_id, status = %error.status, message = %error.message, "sim error");
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", value);
    }
    headers.insert("stripe-version", version);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    let status = response.status().as_u16();
    state.stats.finish(Outcome {
        route: &route,
        status,
        rate_limited: status == 429,
        header_violation: error.as_ref().is_some_and(|e| e.header_violation),
    });
    response
}

/// Authenticates the key, applies the rate limit, latency and injected failures; the
/// handlers then apply the header rules through the `Target` extractor.
async fn gate(
    State(state): State<Arc<SimState>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Result<Response, SimError> {
    let arrival = Instant::now();
    let knobs = state.knobs();
    let caller = auth::authenticate(request.headers(), &state.world());
    let admitted = match &caller {
        Ok(caller) => {
            state.stats.arrived(&caller.label, arrival);
            state.stats.used_key(&caller.masked);
            state
                .limiter()
                .admit(&caller.label, knobs.rate_limit, arrival)
        }
        Err(_) => true,
    };
    // Every answer, errors included, takes the configured time, as a real network would.
    tokio::time::sleep(knobs.delay()).await;
    let caller = caller?;
    if !admitted {
        tracing::debug!(key = %caller.label, "rate limited");
        return Err(SimError::rate_limited());
    }
    if knobs.inject_error() {
        return Err(SimError::api_error());
    }
    let route = format!(
        "{} {}",
        request.method(),
        matched
            .as_ref()
            .map_or(request.uri().path(), MatchedPath::as_str)
    );
    auth::authorize(&caller, &route, request.headers())?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

async fn unrecognized_url(method: Method, uri: Uri) -> SimError {
    SimError::unrecognized_url(method.as_str(), uri.path())
}

fn new_request_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(14)
        .map(char::from)
        .collect();
    format!("req_{suffix}")
}

async fn stats(State(state): State<Arc<SimState>>) -> impl IntoResponse {
    Json(state.stats.snapshot())
}

async fn reset(State(state): State<Arc<SimState>>) -> StatusCode {
    state.stats.reset();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct WebhookRequest {
    url: String,
    secret: String,
    #[serde(rename = "type")]
    event_type: String,
    account: String,
}

/// `POST /_sim/webhooks {"url", "secret", "type", "account"}`: sends one signed event.
async fn send_webhook(
    State(state): State<Arc<SimState>>,
    Json(body): Json<WebhookRequest>,
) -> Response {
    let sent = webhook::send(
        &state,
        &body.url,
        &body.secret,
        &body.event_type,
        &body.account,
    )
    .await;
    match sent {
        Ok(status) => Json(HashMap::from([("status", status.as_u16())])).into_response(),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            Json(HashMap::from([("error", format!("{err:#}"))])),
        )
            .into_response(),
    }
}
