//! The one API error type, its stable body `{"object":"error","code","message"}`
//! (DESIGN §3), and [`Code`]: every code tally answers, each with the status of its
//! cause. Internal detail goes to the log, never the response.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::balances::BalanceError;
use crate::fanout::FanoutError;

/// Declares [`Code`]: per cause, its status, the code a client sees (two causes may
/// share a code: a malformed `stripeid` is 400 `invalid-stripeid`, an unknown one
/// 404), the query parameter whose malformed value it answers, and what it means.
macro_rules! codes {
    ($(
        $(#[doc = $doc:literal])+
        $variant:ident = $status:literal $code:literal $(for $param:literal)?;
    )*) => {
        /// Every error code tally answers, one variant per cause.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[doc = $doc])+ $variant,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// What a client sees in `code`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            pub fn status(self) -> StatusCode {
                let status = match self { $(Code::$variant => $status,)* };
                StatusCode::from_u16(status).expect("a valid status")
            }

            /// What the code means, for the document.
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => concat!($($doc),+).trim_ascii(),)* }
            }

            /// The query parameter whose malformed value this code answers.
            pub fn param(self) -> Option<&'static str> {
                match self { $(Code::$variant => None $(.or(Some($param)))?,)* }
            }
        }
    };
}

codes! {
    /// The request could not be read (a malformed request line, header or byte).
    InvalidRequest = 400 "invalid-request";
    /// The query string could not be read.
    InvalidQuery = 400 "invalid-query";
    /// The body is not the JSON this operation takes.
    InvalidBody = 400 "invalid-body";
    /// An owner token names no tenant (`?tenant=<slug>`).
    MissingTenant = 400 "missing-tenant";
    /// `tenant` is not a slug, or cannot be given here.
    MalformedTenant = 400 "invalid-tenant" for "tenant";
    /// `stripeid` is missing or not an `acct_` id.
    MalformedStripeid = 400 "invalid-stripeid" for "stripeid";
    /// `accountid` is not an owner id.
    MalformedAccountid = 400 "invalid-accountid" for "accountid";
    /// `refresh` is not a refresh id.
    MalformedRefreshid = 400 "invalid-refreshid" for "refresh";
    /// `max_age` is not a number of seconds in range.
    InvalidMaxAge = 400 "invalid-max-age" for "max_age";
    /// `wait` is not a number of seconds in range.
    InvalidWait = 400 "invalid-wait" for "wait";
    /// Parameters that exclude each other were given together.
    InvalidScope = 400 "invalid-scope";
    /// `currency` is not a 3-letter code.
    InvalidCurrency = 400 "invalid-currency" for "currency";
    /// `from` is missing or malformed.
    InvalidFrom = 400 "invalid-from" for "from";
    /// `to` is malformed.
    InvalidTo = 400 "invalid-to" for "to";
    /// `limit` is out of range.
    InvalidLimit = 400 "invalid-limit" for "limit";
    /// `offset` is out of range.
    InvalidOffset = 400 "invalid-offset" for "offset";
    /// `all` is not true or false.
    InvalidAll = 400 "invalid-all" for "all";
    /// `starting_after` names no record of this list.
    InvalidStartingAfter = 400 "invalid-starting-after" for "starting_after";
    /// `ending_before` names no record of this list.
    InvalidEndingBefore = 400 "invalid-ending-before" for "ending_before";
    /// Paging parameters that cannot be combined.
    InvalidPaging = 400 "invalid-paging";
    /// `interval` is not `hour` or `day`.
    InvalidInterval = 400 "invalid-interval" for "interval";
    /// The range ends before it starts, or is too long.
    InvalidRange = 400 "invalid-range";
    /// The range holds more buckets than one answer gives.
    TooManyBuckets = 400 "too-many-buckets";
    /// `date` is missing or malformed.
    InvalidDate = 400 "invalid-date" for "date";
    /// `from_date` is missing or malformed.
    InvalidFromDate = 400 "invalid-from-date" for "from_date";
    /// `to_date` is malformed.
    InvalidToDate = 400 "invalid-to-date" for "to_date";
    /// `since` is malformed.
    InvalidSince = 400 "invalid-since" for "since";
    /// The role is not `owner`, `admin` or `reader`.
    InvalidRole = 400 "invalid-role";
    /// The name is empty, only spaces, too long, or holds a NUL.
    InvalidName = 400 "invalid-name";
    /// The lifetime is not a number of days, hours, minutes or seconds in range.
    InvalidExpiresIn = 400 "invalid-expires-in";
    /// The webhook's signature does not verify for this endpoint.
    InvalidSignature = 400 "invalid-signature";
    /// A verified webhook body is not a Stripe event.
    InvalidEvent = 400 "invalid-event";
    /// An admin page number out of range (admin pages only).
    InvalidPage = 400 "invalid-page";
    /// No token, or one this server does not know.
    Unauthorized = 401 "unauthorized";
    /// The token was revoked.
    TokenRevoked = 401 "token-revoked";
    /// The token has expired.
    TokenExpired = 401 "token-expired";
    /// The token's tenant was removed.
    TokenOfRemovedTenant = 401 "tenant-removed";
    /// The token's role may not do this.
    Forbidden = 403 "forbidden";
    /// A form posted from another site (admin pages only).
    CrossSiteRequest = 403 "cross-site-request";
    /// A form without this session's CSRF token (admin pages only).
    InvalidCsrfToken = 403 "invalid-csrf-token";
    /// No such endpoint.
    NotFound = 404 "not-found";
    /// No tenant has that slug (or the token's tenant is another).
    UnknownTenant = 404 "invalid-tenant";
    /// The tenant was removed: its data is kept, not served.
    TenantRemoved = 404 "tenant-removed";
    /// No stored account has that stripeid.
    UnknownStripeid = 404 "invalid-stripeid";
    /// No listed account has that owner.
    UnknownAccountid = 404 "invalid-accountid";
    /// No balance refresh has that id.
    UnknownRefreshid = 404 "invalid-refreshid";
    /// No sync run has that id.
    UnknownSyncid = 404 "invalid-syncid";
    /// No token has that id.
    UnknownTokenid = 404 "invalid-tokenid";
    /// The day is not closed yet.
    CloseNotReady = 404 "close-not-ready";
    /// The path does not take that method; `Allow` lists those it takes.
    MethodNotAllowed = 405 "method-not-allowed";
    /// The body is over 1 MiB.
    BodyTooLarge = 413 "body-too-large";
    /// The path and query are over 64 KiB.
    UriTooLong = 414 "uri-too-long";
    /// The body's content type is not taken here.
    UnsupportedMediaType = 415 "unsupported-media-type";
    /// A cap on concurrent streams was reached.
    TooManyStreams = 429 "too-many-streams";
    /// Over 100 headers, or a head over about 400 KiB.
    HeadersTooLarge = 431 "headers-too-large";
    /// A bug.
    InternalError = 500 "internal-error";
    /// The tenant's stored Stripe key cannot be opened by this server.
    TenantCredentialUnusable = 500 "tenant-credential-unusable";
    /// Stripe did not return the balance.
    StripeRequestFailed = 502 "stripe-request-failed";
    /// The database did not answer.
    DatabaseUnavailable = 503 "database-unavailable";
    /// The request took longer than `server.request_timeout_secs`.
    RequestTimeout = 503 "request-timeout";
}

