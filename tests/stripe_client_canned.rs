//! The client against a scripted HTTP stub: exact headers, retry decisions, idempotency,
//! decoding and redaction, with answers the simulator cannot be asked for one by one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use tally::stripe::{
    ClientSettings, Credential, RateSettings, StripeClient, StripeError, TenantClient,
};

const PLATFORM_KEY: &str = "sk_test_51TallyPlatformSecretKey0001";
const ORG_KEY: &str = "sk_org_TallyOrganizationSecretKey0002";
const API_VERSION: &str = "2025-03-31.basil";

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
        delay: Duration::ZERO,
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn html(mut self) -> Reply {
        self.headers = vec![("content-type", "text/html".into())];
        self
    }
    fn slow(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct Stub {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Stub {
    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().expect("stub lock")
    }
}

async fn answer(
    State(stub): State<Arc<Stub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = stub.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stub.max_in_flight.fetch_max(now, Ordering::SeqCst);
    stub.seen().push(Seen {
        method,
        uri,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    let next = stub.script.lock().expect("stub lock").pop_front();
    let next = next.unwrap_or_else(|| {
        reply(
            599,
            r#"{"error":{"type":"api_error","message":"script exhausted"}}"#,
        )
    });
    tokio::time::sleep(next.delay).await;
    stub.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(next.status).expect("valid status");
    let mut response = (status, next.body).into_response();
    for (name, value) in next.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("valid header"));
    }
    response
}

/// Starts a stub that answers with `script` in order; returns it and its base URL.
async fn stub(script: Vec<Reply>) -> (Arc<Stub>, url::Url) {
    let stub = Arc::new(Stub {
        script: Mutex::new(script.into()),
        ..Stub::default()
    });
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = url::Url::parse(&format!("http://{addr}/")).expect("local URL");
    (stub, url)
}

/// Fast backoff so retry tests take milliseconds.
fn settings() -> ClientSettings {
    ClientSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        max_attempts: 4,
        backoff_initial: Duration::from_millis(40),
        backoff_max: Duration::from_millis(200),
    }
}

fn tenant(
    key: &str,
    base: &url::Url,
    settings: ClientSettings,
    rate: RateSettings,
) -> TenantClient {
    let credential =
        Credential::new(SecretString::from(key), API_VERSION, base.clone()).expect("known prefix");
    StripeClient::new(settings)
        .expect("client builds")
        .tenant(credential, rate)
}

fn balance_body() -> String {
    r#"{"object":"balance","livemode":false,"available":[{"amount":-5,"currency":"USD"}],"pending":[]}"#.into()
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn platform_key_sends_stripe_account_version_and_bearer() {
    let (stub, base) = stub(vec![
        reply(200, balance_body()).header("request-id", "req_ok")
    ])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let fetched = client
        .retrieve_balance(&acct("acct_X"), Some(&acct("acct_Pignored")))
        .await
        .expect("balance");
    assert_eq!(fetched.value.available[0].currency, "usd");
    assert_eq!(
        fetched.raw["available"][0]["currency"], "USD",
        "raw is untouched"
    );
    assert_eq!(fetched.request_id.as_deref(), Some("req_ok"));
    assert_eq!(fetched.attempts, 1);

    let seen = stub.seen();
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.uri.path()),
        ("GET", "/v1/balance")
    );
    assert_eq!(header(req, "stripe-account"), Some("acct_X"));
    assert_eq!(header(req, "stripe-context"), None);
    assert_eq!(header(req, "stripe-version"), Some(API_VERSION));
    assert_eq!(
        header(req, "authorization"),
        Some(format!("Bearer {PLATFORM_KEY}").as_str())
    );
    assert!(header(req, "user-agent").is_some_and(|ua| ua.starts_with("tally/")));
}

#[tokio::test]
async fn org_key_sends_stripe_context_for_each_row() {
    let account = r#"{"object":"account","id":"acct_X"}"#;
    let (stub, base) = stub(vec![
        reply(200, balance_body()),
        reply(200, balance_body()),
        reply(200, account),
    ])
    .await;
    let client = tenant(ORG_KEY, &base, settings(), RateSettings::default());
    client
        .retrieve_balance(&acct("acct_X"), Some(&acct("acct_P")))
        .await
        .expect("connected account");
    client
        .retrieve_balance(&acct("acct_S"), None)
        .await
        .expect("account in the org");
    client
        .retrieve_account(&acct("acct_X"), Some(&acct("acct_P")))
        .await
        .expect("account");

    let seen = stub.seen();
    let contexts: Vec<_> = seen.iter().map(|r| header(r, "stripe-context")).collect();
    assert_eq!(
        contexts,
        [Some("acct_P/acct_X"), Some("acct_S"), Some("acct_P/acct_X")]
    );
    assert!(seen.iter().all(|r| header(r, "stripe-account").is_none()));
    assert!(seen
        .iter()
        .all(|r| header(r, "stripe-version") == Some(API_VERSION)));
    assert_eq!(seen[2].uri.path(), "/v1/accounts/acct_X");
}

