//! What can go wrong talking to Stripe, with what a caller needs to report it (DESIGN §1:
//! keep Stripe's error body and the `Request-Id` on every failure).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stripe::credential::masked_key;

/// Stripe's `{"error": {...}}` body. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    #[serde(default = "api_error_type")]
    pub r#type: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub doc_url: Option<String>,
    #[serde(default)]
    pub request_log_url: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
}

fn api_error_type() -> String {
    "api_error".to_owned()
}

/// Failure of one client call, after any retries.
///
/// Nothing here ever holds the API key: requests put it only in the `Authorization` header,
/// which no variant records, and [`StripeError::redact`] scrubs it from text that came back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with its error body.
    #[error("Stripe API error (HTTP {status}, {}): {}{}", type_and_code(error), self.message(), request_suffix(request_id))]
    Api {
        status: u16,
        /// Boxed to keep `Result<_, StripeError>` small (clippy `result_large_err`).
        error: Box<ApiErrorBody>,
        request_id: Option<String>,
    },
    /// Something answered, but not with the shape Stripe uses (a proxy's HTML page, a cut-off
    /// body, a balance without its arrays).
    #[error(
        "unexpected response from Stripe (HTTP {status}): {detail}{}",
        request_suffix(request_id)
    )]
    Decode {
        status: u16,
        request_id: Option<String>,
        detail: String,
    },
    /// No response: connection refused or reset, DNS, TLS, or the per-attempt timeout.
    #[error("could not reach Stripe{}: {detail}", if *timeout { " (timed out)" } else { "" })]
    Transport { detail: String, timeout: bool },
    /// The request could not be built from the given settings or arguments.
    #[error("Stripe client configuration: {0}")]
    Config(String),
}

fn type_and_code(error: &ApiErrorBody) -> String {
    match &error.code {
        Some(code) => format!("{}/{code}", error.r#type),
        None => error.r#type.clone(),
    }
}

fn request_suffix(request_id: &Option<String>) -> String {
    request_id
        .as_deref()
        .map(|id| format!(" [request {id}]"))
        .unwrap_or_default()
}

impl StripeError {
    /// The HTTP status Stripe (or whatever answered) returned, if anything answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Api { status, .. } | StripeError::Decode { status, .. } => Some(*status),
            StripeError::Transport { .. } | StripeError::Config(_) => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            StripeError::Api { request_id, .. } | StripeError::Decode { request_id, .. } => {
                request_id.as_deref()
            }
            StripeError::Transport { .. } | StripeError::Config(_) => None,
        }
    }

    /// Stripe's error type (`invalid_request_error`, `api_error`, `rate_limit_error`, …), or
    /// tally's own for failures Stripe did not describe.
    pub fn error_type(&self) -> &str {
        match self {
            StripeError::Api { error, .. } => &error.r#type,
            StripeError::Decode { .. } => "decode_error",
            StripeError::Transport { .. } => "connection_error",
            StripeError::Config(_) => "configuration_error",
        }
    }

    /// Stripe's error code (`account_invalid`, `lock_timeout`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            StripeError::Api { error, .. } => error.code.as_deref(),
            _ => None,
        }
    }

    /// A sentence for people, without the status/type decoration of `Display`.
    pub fn message(&self) -> String {
        match self {
            StripeError::Api { status, error, .. } => error
                .message
                .clone()
                .unwrap_or_else(|| format!("Stripe returned HTTP {status} without a message")),
            StripeError::Decode { detail, .. }
            | StripeError::Transport { detail, .. }
            | StripeError::Config(detail) => detail.clone(),
        }
    }

    /// Replaces any occurrence of `key` in the error's text with its masked form. Stripe masks
    /// keys itself; this is the belt to that brace, for proxies and simulators that do not.
    pub fn redact(self, key: &str) -> StripeError {
        if key.is_empty() {
            return self;
        }
        let mask = masked_key(key);
        let scrub = |s: String| {
            if s.contains(key) {
                s.replace(key, &mask)
            } else {
                s
            }
        };
        let scrub_opt = |s: Option<String>| s.map(scrub);
        match self {
            StripeError::Api {
                status,
                error,
                request_id,
            } => StripeError::Api {
                status,
                error: Box::new(ApiErrorBody {
                    r#type: scrub(error.r#type),
                    code: scrub_opt(error.code),
                    message: scrub_opt(error.message),
                    param: scrub_opt(error.param),
                    doc_url: scrub_opt(error.doc_url),
                    request_log_url: scrub_opt(error.request_log_url),
                    decline_code: scrub_opt(error.decline_code),
                }),
                request_id,
            },
            StripeError::Decode {
                status,
                request_id,
                detail,
            } => StripeError::Decode {
                status,
                request_id,
                detail: scrub(detail),
            },
            StripeError::Transport { detail, timeout } => StripeError::Transport {
                detail: scrub(detail),
                timeout,
            },
            StripeError::Config(detail) => StripeError::Config(scrub(detail)),
        }
    }

    /// A transport failure from reqwest, with its cause chain (reqwest's top-level message is
    /// just "error sending request"). reqwest errors carry the URL, never request headers.
    pub(crate) fn transport(err: &reqwest::Error) -> StripeError {
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        StripeError::Transport {
            detail,
            timeout: err.is_timeout(),
        }
    }
}

/// Turns a non-2xx response into an error: Stripe's body when it is one, else a `Decode`
/// that says what arrived instead.
pub(crate) fn error_from_response(
    status: u16,
    request_id: Option<String>,
    content_type: Option<&str>,
    body: &[u8],
) -> StripeError {
    #[derive(Deserialize)]
    struct Envelope {
        error: ApiErrorBody,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => StripeError::Api {
            status,
            error: Box::new(envelope.error),
            request_id,
        },
        Err(e) => StripeError::Decode {
            status,
            request_id,
            detail: format!(
                "expected a Stripe error body: {}",
                not_json_hint(content_type, body, &e)
            ),
        },
    }
}