impl Code {
    /// The code answering a malformed value of query parameter `name`.
    pub fn of_param(name: &str) -> Option<Code> {
        Code::ALL
            .iter()
            .copied()
            .find(|code| code.param() == Some(name))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused for a cause its code names (input, access, limits): nothing was changed.
    #[error("{message}")]
    Refused {
        code: Code,
        message: Cow<'static, str>,
    },
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
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The error body every failure but `stripe-request-failed` carries. Each response
/// narrows `code` to the codes that operation answers with that status.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    #[schema(schema_with = error_kind)]
    object: &'static str,
    /// Stable, kebab-case: what a program acts on.
    #[schema(value_type = String)]
    code: &'a str,
    /// For people; may change.
    #[schema(value_type = String)]
    message: &'a str,
}

/// The body of a 502 `stripe-request-failed`: the error body with `failure`.
#[derive(Serialize, ToSchema)]
#[schema(as = UpstreamError)]
pub struct UpstreamErrorBody<'a> {
    #[schema(schema_with = error_kind)]
    object: &'static str,
    #[schema(schema_with = upstream_code, value_type = String)]
    code: &'a str,
    /// For people; may change.
    #[schema(value_type = String)]
    message: &'a str,
    /// Stripe's answer, its request id, a hint, and when the account was tried and
    /// last read.
    #[schema(value_type = crate::fanout::Failure)]
    failure: &'a crate::fanout::Failure,
}

