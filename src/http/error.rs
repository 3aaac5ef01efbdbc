//! The one API error type and its stable body `{"object":"error","code","message"}`
//! (DESIGN §3). Internal detail goes to the log, never the response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::balances::BalanceError;
use crate::fanout::FanoutError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input: nothing was changed.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No such record for this caller (also the answer for another tenant's record).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A cap on concurrent work was reached; retrying later can succeed.
    #[error("{message}")]
    TooMany { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A token that exists but may no longer be used, with a code saying why.
    #[error("{message}")]
    TokenRefused {
        code: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    Forbidden(&'static str),
    /// Stripe could not give us what was asked; the body carries Stripe's error and a hint.
    #[error("Stripe did not return the balance; see failure")]
    Upstream(Box<crate::fanout::Failure>),
    /// The tenant's stored Stripe key cannot be used by this server (wrong
    /// TALLY_MASTER_KEY, or a tampered record): an operator must fix it.
    #[error("the tenant's Stripe credential cannot be used: {0}")]
    TenantCredential(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The request took longer than `server.request_timeout_secs`.
    #[error("the request took longer than {0} s; for balances, ask with a shorter wait and poll the refresh")]
    Timeout(u64),
    /// An answer the framework made by itself (405, 413, …), given the error body.
    #[error("{message}")]
    Framework {
        status: StatusCode,
        code: &'static str,
        message: &'static str,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    object: &'static str,
    code: &'a str,
    message: &'a str,
    /// Only on `stripe-request-failed`: Stripe's error, request id and a hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a crate::fanout::Failure>,
}

impl ApiError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    /// A removed tenant (`tally tenant remove`), however it was named: 404
    /// `tenant-removed`. Its data is kept, but nothing serves it or starts work for it.
    pub fn tenant_removed() -> ApiError {
        ApiError::not_found(
            "tenant-removed",
            "that tenant was removed (tally tenant remove); its data is kept but not served",
        )
    }

    pub fn too_many(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::TooMany {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) | ApiError::TokenRefused { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::TenantCredential(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Framework { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::TooMany { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TokenRefused { code, .. } => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Upstream(_) => "stripe-request-failed",
            ApiError::TenantCredential(_) => "tenant-credential-unusable",
            ApiError::Unavailable(_) => "database-unavailable",
            ApiError::Timeout(_) => "request-timeout",
            ApiError::Framework { code, .. } => code,
            ApiError::Internal(_) => "internal-error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> ApiError {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(error)
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// A tenant secret this server cannot open (wrong master key, tampered record) or a
/// tenant row it cannot use: the same answer on every authenticated endpoint.
impl From<crate::tenants::TenantClientError> for ApiError {
    fn from(error: crate::tenants::TenantClientError) -> ApiError {
        // The messages name the cause (master key, bad base URL), never the key.
        ApiError::TenantCredential(error.to_string())
    }
}

impl From<&FanoutError> for ApiError {
    fn from(error: &FanoutError) -> ApiError {
        match error {
            // The messages name the cause (master key, bad base URL), never the key.
            FanoutError::Tenant(error) => ApiError::TenantCredential(error.to_string()),
            FanoutError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => {
                ApiError::Unavailable(sqlx::Error::PoolTimedOut)
            }
            other => ApiError::Internal(anyhow::anyhow!("balance fan-out failed: {other}")),
        }
    }
}

impl From<FanoutError> for ApiError {
    fn from(error: FanoutError) -> ApiError {
        ApiError::from(&error)
    }
}

impl From<BalanceError> for ApiError {
    fn from(error: BalanceError) -> ApiError {
        match error {
            BalanceError::UnknownAccount => {
                ApiError::not_found("invalid-stripeid", "no stored account has that stripeid")
            }
            BalanceError::UnknownOwner => {
                ApiError::not_found("invalid-accountid", "no stored account has that owner")
            }
            BalanceError::UnknownRefresh => {
                ApiError::not_found("invalid-refreshid", "no balance refresh has that id")
            }
            error @ BalanceError::OtherScope { .. } => {
                ApiError::invalid("invalid-scope", error.to_string())
            }
            BalanceError::Upstream(failure) => ApiError::Upstream(failure),
            BalanceError::Credential(reason) => ApiError::TenantCredential(reason),
            BalanceError::TenantRemoved => ApiError::tenant_removed(),
            BalanceError::Fanout(error) => ApiError::from(&error),
        }
    }
}

/// The answer to a handler that panicked (tower-http `CatchPanicLayer`): 500 with the
/// usual body, `internal-error`, logged once inside the request's span. The panic
/// message goes to the log only.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::Internal(anyhow::anyhow!("the handler panicked: {message}")).into_response()
}

impl ApiError {
    fn body<'a>(&'a self, message: &'a str) -> ErrorBody<'a> {
        ErrorBody {
            object: "error",
            code: self.code(),
            message,
            failure: match self {
                ApiError::Upstream(failure) => Some(&**failure),
                _ => None,
            },
        }
    }

    /// The error body as JSON bytes, for an answer written below the router
    /// (`connections`, for hyper's own refusals).
    pub fn body_bytes(&self) -> Vec<u8> {
        let message = self.to_string();
        serde_json::to_vec(&self.body(&message)).expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // Logged once, here, inside the request's span (which carries the request id).
            tracing::error!(error = ?self, code = self.code(), "request failed");
        }
        let message = self.to_string();
        let body = self.body(&message);
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panicking_handler_answers_500_json_and_is_logged_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let response = tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let app = Router::new()
                    .route(
                        "/boom",
                        get(|| async {
                            let secret_detail = "overflow in date arithmetic";
                            panic!("{secret_detail}");
                            #[allow(unreachable_code)]
                            ""
                        }),
                    )
                    .layer(CatchPanicLayer::custom(panic_response));
                let request = Request::get("/boom").body(Body::empty()).expect("request");
                let response = app.oneshot(request).await.expect("an answer, not a panic");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .expect("body");
                (status, body)
            })
        });
        let (status, body) = response;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"object": "error", "code": "internal-error", "message": "internal error"})
        );
        let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(log.matches("request failed").count(), 1, "{log}");
        assert!(log.contains("overflow in date arithmetic"), "{log}");
    }
}
