//! `GET /metrics`: bounded label values, owner-only on the API address, tokenless on
//! `server.metrics_bind` (and then absent from the API address).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use futures::stream::{self, StreamExt};
use serde_json::Value;
use tally::domain::Role;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

const ODD_METHODS: usize = 20_000;

async fn metrics_page(app: &TestApp, owner: &str) -> String {
    let response = app.get("/metrics", owner).await;
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

/// The distinct values of `label` on the page.
fn label_values(page: &str, label: &str) -> BTreeSet<String> {
    let key = format!("{label}=\"");
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let start = line.find(&key)? + key.len();
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn made_up_methods_add_no_label_values() {
    let app = spawn_app().await;
    let owner = app.token(Role::Owner, None).await;
    let before = metrics_page(&app, &owner).await.len();

    let url = format!("{}/healthz", app.address);
    let statuses: Vec<u16> = stream::iter(0..ODD_METHODS)
        .map(|i| {
            let method = reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).expect("token");
            let request = app.client.request(method, &url);
            async move { request.send().await.expect("sent").status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|status| *status == 405), "405 for all");
    // Unknown paths, with made-up methods too, are one route: `unmatched`.
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).expect("token");
        let url = format!("{}/nowhere/{i}", app.address);
        let response = app.client.request(method, &url).send().await.expect("sent");
        assert_eq!(response.status(), 404);
    }

    let page = metrics_page(&app, &owner).await;
    eprintln!(
        "/metrics page: {before} bytes before, {} bytes after {ODD_METHODS} made-up methods",
        page.len()
    );
    assert!(!page.contains("ODD1"), "a made-up method became a label");
    let methods = label_values(&page, "method");
    let known = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
    ];
    assert!(
        methods.iter().all(|m| known.contains(&m.as_str())),
        "{methods:?}"
    );
    assert!(methods.contains("other"), "{methods:?}");
    let routes = label_values(&page, "route");
    assert!(routes.contains("unmatched"), "{routes:?}");
    assert!(!page.contains("/nowhere"), "a path became a label");
    // Other tests share the process-wide recorder, so allow for their few series.
    assert!(
        page.len() < before + 64 * 1024,
        "the page grew from {before} to {} bytes",
        page.len()
    );
}

#[tokio::test]
async fn metrics_on_the_api_address_need_an_owner_token() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;
    let url = format!("{}/metrics", app.address);

    let anonymous = app.client.get(&url).send().await.expect("sent");
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.expect("error body");
    assert_eq!(
        (body["object"].as_str(), body["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );

    let response = app.get("/metrics", &reader).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("error body");
    assert_eq!(body["code"], "forbidden");

    let page = metrics_page(&app, &owner).await;
    assert!(page.contains("tally_http_requests_total"), "{page}");
}

#[tokio::test]
async fn metrics_bind_serves_without_a_token_and_the_api_address_answers_404() {
    let app = spawn_app_with(|settings| {
        settings.server.metrics_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let owner = app.token(Role::Owner, None).await;
    let address = tally::http::metrics::start(&app.settings.server, &tally::tasks::Tasks::new())
        .await
        .expect("metrics listener binds")
        .expect("metrics_bind is set");

    app.get("/healthz", &owner).await;
    let response = app.get("/metrics", &owner).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("error body");
    assert_eq!(
        (body["object"].as_str(), body["code"].as_str()),
        (Some("error"), Some("not-found"))
    );

    let page = app
        .client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let page = page.text().await.expect("body");
    assert!(page.contains("tally_http_requests_total"), "{page}");
    assert!(page.contains("route=\"/healthz\""), "{page}");

    let other = app
        .client
        .get(format!("http://{address}/api/administrator/tokens"))
        .send()
        .await
        .expect("sent");
    assert_eq!(other.status(), 404);
    let body: Value = other.json().await.expect("error body");
    assert_eq!(body["code"], "not-found");
}

#[tokio::test]
async fn metrics_bind_unset_starts_no_listener() {
    let app = spawn_app().await;
    let started = tally::http::metrics::start(&app.settings.server, &tally::tasks::Tasks::new())
        .await
        .expect("nothing to bind");
    assert_eq!(started, None);
}
