//! `GET /metrics`: Prometheus text, with request counts and latencies by route and
//! status, and the Stripe client's own counters.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

/// The process-wide recorder, installed on first use (several apps in one test
/// process share it).
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

pub fn router() -> Router<AppState> {
    handle();
    Router::new().route("/metrics", get(render))
}

async fn render() -> Response {
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// Counts and times every request by its route template (not its path, which would
/// put ids into label values).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("tally_http_requests_total", &labels).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
