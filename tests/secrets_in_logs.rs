//! No secret (Stripe key, API token) appears in a response or in any log line,
//! with every log level on. Its own test binary, so its subscriber is process-wide.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use tally::domain::Role;

use helpers::{account_object, spawn_app, Captured, PLATFORM_KEY};

const WEBHOOK_SECRET: &str = "whsec_test_logs_0123456789abcdef";

#[tokio::test]
async fn no_key_or_token_appears_in_a_response_or_a_log_line() {
    let captured = Captured::default();
    // The only test in this binary, so a process-wide subscriber sees every thread.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .init();

    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    app.store_accounts(tenant_id, &[account_object("acct_1A", 1, Some("o"))])
        .await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let mut bodies = String::new();
    for path in [
        "/api/administrator/connect/stripe-accounts",
        "/api/administrator/connect/stripe-accounts?all=true",
        "/api/administrator/connect/stripe-account?stripeid=acct_1A",
        "/api/administrator/connect/stripe-accounts?offset=bad",
    ] {
        let response = app.get(path, &token).await;
        bodies.push_str(&format!("{:?}", response.headers()));
        bodies.push_str(&response.text().await.expect("body"));
    }
    // A refused webhook logs why, and never the endpoint secret.
    let mut spec = tally::commands::tenant::TenantSpec::new(
        "hooked",
        secrecy::SecretString::from(PLATFORM_KEY.to_owned()),
    );
    spec.webhook_secret = Some(secrecy::SecretString::from(WEBHOOK_SECRET.to_owned()));
    tally::commands::tenant::add(&app.pool, &app.master, &app.settings, spec)
        .await
        .expect("tenant added");
    let payload = r#"{"id":"evt_1","object":"event"}"#;
    let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
    let response = app
        .client
        .post(format!("{}/webhooks/stripe/hooked", app.address))
        .header(
            "stripe-signature",
            tally::sim::sign_webhook(WEBHOOK_SECRET, an_hour_ago, payload),
        )
        .body(payload)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    bodies.push_str(&response.text().await.expect("body"));

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("webhook refused") && logs.contains("tolerance"),
        "the log says why the webhook was refused: {logs}"
    );
    assert!(
        logs.contains("request"),
        "the subscriber captured the server spans: {logs}"
    );
    for secret in [PLATFORM_KEY, WEBHOOK_SECRET, token.as_str()] {
        assert!(!bodies.contains(secret), "a response leaked a secret");
        assert!(!logs.contains(secret), "a log line leaked a secret");
    }
}
