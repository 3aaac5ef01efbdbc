//! Errors made outside the handlers get the error body too (DESIGN §3): the request
//! time limit, and whatever the framework answers by itself (405 for a known path
//! with another method, 413 for a body over the limit, extractor rejections; and
//! hyper's 400, 414 and 431 for a request it cannot read, in `connections`).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Code};

/// Answers 503 `request-timeout` when a handler takes longer than the limit. A
/// streamed body, once started, is not cut off by it.
pub async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit.as_secs()).into_response(),
    }
}

/// Replaces the body of an error response that is not already JSON with the error
/// body, keyed by its status. The admin pages' own HTML error pages (for people)
/// are kept.
pub async fn ensure_error_body(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || content_type_is(&response, "application/json")
        || content_type_is(&response, "text/html")
    {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut replaced = framework_error(status).into_response();
    // The framework's status stands, also for one the code table gives another.
    *replaced.status_mut() = status;
    // Keep what the framework said in headers (Allow on a 405, the request id).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced
}

fn content_type_is(response: &Response, prefix: &str) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(prefix))
}

/// The error for an answer the framework (axum, or hyper itself: see
/// `connections`) made with only a status.
pub fn framework_error(status: StatusCode) -> ApiError {
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            Code::MethodNotAllowed,
            "this endpoint does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (Code::BodyTooLarge, "the request body is over 1 MiB"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            Code::UnsupportedMediaType,
            "the request body's content type is not accepted here",
        ),
        StatusCode::NOT_FOUND => (Code::NotFound, "no such endpoint"),
        StatusCode::URI_TOO_LONG => (
            Code::UriTooLong,
            "the request's path and query are over 64 KiB; send fewer or shorter parameters",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            Code::HeadersTooLarge,
            "the request has over 100 headers, or its head is over 400 KiB",
        ),
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => (
            Code::InvalidRequest,
            "the request could not be read (a malformed request line, header or byte)",
        ),
        _ if status.is_server_error() => (Code::InternalError, "internal error"),
        _ => (Code::InvalidRequest, "the request could not be served"),
    };
    ApiError::new(code, message)
}