/// Decodes a 2xx body with `parse` (which explains shape problems), keeping the raw JSON.
pub(crate) fn decode_success<T>(
    status: u16,
    request_id: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    what: &str,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<(T, Value), StripeError> {
    let decode_error = |detail: String| StripeError::Decode {
        status,
        request_id: request_id.map(str::to_owned),
        detail: format!("expected a Stripe {what} object: {detail}"),
    };
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| decode_error(not_json_hint(content_type, body, &e)))?;
    let value = parse(&raw).map_err(decode_error)?;
    Ok((value, raw))
}

/// Says what a body that failed to parse looks like, without quoting it: the content type,
/// the size, and the parser's complaint (which names a position, not the text).
fn not_json_hint(content_type: Option<&str>, body: &[u8], err: &serde_json::Error) -> String {
    let content_type = content_type.unwrap_or("no content type");
    let looks = if err.is_eof() {
        "truncated JSON"
    } else if err.is_syntax() {
        "not JSON"
    } else {
        "JSON of the wrong shape"
    };
    format!("{looks} ({content_type}, {} bytes): {err}", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PERMISSION: &str = r#"{"error": {"type": "invalid_request_error",
        "code": "account_invalid", "param": null, "future_field": 1,
        "message": "The provided key 'sk_test_***1234' does not have access to account 'acct_X' (or that account does not exist). Application access may have been revoked.",
        "doc_url": "https://stripe.com/docs/error-codes/account-invalid",
        "request_log_url": "https://dashboard.stripe.com/test/logs/req_1"}}"#;

    #[test]
    fn decodes_stripe_error_body() {
        let err = error_from_response(
            403,
            Some("req_1".into()),
            Some("application/json"),
            PERMISSION.as_bytes(),
        );
        assert_eq!(err.status(), Some(403));
        assert_eq!(err.request_id(), Some("req_1"));
        assert_eq!(err.error_type(), "invalid_request_error");
        assert_eq!(err.code(), Some("account_invalid"));
        assert!(err.message().starts_with("The provided key"));
        let shown = err.to_string();
        assert!(
            shown.contains("HTTP 403, invalid_request_error/account_invalid"),
            "{shown}"
        );
        assert!(shown.ends_with("[request req_1]"), "{shown}");
        let StripeError::Api { error, .. } = err else {
            panic!("expected Api")
        };
        assert_eq!(
            error.doc_url.as_deref(),
            Some("https://stripe.com/docs/error-codes/account-invalid")
        );
    }

    #[test]
    fn error_without_type_or_message_still_reads() {
        let err = error_from_response(500, None, None, br#"{"error": {}}"#);
        assert_eq!(err.error_type(), "api_error");
        assert_eq!(err.message(), "Stripe returned HTTP 500 without a message");
    }

    #[test]
    fn html_from_a_proxy_is_a_decode_error_without_the_body() {
        let body = b"<html><body><h1>502 Bad Gateway</h1>secret-ish page</body></html>";
        let err = error_from_response(502, None, Some("text/html"), body);
        assert_eq!(err.error_type(), "decode_error");
        assert_eq!(err.status(), Some(502));
        let detail = err.message();
        assert!(
            detail.contains(&format!("not JSON (text/html, {} bytes)", body.len())),
            "{detail}"
        );
        assert!(!detail.contains("Bad Gateway"), "{detail}");
    }

    #[test]
    fn truncated_json_is_named() {
        let (body, ct) = (
            br#"{"object": "balance", "available": [{"amou"#,
            Some("application/json"),
        );
        let err = decode_success(200, Some("req_2"), ct, body, "balance", |_| Ok(()))
            .expect_err("truncated");
        let detail = err.message();
        assert!(
            detail.starts_with("expected a Stripe balance object: truncated JSON"),
            "{detail}"
        );
        assert_eq!(err.request_id(), Some("req_2"));
    }

    #[test]
    fn bad_balance_shape_says_which_field() {
        let body =
            json!({"object": "balance", "livemode": false, "available": {"usd": 1}, "pending": []});
        let err = decode_success(
            200,
            None,
            Some("application/json"),
            body.to_string().as_bytes(),
            "balance",
            crate::stripe::types::parse_balance,
        )
        .expect_err("bad shape");
        assert_eq!(err.error_type(), "decode_error");
        assert_eq!(
            err.message(),
            "expected a Stripe balance object: available: expected an array, found an object"
        );
    }

    #[test]
    fn redact_scrubs_the_key_everywhere() {
        let key = "sk_test_51HsecretKEY9876";
        let err = StripeError::Api {
            status: 401,
            error: Box::new(ApiErrorBody {
                r#type: "invalid_request_error".into(),
                code: None,
                message: Some(format!("Invalid API Key provided: {key}")),
                param: None,
                doc_url: None,
                request_log_url: None,
                decline_code: None,
            }),
            request_id: None,
        }
        .redact(key);
        assert!(!err.to_string().contains(key));
        assert!(!format!("{err:?}").contains(key));
        assert!(err.message().contains("sk_test_…9876"), "{}", err.message());
    }

    #[test]
    fn transport_display_marks_timeouts() {
        let err = StripeError::Transport {
            detail: "operation timed out".into(),
            timeout: true,
        };
        assert_eq!(
            err.to_string(),
            "could not reach Stripe (timed out): operation timed out"
        );
        assert_eq!(err.error_type(), "connection_error");
        assert_eq!(err.status(), None);
    }
}
