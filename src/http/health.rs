//! Liveness and readiness probes.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::openapi::{api_errors, kind, Access};
use super::AppState;
use crate::store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

api_errors!(HealthErrors, Access::Public, []);
api_errors!(ReadyErrors, Access::Public, [Code::DatabaseUnavailable]);

fn ok() -> utoipa::openapi::schema::Schema {
    kind("ok")
}

/// `/healthz`
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(schema_with = ok)]
    status: &'static str,
}

/// `/readyz`
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(schema_with = ok)]
    status: &'static str,
    #[schema(schema_with = ok)]
    database: &'static str,
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    description = "The process is up. No token needed.",
    responses(
        (status = 200, description = "Up.", body = Health),
        HealthErrors,
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The process can serve: its database answers within two seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    description = "The process can serve: its database answers within 2 s. No token needed.",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        ReadyErrors,
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), store::ping(&state.pool)).await {
        Ok(Ok(())) => Ok(Json(Readiness {
            status: "ok",
            database: "ok",
        })),
        Ok(Err(error)) => Err(ApiError::Unavailable(error)),
        Err(_) => Err(ApiError::Unavailable(sqlx::Error::PoolTimedOut)),
    }
}