fn error_kind() -> utoipa::openapi::schema::Schema {
    super::openapi::kind("error")
}

fn upstream_code() -> utoipa::openapi::schema::Schema {
    super::openapi::one_of_strings(&[Code::StripeRequestFailed.as_str()])
}

impl ApiError {
    /// Refused with `code` (and its status).
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::Refused {
            code,
            message: message.into(),
        }
    }

    /// A removed tenant (`tally tenant remove`), however it was named: 404
    /// `tenant-removed`. Its data is kept, but nothing serves it or starts work for it.
    pub fn tenant_removed() -> ApiError {
        ApiError::new(
            Code::TenantRemoved,
            "that tenant was removed (tally tenant remove); its data is kept but not served",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::Refused { code, .. } => *code,
            ApiError::Upstream(_) => Code::StripeRequestFailed,
            ApiError::TenantCredential(_) => Code::TenantCredentialUnusable,
            ApiError::Unavailable(_) => Code::DatabaseUnavailable,
            ApiError::Timeout(_) => Code::RequestTimeout,
            ApiError::Internal(_) => Code::InternalError,
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
                ApiError::new(Code::UnknownStripeid, "no stored account has that stripeid")
            }
            BalanceError::UnknownOwner => {
                ApiError::new(Code::UnknownAccountid, "no stored account has that owner")
            }
            BalanceError::UnknownRefresh => {
                ApiError::new(Code::UnknownRefreshid, "no balance refresh has that id")
            }
            error @ BalanceError::OtherScope { .. } => {
                ApiError::new(Code::InvalidScope, error.to_string())
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
    /// The body as JSON bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        let message = self.to_string();
        let code = self.code().as_str();
        let body = match self {
            ApiError::Upstream(failure) => serde_json::to_vec(&UpstreamErrorBody {
                object: "error",
                code,
                message: &message,
                failure,
            }),
            _ => serde_json::to_vec(&ErrorBody {
                object: "error",
                code,
                message: &message,
            }),
        };
        body.expect("an error body serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // Logged once, here, inside the request's span (which carries the request id).
            tracing::error!(error = ?self, code = %self.code(), "request failed");
        }
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_bytes(),
        )
            .into_response();
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
    fn each_cause_has_one_status_and_a_parameters_code_is_a_400() {
        let mut causes = std::collections::BTreeSet::new();
        for code in Code::ALL {
            assert!(
                causes.insert((code.as_str(), code.status())),
                "{code} {} twice",
                code.status()
            );
            assert!(!code.meaning().is_empty(), "{code:?}");
            if let Some(param) = code.param() {
                assert_eq!(code.status(), StatusCode::BAD_REQUEST, "{code}");
                assert_eq!(Code::of_param(param), Some(*code));
            }
        }
        // Malformed 400, unknown 404: the same code, two causes.
        for (malformed, unknown) in [
            (Code::MalformedStripeid, Code::UnknownStripeid),
            (Code::MalformedAccountid, Code::UnknownAccountid),
            (Code::MalformedTenant, Code::UnknownTenant),
            (Code::MalformedRefreshid, Code::UnknownRefreshid),
        ] {
            assert_eq!(malformed.as_str(), unknown.as_str());
            assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
            assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        }
        assert_eq!(Code::TenantRemoved.status(), StatusCode::NOT_FOUND);
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
