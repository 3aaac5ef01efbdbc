//! `POST /webhooks/stripe/{tenant}`: signed Connect events. No bearer token: the
//! signature, made with the tenant's endpoint secret, is the authentication, and it is
//! verified over the raw body before anything in the body is read (DESIGN §7). Every
//! refusal gets one answer, so the endpoint never tells who is a tenant.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Code};
use super::openapi::{api_errors, kind, one_of_strings, Access};
use super::AppState;
use crate::crypto::CryptoError;
use crate::domain::TenantSlug;
use crate::store;
use crate::store::tenants::Tenant;
use crate::sync::events::{self, EventError};
use crate::sync::signature::{self, SignatureError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

api_errors!(
    ReceiveErrors,
    Access::Public,
    [
        Code::InvalidSignature,
        Code::InvalidEvent,
        Code::BodyTooLarge,
        Code::DatabaseUnavailable,
    ]
);

/// What was done with a webhook event.
#[derive(Serialize, ToSchema)]
pub struct WebhookReceipt {
    #[schema(schema_with = webhook_receipt_kind)]
    object: &'static str,
    /// The event's id.
    event: String,
    /// The event's type.
    #[serde(rename = "type")]
    event_type: String,
    /// `applied` (stored, or the account marked changed); `duplicate` (this event id was
    /// seen before); `stale` (older than what is stored or fetched; recorded, not
    /// applied); `ignored` (about no account the tenant lists).
    #[schema(schema_with = webhook_outcome)]
    outcome: &'static str,
}

fn webhook_receipt_kind() -> utoipa::openapi::schema::Schema {
    kind("webhookReceipt")
}

fn webhook_outcome() -> utoipa::openapi::schema::Schema {
    one_of_strings(&["applied", "duplicate", "stale", "ignored"])
}

/// `POST /webhooks/stripe/{tenant}`
#[utoipa::path(
    post,
    path = "/webhooks/stripe/{tenant}",
    tag = "webhooks",
    operation_id = "receiveStripeWebhook",
    description = "Stripe's signed Connect events: `account.updated` stores the account, \
        `account.application.deauthorized` removes it, `balance.available` stores its \
        balance, and every other event about a listed account marks it changed, to be \
        fetched within `refresh.change_delay_ms`; an event about no listed account is \
        ignored. Answered 2xx only once the event is stored, so Stripe retries the rest. \
        No bearer token: `Stripe-Signature` (HMAC-SHA256 with one of the tenant's endpoint \
        secrets: the one set by hand or one of those `tally tenant webhooks` registered; \
        300 s tolerance) is checked over the raw body first. Every refusal (missing, \
        malformed, wrong or stale signature, unknown tenant, tenant without a secret) is the \
        same 400 `invalid-signature`. Each event id is applied once.",
    params(
        ("tenant" = String, Path, description = "The tenant's slug."),
        ("Stripe-Signature" = String, Header, description = "`t=<unix>,v1=<hex>[,v1=…]`"),
    ),
    request_body(content = events::Event, content_type = "application/json",
        description = "The event exactly as Stripe sent it."),
    responses(
        (status = 200, description = "The event was verified and recorded.", body = WebhookReceipt),
        ReceiveErrors,
    )
)]
async fn receive(
    State(state): State<AppState>,
    slug: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookReceipt>, ApiError> {
    // A segment that is not even UTF-8 (`%Aa`) names no tenant: refused like any other.
    let slug = slug.map(|Path(slug)| slug).unwrap_or_default();
    let header = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok());
    let tenant = match verified_tenant(&state, &slug, header, &body).await? {
        Ok(tenant) => tenant,
        Err(refusal) => {
            refusal.log();
            return Err(refused());
        }
    };

    let kept = match events::parse(&body) {
        Ok(event) => events::apply(
            &state.pool,
            &tenant,
            &state.settings.accounts.owner_metadata_key,
            state.settings.max_silence(),
            state.settings.full_history(),
            &event,
        )
        .await
        .map(|applied| (event, applied)),
        Err(error) => Err(error),
    };
    let (event, applied) = match kept {
        Ok(kept) => kept,
        Err(error) => {
            stream_broken(&state, tenant.id);
            return Err(event_error(error));
        }
    };
    tracing::info!(event = %event.id, kind = %event.event_type, outcome = applied.as_str(), "webhook");
    // Stripe's event types are a fixed, documented set, so they are bounded labels;
    // anything else is counted as `other`.
    let kind = if event.event_type.len() <= 64
        && event
            .event_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
    {
        event.event_type.clone()
    } else {
        "other".to_owned()
    };
    metrics::counter!("tally_webhook_events_total", "type" => kind, "outcome" => applied.as_str())
        .increment(1);
    Ok(Json(WebhookReceipt {
        object: "webhookReceipt",
        event: event.id,
        event_type: event.event_type,
        outcome: applied.as_str(),
    }))
}