#[tokio::test]
async fn list_page_headers_and_query() {
    let page = r#"{"object":"list","url":"/v1/accounts","has_more":true,"data":[{"object":"account","id":"acct_2"}]}"#;
    let (stub, base) = stub(vec![reply(200, page), reply(200, page)]).await;
    let org = tenant(ORG_KEY, &base, settings(), RateSettings::default());
    let err = org
        .list_accounts_page(None, None, 10)
        .await
        .expect_err("org needs a platform");
    assert!(matches!(err, StripeError::Config(_)), "{err}");
    assert!(
        org.list_accounts_page(Some(&acct("acct_P")), None, 0)
            .await
            .is_err(),
        "limit 0"
    );
    assert!(
        org.list_accounts_page(Some(&acct("acct_P")), None, 101)
            .await
            .is_err(),
        "limit 101"
    );
    let list = org
        .list_accounts_page(Some(&acct("acct_P")), Some("acct_1"), 100)
        .await
        .expect("page");
    assert!(list.value.has_more);
    assert_eq!(list.value.data[0]["id"], "acct_2");
    let platform = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    platform
        .list_accounts_page(None, None, 3)
        .await
        .expect("page");

    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "invalid calls never reach Stripe");
    assert_eq!(seen[0].uri.query(), Some("limit=100&starting_after=acct_1"));
    assert_eq!(header(&seen[0], "stripe-context"), Some("acct_P"));
    assert_eq!(seen[1].uri.query(), Some("limit=3"));
    assert_eq!(header(&seen[1], "stripe-context"), None);
    assert_eq!(header(&seen[1], "stripe-account"), None);
}

#[tokio::test]
async fn retries_500_with_backoff_then_succeeds() {
    let boom = r#"{"error":{"type":"api_error","message":"boom"}}"#;
    let (stub, base) = stub(vec![
        reply(500, boom),
        reply(503, boom),
        reply(200, balance_body()),
    ])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let fetched = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect("third time lucky");
    assert_eq!(fetched.attempts, 3);
    let seen = stub.seen();
    // Backoff: first retry waits 40 ms * [0.5, 1], the second 80 ms * [0.5, 1].
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(20));
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(40));
}

#[tokio::test]
async fn gives_up_after_max_attempts_keeping_the_last_error() {
    let body = r#"{"error":{"type":"api_error","message":"down"}}"#;
    let script = (0..10)
        .map(|i| reply(503, body).header("request-id", &format!("req_{i}")))
        .collect();
    let (stub, base) = stub(script).await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("always down");
    assert_eq!(stub.seen().len(), 4);
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.request_id(), Some("req_3"));
    assert_eq!(err.error_type(), "api_error");
}

