//! `POST /webhooks/stripe/{tenant}`: signed Connect events. No bearer token: the
//! signature, made with the tenant's endpoint secret, is the authentication, and it is
//! verified over the raw body before anything in the body is read (DESIGN §7).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::domain::TenantSlug;
use crate::store;
use crate::sync::events::{self, EventError};
use crate::sync::signature;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/stripe/{tenant}", post(receive))
}

async fn receive(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let unknown = || ApiError::not_found("invalid-tenant", "no such tenant");
    let slug = TenantSlug::parse(&slug).ok_or_else(unknown)?;
    let tenant = store::tenants::find_by_slug(&state.pool, slug.as_str())
        .await?
        .ok_or_else(unknown)?;
    let secret = state
        .stripe
        .webhook_secret(&tenant)
        .map_err(|error| ApiError::Internal(error.into()))?
        .ok_or_else(|| {
            ApiError::invalid(
                "webhook-not-configured",
                "this tenant has no webhook endpoint secret (tenant add --webhook-secret-env)",
            )
        })?;
    let header = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    signature::verify(header, &body, secret.expose_secret().as_bytes(), now)
        .map_err(|error| ApiError::invalid("invalid-signature", error.to_string()))?;

    let event = events::parse(&body).map_err(event_error)?;
    let applied = events::apply(
        &state.pool,
        &tenant,
        &state.settings.accounts.owner_metadata_key,
        &event,
    )
    .await
    .map_err(event_error)?;
    tracing::info!(event = %event.id, kind = %event.event_type, outcome = applied.as_str(), "webhook");
    Ok(Json(json!({
        "object": "webhookReceipt",
        "event": event.id,
        "type": event.event_type,
        "outcome": applied.as_str(),
    })))
}

fn event_error(error: EventError) -> ApiError {
    match error {
        EventError::Invalid(message) => ApiError::invalid("invalid-event", message),
        EventError::Database(error) => ApiError::from(error),
        EventError::Snapshot(error) => ApiError::Internal(error.into()),
    }
}