/// A signed event of the tenant was refused or could not be kept: until every account
/// is fetched again, its stream vouches for nothing before now. Recorded in the
/// background, retried while the database is away (the likely reason the event was
/// not kept), for at most a minute.
fn stream_broken(state: &AppState, tenant_id: i64) {
    let at = chrono::Utc::now();
    let pool = state.pool.clone();
    let cancel = state.tasks.cancel.clone();
    state.tasks.tracker.spawn(async move {
        for _ in 0..60 {
            match store::changes::broken(&pool, tenant_id, at).await {
                Ok(()) => return,
                Err(error) => tracing::warn!(tenant_id, error = %error, "recording a refused event failed; retrying"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        tracing::error!(tenant_id, "could not record a refused event; its stream may vouch for accounts it should not until the next silence");
    });
}

/// The one answer to every refusal before the signature verifies, so an
/// unauthenticated caller cannot tell an unknown tenant, a tenant without a secret
/// and a bad signature apart. The real reason goes to the log ([`Refusal::log`]).
fn refused() -> ApiError {
    ApiError::new(
        Code::InvalidSignature,
        "the Stripe-Signature header does not verify for this endpoint",
    )
}

/// Why a webhook was refused, for the operator's log only.
enum Refusal {
    /// The slug, when it is a well-formed one.
    UnknownTenant(Option<String>),
    NotConfigured(String),
    SecretUnusable(String, CryptoError),
    Signature(String, SignatureError),
}

impl Refusal {
    /// Logs the reason; never a secret, nor anything of the unverified body.
    fn log(&self) {
        match self {
            Refusal::UnknownTenant(slug) => tracing::warn!(
                tenant = slug.as_deref().unwrap_or("(malformed)"),
                reason = "no such tenant",
                "webhook refused"
            ),
            Refusal::NotConfigured(slug) => tracing::warn!(
                tenant = %slug,
                reason = "the tenant has no webhook endpoint secret (tally tenant webhooks, or tenant add --webhook-secret-env)",
                "webhook refused"
            ),
            Refusal::SecretUnusable(slug, error) => tracing::error!(
                tenant = %slug,
                reason = %error,
                "webhook refused: the stored endpoint secret cannot be opened"
            ),
            Refusal::Signature(slug, error) => {
                tracing::warn!(tenant = %slug, reason = %error, "webhook refused");
            }
        }
    }
}

/// Stands in for a missing secret, so that every refusal costs a signature check as
/// an acceptance does, and the response time tells little either.
const NO_SECRET: &[u8] = b"whsec_tally_no_endpoint_secret";

/// The tenant the request is for, if its signature verifies with one of that tenant's
/// endpoint secrets: the hand-set one or one of those `tally tenant webhooks`
/// registered. The outer `Err` only for a failure of our own (the database).
async fn verified_tenant(
    state: &AppState,
    slug: &str,
    header: Option<&str>,
    body: &[u8],
) -> Result<Result<Tenant, Refusal>, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let (tenant, secrets) = match tenant_with_secrets(state, slug).await? {
        Ok(found) => found,
        Err(refusal) => {
            // Checked all the same, so a refusal costs what an acceptance does.
            let _ = signature::verify(header, body, NO_SECRET, now);
            return Ok(Err(refusal));
        }
    };
    let mut refusal = None;
    for secret in &secrets {
        // Each compare is constant-time; the first secret that verifies is enough.
        match signature::verify(header, body, secret.expose_secret().as_bytes(), now) {
            Ok(()) => return Ok(Ok(tenant)),
            Err(error) => refusal = Some(error),
        }
    }
    let error = refusal.expect("tenant_with_secrets returns at least one secret");
    Ok(Err(Refusal::Signature(tenant.slug, error)))
}

/// The tenant and every secret its events may be signed with (at least one).
async fn tenant_with_secrets(
    state: &AppState,
    slug: &str,
) -> Result<Result<(Tenant, Vec<SecretString>), Refusal>, ApiError> {
    let Some(slug) = TenantSlug::parse(slug) else {
        return Ok(Err(Refusal::UnknownTenant(None)));
    };
    // A removed tenant takes no events: answered as an unknown one.
    let found = store::tenants::find_by_slug(&state.pool, slug.as_str())
        .await?
        .filter(|tenant| tenant.disabled_at.is_none());
    let Some(tenant) = found else {
        return Ok(Err(Refusal::UnknownTenant(Some(slug.as_str().to_owned()))));
    };
    let registered = store::webhook_endpoints::list(&state.pool, tenant.id).await?;
    let hand_set = state.stripe.webhook_secret(&tenant).transpose();
    let sealed = registered.iter().map(|endpoint| {
        state
            .stripe
            .master()
            .open(&tenant.slug, &endpoint.secret_ciphertext)
    });
    let (opened, unusable): (Vec<_>, Vec<_>) =
        hand_set.into_iter().chain(sealed).partition(Result::is_ok);
    let secrets: Vec<SecretString> = opened.into_iter().filter_map(Result::ok).collect();
    let mut unusable = unusable.into_iter().filter_map(Result::err);
    if secrets.is_empty() {
        return Ok(Err(match unusable.next() {
            Some(error) => Refusal::SecretUnusable(tenant.slug, error),
            None => Refusal::NotConfigured(tenant.slug),
        }));
    }
    // A secret that cannot be opened is the operator's problem, logged loudly; the
    // others still verify.
    for error in unusable {
        Refusal::SecretUnusable(tenant.slug.clone(), error).log();
    }
    Ok(Ok((tenant, secrets)))
}

fn event_error(error: EventError) -> ApiError {
    match error {
        EventError::Invalid(message) => ApiError::new(Code::InvalidEvent, message),
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
        fn a_tenant_segment_is_a_slug_or_nothing(raw in "\\PC{0,80}") {
            if let Some(slug) = TenantSlug::parse(&raw) {
                prop_assert_eq!(slug.as_str(), raw.as_str());
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
                prop_assert_eq!(event_error(error).code(), Code::InvalidEvent);
            }
        }
    }
}
