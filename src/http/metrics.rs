//! `GET /metrics`: Prometheus text, with request counts and latencies by route and
//! status, and the Stripe client's own counters.
//!
//! Where it is served: with `server.metrics_bind` unset, on the API address for an
//! owner token; with it set, on that address without a token (a scraper on a private
//! network), and the API address answers 404 like any unknown path.
//!
//! Label values come from small fixed sets (method, route template, status), so no
//! request can add a time series: an exporter keeps every series it has seen for the
//! life of the process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use super::auth::Owner;
use super::error::{ApiError, Code};
use super::AppState;
use crate::config::ServerSettings;
use crate::tasks::Tasks;

/// The process-wide recorder, installed on first use (several apps in one test
/// process share it).
fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// The API address's `/metrics`: for owners, unless metrics have their own address.
pub fn router(server: &ServerSettings) -> Router<AppState> {
    handle();
    if server.metrics_bind.is_some() {
        // No route: the API's fallback answers 404 `not-found`.
        return Router::new();
    }
    Router::new().route("/metrics", get(render_for_owner))
}

async fn render_for_owner(_: Owner) -> Response {
    render().await
}

async fn render() -> Response {
    let body = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// The metrics listener's application: `/metrics` without a token, every other path
/// 404 with the standard error body.
fn metrics_app() -> Router {
    handle();
    Router::new()
        .route("/metrics", get(render))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_app())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `server.metrics_bind`, if set, and serves metrics there on the process's
/// tasks until they are cancelled. Returns the bound address (`None`: metrics stay on
/// the API address). A bind failure is returned, naming the setting.
pub async fn start(server: &ServerSettings, tasks: &Tasks) -> std::io::Result<Option<SocketAddr>> {
    let Some(bind) = server.metrics_bind else {
        return Ok(None);
    };
    let listener = TcpListener::bind(bind).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("binding server.metrics_bind {bind}: {error}"),
        )
    })?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving metrics");
    let stop = tasks.cancel.clone();
    let shutdown = async move { stop.cancelled().await };
    tasks.tracker.spawn(async move {
        if let Err(error) = serve_metrics(listener, shutdown).await {
            tracing::error!(%error, "metrics listener stopped");
        }
    });
    Ok(Some(address))
}

/// Counts and times every request by its route template (not its path, which would
/// put ids into label values).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("route", route),
        ("method", method.to_owned()),
        ("status", status),
    ];
    metrics::counter!("tally_http_requests_total", &labels).increment(1);
    metrics::histogram!("tally_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a label value: the standard ones by name, any other token a client
/// makes up as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label_value() {
        for odd in ["FOO", "get", "PROPFIND", "X-1234", "CONNECT", "TRACE"] {
            let method = Method::from_bytes(odd.as_bytes()).expect("a method token");
            assert_eq!(method_label(&method), "other", "{odd}");
        }
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
    }
}
