//! Errors the framework or the middleware make, not a handler: every one has the
//! error body with a stable code (DESIGN §3), never an empty or plain-text answer.

use serde_json::Value;
use tally::domain::Role;
use tally::sim::SimConfig;

use crate::helpers::{spawn_app, spawn_app_with, spawn_sim};

async fn error_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: {content_type}"
    );
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["object"], "error", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, body)
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_with_the_error_body() {
    let app = spawn_app().await;
    let token = app.token(Role::Owner, None).await;
    let (status, body) = error_body(app.get("/api/administrator/nothing-here", &token).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not-found")));

    let response = app
        .client
        .delete(format!(
            "{}/api/administrator/connect/stripe-accounts",
            app.address
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    let allow = response.headers().get("allow").cloned();
    let (status, body) = error_body(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method-not-allowed"))
    );
    assert!(
        allow.is_some_and(|a| a.to_str().unwrap_or("").contains("GET")),
        "Allow names the methods there are"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_answers_413_with_the_error_body() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let response = app
        .client
        .post(format!("{}/webhooks/stripe/acme", app.address))
        .header("content-type", "application/json")
        .header("stripe-signature", "t=1,v1=00")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("sent");
    let (status, body) = error_body(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("body-too-large"))
    );
}

#[tokio::test]
async fn a_request_over_the_time_limit_answers_503_request_timeout() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        // 200 accounts at 300 ms, 16 in flight: about 4 s of fetching.
        accounts_per_platform: 200,
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| settings.server.request_timeout_secs = 1).await;
    let tenant = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant, &sim, &ids, None).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    // Waiting up to 5 s for a refresh cannot fit a 1 s limit.
    let started = std::time::Instant::now();
    let response = app
        .get(
            "/api/administrator/connect/balances?max_age=0&wait=5",
            &token,
        )
        .await;
    let (status, body) = error_body(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("request-timeout"))
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

/// The error body of a raw answer, checked as `error_body` checks one.
fn raw_error(answer: &[u8]) -> (u16, Value) {
    let (status, headers, body) = crate::helpers::parse_raw_answer(answer);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/json"),
        "{status}: {headers:?}"
    );
    assert!(header("x-request-id").is_some_and(|id| !id.is_empty()));
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(body["object"], "error", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, body)
}

#[tokio::test]
async fn requests_the_http_layer_cannot_read_answer_with_the_error_body() {
    let app = spawn_app().await;
    // A query of about 65 KB: over the 64 KiB the request line may take.
    let long = format!(
        "GET /api/administrator/connect/balances?accountid={} HTTP/1.1\r\nHost: tally\r\n\r\n",
        "a".repeat(65_600)
    );
    let (status, body) = raw_error(&app.raw_exchange(long.as_bytes()).await);
    assert_eq!((status, body["code"].as_str()), (414, Some("uri-too-long")));

    // 200 headers: over the 100 a request may carry.
    let many: String = (0..200).map(|i| format!("X-Probe-{i}: y\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: tally\r\n{many}\r\n");
    let (status, body) = raw_error(&app.raw_exchange(request.as_bytes()).await);
    assert_eq!(
        (status, body["code"].as_str()),
        (431, Some("headers-too-large"))
    );

    // A control byte in a header value.
    let request = b"GET /healthz HTTP/1.1\r\nHost: tally\r\nAccept: text/\x01csv\r\n\r\n";
    let (status, body) = raw_error(&app.raw_exchange(request).await);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-request"))
    );

    // The server still answers as usual afterwards, and a well-formed request on a
    // raw connection is untouched.
    let answer = app
        .raw_exchange(b"GET /healthz HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n")
        .await;
    let (status, _, body) = crate::helpers::parse_raw_answer(&answer);
    assert_eq!(status, 200);
    assert_eq!(body, br#"{"status":"ok"}"#);
}

#[tokio::test]
async fn a_path_under_refreshes_sync_or_tokens_that_names_no_record_answers_that_resources_code() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;
    let refreshes = "/api/administrator/connect/balances/refreshes";
    let sync = "/api/administrator/connect/sync";
    for (path, token, code) in [
        (format!("{refreshes}/%FF"), &reader, "invalid-refreshid"),
        (format!("{refreshes}/"), &reader, "invalid-refreshid"),
        (format!("{refreshes}/a/b"), &reader, "invalid-refreshid"),
        (format!("{sync}/%FF"), &reader, "invalid-syncid"),
        (format!("{sync}/"), &reader, "invalid-syncid"),
        (
            "/api/administrator/tokens/%FF/x".to_owned(),
            &owner,
            "invalid-tokenid",
        ),
    ] {
        let (status, body) = error_body(app.get(&path, token).await).await;
        assert_eq!((status, body["code"].as_str()), (404, Some(code)), "{path}");
    }
    // `..` sent as it is (a client that does not resolve it first).
    for (path, code) in [
        (format!("{refreshes}/.."), "invalid-refreshid"),
        (format!("{sync}/.."), "invalid-syncid"),
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_error(&app.raw_exchange(request.as_bytes()).await);
        assert_eq!((status, body["code"].as_str()), (404, Some(code)), "{path}");
    }
    // Who may ask is checked first, as on the resource itself.
    let response = app
        .client
        .get(format!("{}{refreshes}/", app.address))
        .send()
        .await
        .expect("sent");
    let (status, body) = error_body(response).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = error_body(app.get("/api/administrator/tokens/1/x", &reader).await).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    // Anything else unknown is still `not-found`.
    let (status, body) =
        error_body(app.get("/api/administrator/connect/nothing", &reader).await).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not-found")));
}
