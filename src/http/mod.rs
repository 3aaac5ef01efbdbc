//! The axum application: state, routers (one file per resource) and the middleware
//! stack, built once here.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod balances;
pub mod close;
pub mod connections;
pub mod error;
mod error_bodies;
pub mod health;
pub mod metrics;
pub mod openapi;
mod paging;
mod params;
mod query;
mod streams;
pub mod sync;
pub mod tokens;
pub mod totals;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderName};
use axum::Router;
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::balances::Balances;
use crate::config::Settings;
use crate::refresh::{Refresher, RefresherOptions, WorkerKind};
use crate::tasks::Tasks;
use crate::tenants::StripeTenants;

/// What every handler can reach. One `Arc`: axum clones the state for each request
/// (and each `State` extractor), and every clone of a struct of handles bumped one
/// shared counter per handle, each a cache line the two cores passed back and forth.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The handles behind [`AppState`].
pub struct Shared {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// Stripe access per tenant (sealed keys open with the master key).
    pub stripe: Arc<StripeTenants>,
    /// This process's refresher (woken when a request makes a demand).
    pub refresher: Refresher,
    /// Background work (syncs, the refresher) stops with these on shutdown.
    pub tasks: Tasks,
    tokens: Arc<auth::TokenCache>,
    /// Last uses of tokens, written in batches by the composition root.
    pub token_uses: Arc<auth::TokenUses>,
    streams: Arc<streams::Streams>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        stripe: Arc<StripeTenants>,
        tasks: Tasks,
    ) -> AppState {
        let refresher = Refresher::new(
            pool.clone(),
            stripe.clone(),
            RefresherOptions::from_settings(&settings),
            WorkerKind::Serve,
            tasks.clone(),
        );
        AppState(Arc::new(Shared {
            pool,
            streams: Arc::new(streams::Streams::from_settings(&settings)),
            settings,
            stripe,
            refresher,
            tasks,
            tokens: Arc::new(auth::TokenCache::default()),
            token_uses: Arc::new(auth::TokenUses::default()),
        }))
    }

    /// The balance use cases, with this process's refresher.
    pub fn balances(&self) -> Balances {
        Balances {
            pool: self.pool.clone(),
            stripe: self.stripe.clone(),
            refresher: Some(self.refresher.clone()),
            interval: std::time::Duration::from_secs(self.settings.refresh.interval_secs),
            max_silence: self.settings.max_silence(),
        }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Webhook payloads and admin requests are small; anything bigger is refused.
const BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// The whole HTTP application, with its middleware stack.
pub fn app(state: AppState) -> Router {
    let timeout = state.settings.request_timeout();
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map_or(request.uri().path(), MatchedPath::as_str);
            let request_id = request
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), route, request_id)
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    let stack = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::SET_COOKIE,
            HeaderName::from_static("stripe-signature"),
        ]))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(axum::middleware::from_fn(error_bodies::ensure_error_body))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            error_bodies::time_limit,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
    let (api, _) = api_routes().split_for_parts();
    api
        // Not in the OpenAPI document: Prometheus text for scrapers.
        .merge(metrics::router(&state.settings.server))
        .merge(admin::router())
        // Route layers skip the fallback: count unknown paths too, as `unmatched`.
        .fallback(axum::handler::Handler::layer(
            not_found,
            axum::middleware::from_fn(metrics::track),
        ))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(stack)
        .with_state(state)
}

/// Every route of the API, each with its `#[utoipa::path]` description: the router
/// and `GET /openapi.json` are both made from this one list. Only `/metrics` (and the
/// HTML pages for people) are routed outside it, and stay out of the document.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(accounts::router())
        .merge(balances::router())
        .merge(sync::router())
        .merge(tokens::router())
        .merge(audit::router())
        .merge(totals::router())
        .merge(close::router())
        .merge(webhooks::router())
        .routes(routes!(openapi::serve_document))
}

/// An unknown path: 404 `not-found`. A path under a resource of records that names
/// none of them (`…/refreshes/`, `…/sync/a/b`) answers as that resource answers an
/// unknown id, after the same check of who is asking: the resource's own code.
async fn not_found(State(state): State<AppState>, request: Request) -> error::ApiError {
    let (mut parts, _) = request.into_parts();
    let Some(records) = Records::under(parts.uri.path()) else {
        return error::ApiError::new(error::Code::NotFound, "no such endpoint");
    };
    let allowed = match records {
        Records::Refreshes | Records::SyncRuns => {
            auth::TenantScope::from_request_parts(&mut parts, &state)
                .await
                .map(drop)
        }
        Records::Tokens => auth::Owner::from_request_parts(&mut parts, &state)
            .await
            .map(drop),
    };
    match (allowed, records) {
        (Err(refused), _) => refused,
        (Ok(()), Records::Refreshes) => balances::unknown_refresh(),
        (Ok(()), Records::SyncRuns) => sync::unknown_run(),
        (Ok(()), Records::Tokens) => tokens::unknown_token(),
    }
}

/// The resources whose records are addressed by an id in the path.
#[derive(Clone, Copy)]
enum Records {
    Refreshes,
    SyncRuns,
    Tokens,
}

impl Records {
    fn under(path: &str) -> Option<Records> {
        [
            (
                "/api/administrator/connect/balances/refreshes/",
                Records::Refreshes,
            ),
            ("/api/administrator/connect/sync/", Records::SyncRuns),
            ("/api/administrator/tokens/", Records::Tokens),
        ]
        .into_iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map(|(_, records)| records)
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish. Connections are capped and timed as `connections` says: at most
/// `server.max_connections`, a request head within `server.header_read_timeout_secs`,
/// idle between requests at most `server.keep_alive_timeout_secs`, and a client that
/// stops reading a response is disconnected after `api.stream_idle_timeout_secs`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = connections::ConnectionLimits::from_settings(&state.settings);
    connections::serve(listener, app(state), limits, shutdown).await
}