#[tokio::test]
async fn should_retry_header_overrides_the_status() {
    let body = r#"{"error":{"type":"api_error","message":"no"}}"#;
    let (stub, base) = stub(vec![
        reply(500, body)
            .header("stripe-should-retry", "false")
            .header("request-id", "req_final"),
        reply(
            400,
            r#"{"error":{"type":"invalid_request_error","code":"lock_timeout"}}"#,
        )
        .header("stripe-should-retry", "true"),
        reply(200, balance_body()),
    ])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("not retried");
    assert_eq!(
        (err.status(), err.request_id()),
        (Some(500), Some("req_final"))
    );
    assert_eq!(stub.seen().len(), 1);
    let ok = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect("400 retried on request");
    assert_eq!(ok.attempts, 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (stub, base) = stub(vec![reply(
        404,
        r#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"id","message":"No such account"}}"#,
    )])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let err = client
        .retrieve_account(&acct("acct_nope"), None)
        .await
        .expect_err("404");
    assert_eq!(err.code(), Some("resource_missing"));
    let StripeError::Api { error, .. } = &err else {
        panic!("expected Api, got {err:?}")
    };
    assert_eq!(error.param.as_deref(), Some("id"));
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn a_429_is_retried_and_lowers_the_rate() {
    let limited = r#"{"error":{"type":"rate_limit_error","message":"Too many requests"}}"#;
    let (_stub, base) = stub(vec![reply(429, limited), reply(200, balance_body())]).await;
    let client = tenant(
        PLATFORM_KEY,
        &base,
        settings(),
        RateSettings {
            per_second: 20,
            max_in_flight: 4,
        },
    );
    assert_eq!(client.rate(), 20);
    let fetched = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect("retried");
    assert_eq!(fetched.attempts, 2);
    assert_eq!(client.rate(), 10);
    assert_eq!(client.clone().rate(), 10, "clones share the limiter");
    assert_eq!(client.configured_rate(), 20);
}

#[tokio::test]
async fn post_reuses_one_idempotency_key_across_retries() {
    let (stub, base) = stub(vec![
        reply(500, r#"{"error":{"type":"api_error"}}"#),
        reply(409, r#"{"error":{"type":"idempotency_error"}}"#),
        reply(200, r#"{"object":"account","id":"acct_new"}"#),
        reply(200, r#"{"object":"account","id":"acct_2"}"#),
    ])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let created = client
        .create_account(&[("type", "custom"), ("metadata[accountid]", "user 1")])
        .await
        .expect("created");
    assert_eq!(created.value["id"], "acct_new");
    // A second POST gets a fresh key.
    client
        .create_account(&[("type", "express")])
        .await
        .expect("created");

    let seen = stub.seen();
    assert_eq!(seen.len(), 4);
    let keys: Vec<_> = seen.iter().map(|r| header(r, "idempotency-key")).collect();
    assert!(
        keys[0].is_some_and(|k| uuid::Uuid::parse_str(k).is_ok()),
        "{keys:?}"
    );
    assert!(keys[..3].iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_ne!(keys[3], keys[0]);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].body, "type=custom&metadata%5Baccountid%5D=user+1");
    assert_eq!(
        header(&seen[0], "content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn html_and_bad_shapes_become_decode_errors() {
    let (stub, base) = stub(vec![
        reply(502, "<html>Bad Gateway</html>").html(),
        reply(502, "<html>Bad Gateway</html>").html(),
        reply(502, "<html>Bad Gateway</html>").html(),
        reply(502, "<html>Bad Gateway</html>").html(),
        reply(
            200,
            r#"{"object":"balance","livemode":false,"available":"lots","pending":[]}"#,
        )
        .header("request-id", "req_shape"),
        reply(200, r#"{"object":"balance","available":[{"amo"#),
    ])
    .await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("html");
    assert_eq!(
        (err.error_type(), err.status()),
        ("decode_error", Some(502))
    );
    assert!(
        err.message().contains("not JSON (text/html"),
        "{}",
        err.message()
    );
    assert!(!err.to_string().contains("Bad Gateway"), "{err}");
    assert_eq!(stub.seen().len(), 4, "a 5xx is retried whatever its body");

    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("shape");
    assert_eq!(
        err.message(),
        "expected a Stripe balance object: available: expected an array, found a string"
    );
    assert_eq!(err.request_id(), Some("req_shape"));
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("truncated");
    assert!(
        err.message().contains("truncated JSON"),
        "{}",
        err.message()
    );
    assert_eq!(stub.seen().len(), 6, "a bad 200 is not retried");
}

#[tokio::test]
async fn per_attempt_timeout_is_a_retryable_transport_error() {
    let slow = reply(200, balance_body()).slow(Duration::from_millis(600));
    let (stub, base) = stub(vec![slow.clone(), slow, reply(200, balance_body())]).await;
    let quick = ClientSettings {
        request_timeout: Duration::from_millis(200),
        ..settings()
    };
    let client = tenant(PLATFORM_KEY, &base, quick.clone(), RateSettings::default());
    let fetched = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect("third attempt is fast");
    assert_eq!(fetched.attempts, 3);

    stub.script
        .lock()
        .expect("stub lock")
        .extend(std::iter::repeat_n(
            reply(200, balance_body()).slow(Duration::from_millis(600)),
            4,
        ));
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("all slow");
    assert!(
        matches!(err, StripeError::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert_eq!(err.error_type(), "connection_error");
}

#[tokio::test]
async fn in_flight_cap_holds() {
    let script = (0..8)
        .map(|_| reply(200, balance_body()).slow(Duration::from_millis(100)))
        .collect();
    let (stub, base) = stub(script).await;
    let client = tenant(
        PLATFORM_KEY,
        &base,
        settings(),
        RateSettings {
            per_second: 100,
            max_in_flight: 2,
        },
    );
    let calls = (0..8).map(|_| {
        let client = client.clone();
        async move { client.retrieve_balance(&acct("acct_X"), None).await }
    });
    for result in futures::future::join_all(calls).await {
        result.expect("balance");
    }
    assert_eq!(stub.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn errors_never_carry_the_key() {
    // A server that (unlike Stripe) echoes the key in its message.
    let invalid = format!(
        r#"{{"error":{{"type":"invalid_request_error","message":"Invalid API Key provided: {PLATFORM_KEY}"}}}}"#
    );
    let (_stub, base) = stub(vec![reply(401, invalid)]).await;
    let client = tenant(PLATFORM_KEY, &base, settings(), RateSettings::default());
    let err = client
        .retrieve_balance(&acct("acct_X"), None)
        .await
        .expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert_no_key(&err, PLATFORM_KEY);
    assert!(err.message().contains("sk_test_…0001"), "{}", err.message());

    // Nothing listens on port 9 of localhost: connection refused, retried, then reported.
    let closed = url::Url::parse("http://127.0.0.1:9/").expect("URL");
    let client = tenant(ORG_KEY, &closed, settings(), RateSettings::default());
    let err = client
        .retrieve_balance(&acct("acct_X"), Some(&acct("acct_P")))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, StripeError::Transport { timeout: false, .. }),
        "{err:?}"
    );
    assert_no_key(&err, ORG_KEY);
}

fn assert_no_key(err: &StripeError, key: &str) {
    let secret_part = &key[8..];
    for shown in [err.to_string(), format!("{err:?}"), err.message()] {
        assert!(!shown.contains(secret_part), "{shown}");
    }
}

fn acct(id: &str) -> tally::domain::StripeAccountId {
    tally::domain::StripeAccountId::parse(id).expect("an acct_ id")
}
