//! Stripe's error bodies.
//!
//! A handler returns a [`SimError`]; its `IntoResponse` only records the error in the
//! response extensions. The outer middleware, which owns the request id, renders the body,
//! so every error carries the same `request_log_url` as the `Request-Id` header.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// The error `type`s Stripe uses on the v1 API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Api,
    Idempotency,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Api => "api_error",
            ErrorType::Idempotency => "idempotency_error",
        }
    }
}

/// One Stripe error, before it is rendered.
#[derive(Clone, Debug)]
pub struct SimError {
    pub status: StatusCode,
    pub kind: ErrorType,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// `Stripe-Should-Retry`, sent the way Stripe's API does to steer the SDKs' retry logic.
    pub should_retry: Option<bool>,
    /// Whether this request broke a DESIGN §1 header rule (counted in the stats).
    pub header_violation: bool,
    /// `Stripe-Rate-Limited-Reason` of a 429 (`global-rate`, `endpoint-rate`).
    pub limited_by: Option<&'static str>,
}

impl SimError {
    pub fn new(status: StatusCode, kind: ErrorType, message: impl Into<String>) -> Self {
        SimError {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            should_retry: None,
            header_violation: false,
            limited_by: None,
        }
    }

    pub fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorType::InvalidRequest, message)
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn retry(mut self, should_retry: bool) -> Self {
        self.should_retry = Some(should_retry);
        self
    }

    pub fn limited_by(mut self, reason: &'static str) -> Self {
        self.limited_by = Some(reason);
        self
    }

    pub fn violation(mut self) -> Self {
        self.header_violation = true;
        self
    }

    /// The `{"error": {...}}` body Stripe sends, tied to this request's id.
    pub fn body(&self, request_id: &str) -> Value {
        let mut error = Map::new();
        if let Some(code) = self.code {
            error.insert("code".into(), json!(code));
            error.insert("doc_url".into(), json!(doc_url(code)));
        }
        error.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        error.insert(
            "request_log_url".into(),
            json!(format!(
                "https://dashboard.stripe.com/test/logs/{request_id}?t={}",
                chrono::Utc::now().timestamp()
            )),
        );
        error.insert("type".into(), json!(self.kind.as_str()));
        json!({ "error": error })
    }

    // Constructors for the errors several modules raise.

    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::invalid(
            StatusCode::NOT_FOUND,
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
        )
    }

    pub fn no_such_account(id: &str, param: &str) -> Self {
        Self::invalid(StatusCode::NOT_FOUND, format!("No such account: '{id}'"))
            .code("resource_missing")
            .param(param)
    }

    pub fn api_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Api,
            "Sorry, something went wrong. We've already been notified of the problem, \
             but if you need any help, you can reach us at support.stripe.com/contact.",
        )
        .retry(true)
    }

    pub fn rate_limited() -> Self {
        // Stripe answers 429 with type invalid_request_error and code rate_limit (the SDKs
        // turn any 429 into their RateLimitError); there is no `rate_limit_error` type.
        Self::invalid(
            StatusCode::TOO_MANY_REQUESTS,
            "Request rate limit exceeded. You can learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        )
        .code("rate_limit")
        .retry(true)
    }

    /// What `fail_account` makes every request to that account answer.
    pub fn forced(status: u16, account: &str) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match status.as_u16() {
            429 => Self::rate_limited(),
            404 => Self::no_such_account(account, "account"),
            400..=499 => Self::invalid(
                status,
                format!("The request for account '{account}' was refused by the simulator."),
            ),
            _ => {
                let mut err = Self::api_error();
                err.status = status;
                err
            }
        }
    }
}

fn doc_url(code: &str) -> String {
    format!(
        "https://stripe.com/docs/error-codes/{}",
        code.replace('_', "-")
    )
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(retry) = self.should_retry {
            response.headers_mut().insert(
                "stripe-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        if let Some(reason) = self.limited_by {
            response.headers_mut().insert(
                "stripe-rate-limited-reason",
                HeaderValue::from_static(reason),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"Stripe\""),
            );
        }
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_stripe_shape() {
        let err = SimError::no_such_account("acct_x", "id");
        let body = err.body("req_abc");
        let e = &body["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "resource_missing");
        assert_eq!(e["param"], "id");
        assert_eq!(
            e["doc_url"],
            "https://stripe.com/docs/error-codes/resource-missing"
        );
        assert!(e["request_log_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://dashboard.stripe.com/test/logs/req_abc")));
    }
}
