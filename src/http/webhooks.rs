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
    let slug = tenant_slug(&slug)?;
    let tenant = store::tenants::find_by_slug(&state.pool, slug.as_str())
        .await?
        .ok_or_else(unknown_tenant)?;
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

fn unknown_tenant() -> ApiError {
    ApiError::not_found("invalid-tenant", "no such tenant")
}

/// The `{tenant}` of the endpoint; what cannot be a slug is an unknown tenant.
fn tenant_slug(raw: &str) -> Result<TenantSlug, ApiError> {
    TenantSlug::parse(raw).ok_or_else(unknown_tenant)
}

fn event_error(error: EventError) -> ApiError {
    match error {
        EventError::Invalid(message) => ApiError::invalid("invalid-event", message),
        EventError::Database(error) => ApiError::from(error),
        EventError::Snapshot(error) => ApiError::Internal(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_tenant_segment_is_a_slug_or_an_unknown_tenant(raw in "\\PC{0,80}") {
            match tenant_slug(&raw) {
                Ok(slug) => prop_assert_eq!(slug.as_str(), raw.as_str()),
                Err(error) => {
                    prop_assert_eq!(error.status().as_u16(), 404);
                    prop_assert_eq!(error.code(), "invalid-tenant");
                }
            }
        }

        #[test]
        fn any_signature_header_and_body_is_verified_without_panicking(
            header in prop_oneof![
                "[ -~]{0,80}",
                (any::<i64>(), "[0-9a-f]{0,64}").prop_map(|(t, v1)| format!("t={t},v1={v1}")),
            ],
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
        ) {
            // Malformed, overflowing or far-off timestamps are refusals, not panics.
            let _ = signature::verify(Some(&header), &body, b"whsec_test", now);
        }

        #[test]
        fn any_verified_body_parses_or_is_an_invalid_event(body in prop::collection::vec(any::<u8>(), 0..128)) {
            if let Err(error) = events::parse(&body) {
                prop_assert_eq!(event_error(error).code(), "invalid-event");
            }
        }
    }
}
