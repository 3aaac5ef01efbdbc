//! Routing and the middleware every Stripe request passes through, and the `/_sim`
//! control routes; the state they share is `state.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
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
use super::state::{http_date, SimDate, SimState, TotalsError, API_VERSION};
use super::stats::Outcome;
use super::webhook;
use super::{balance_transactions, ledger_routes, webhook_endpoints};

/// Outermost, on every route: a response without a `Date` gets the simulated clock's
/// current second (hyper would otherwise add the real time).
async fn dated(State(state): State<Arc<SimState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if !response.headers().contains_key(header::DATE) {
        if let Some(value) = http_date(state.clock.now()) {
            response.headers_mut().insert(header::DATE, value);
        }
    }
    response
}

pub fn router(state: Arc<SimState>) -> Router {
    let stripe = handlers::router()
        .merge(balance_transactions::router())
        .merge(webhook_endpoints::router())
        .fallback(unrecognized_url)
        .method_not_allowed_fallback(unrecognized_url)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    let control = Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset))
        .route("/_sim/webhooks", post(send_webhook))
        .route("/_sim/totals", get(totals))
        .route("/_sim/clock", get(clock).post(set_clock))
        .merge(ledger_routes::router());
    control
        .merge(stripe)
        .layer(middleware::from_fn_with_state(state.clone(), dated))
        .with_state(state)
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
    let route = format!(
        "{} {}",
        request.method(),
        matched
            .as_ref()
            .map_or(request.uri().path(), MatchedPath::as_str)
    );
    let caller = auth::authenticate(request.headers(), &state.world());
    let admitted = match &caller {
        Ok(caller) => {
            state.stats.arrived(&caller.label, arrival);
            state.stats.used_key(&caller.masked);
            state.limiter().admit(
                &caller.label,
                &route,
                (knobs.rate_limit, knobs.endpoint_rate_limit),
                arrival,
            )
        }
        Err(_) => Ok(()),
    };
    // Every answer, errors included, takes the configured time, as a real network would.
    tokio::time::sleep(knobs.delay()).await;
    let caller = caller?;
    if let Err(limited) = admitted {
        tracing::debug!(key = %caller.label, %route, reason = limited.reason(), "rate limited");
        return Err(SimError::rate_limited().limited_by(limited.reason()));
    }
    if knobs.inject_error() {
        return Err(SimError::api_error());
    }
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

#[derive(Deserialize)]
struct TotalsQuery {
    platform: String,
}

async fn totals(State(state): State<Arc<SimState>>, Query(q): Query<TotalsQuery>) -> Response {
    match state.totals(&q.platform) {
        Ok(totals) => (SimDate(totals.at), Json(totals)).into_response(),
        Err(TotalsError::UnknownPlatform) => (
            StatusCode::NOT_FOUND,
            Json(HashMap::from([(
                "error",
                format!("no platform {}", q.platform),
            )])),
        )
            .into_response(),
        Err(TotalsError::Overflow) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(HashMap::from([("error", "the totals overflow i64")])),
        )
            .into_response(),
    }
}

async fn clock(State(state): State<Arc<SimState>>) -> impl IntoResponse {
    Json(state.clock.state())
}

#[derive(Deserialize)]
struct ClockRequest {
    paused: Option<bool>,
    speed: Option<f64>,
}

/// `POST /_sim/clock {"paused": true|false, "speed": X}`: both optional.
async fn set_clock(
    State(state): State<Arc<SimState>>,
    Json(body): Json<ClockRequest>,
) -> impl IntoResponse {
    if let Some(speed) = body.speed {
        state.clock.set_speed(speed);
    }
    if let Some(paused) = body.paused {
        state.set_clock_paused(paused);
    }
    Json(state.clock.state())
}
