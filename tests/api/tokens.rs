//! Token lifecycle (issue 9): create with a name and an expiry, list without the
//! token, revoke; a revoked or expired token is refused everywhere within 2 s with
//! a code that says why; last use is recorded in batches.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally::domain::Role;

use crate::helpers::{free_port, spawn_app, spawn_app_with, walk_list, Route, TestApp};

const TOKENS: &str = "/api/administrator/tokens";
const COUNT: &str = "/api/administrator/connect/stripe-accounts-count";

async fn post_token(app: &TestApp, owner: &str, body: Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{TOKENS}", app.address))
        .bearer_auth(owner)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn delete_token(app: &TestApp, owner: &str, id: &Value) -> (u16, Value) {
    let response = app
        .client
        .delete(format!("{}{TOKENS}/{id}", app.address))
        .bearer_auth(owner)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn an_owner_creates_lists_and_revokes_tokens_over_http() {
    let mut app = spawn_app().await;
    app.add_tenant("acme").await;
    let owner = app.token(Role::Owner, None).await;
    let (status, created) = post_token(
        &app,
        &owner,
        json!({"role": "reader", "tenant": "acme", "name": "finance-bot", "expiresIn": "90d"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().expect("shown once").to_owned();
    assert_eq!(created["name"], "finance-bot");
    assert_eq!(created["status"], "active");
    assert!(created["expiresAt"].is_string());

    let (status, _) = app.get_json(COUNT, &token).await;
    assert_eq!(status, 200);

    let response = app.get(TOKENS, &owner).await;
    let text = response.text().await.expect("text");
    assert!(!text.contains(&token), "a list never shows a token");
    let listed: Value = serde_json::from_str(&text).expect("json");
    let row = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|t| t["id"] == created["id"])
        .cloned()
        .expect("listed");
    assert_eq!(row["prefix"], format!("{}…", &token[..8]));
    assert_eq!(row["tenant"], "acme");

    let (status, revoked) = delete_token(&app, &owner, &created["id"]).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    // The server's cache lets it live at most a second longer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = app.get_json(COUNT, &token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token-revoked"))
    );

    // Readers and admins cannot manage tokens; bad requests say why.
    let (status, _) = app.get_json(TOKENS, &token).await;
    assert_eq!(status, 401);
    let admin = app.token(Role::Admin, Some("acme")).await;
    let (status, body) = app.get_json(TOKENS, &admin).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = post_token(&app, &owner, json!({"role": "king"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid-role")));
    let (status, body) = post_token(
        &app,
        &owner,
        json!({"role": "reader", "tenant": "acme", "expiresIn": "5y"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-expires-in"))
    );
    let (status, body) = post_token(&app, &owner, json!({"role": "reader"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-tenant"))
    );
    let (status, body) = delete_token(&app, &owner, &json!(999_999)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-tokenid"))
    );

    // Last use is written in batches (and on the way out), not per request.
    let admin_id: i64 = sqlx::query_scalar("SELECT max(id) FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .expect("id");
    let (status, _) = app.get_json(COUNT, &admin).await;
    assert_eq!(status, 200);
    app.shut_down().await;
    let pool = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE id = $1")
            .bind(admin_id)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert!(last_used.is_some(), "the use was recorded");
    pool.close().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_with_token_expired() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let owner = app.token(Role::Owner, None).await;
    let (_, created) = post_token(
        &app,
        &owner,
        json!({"role": "reader", "tenant": "acme", "expiresIn": "2s"}),
    )
    .await;
    let token = created["token"].as_str().expect("token").to_owned();
    let (status, _) = app.get_json(COUNT, &token).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, body) = app.get_json(COUNT, &token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token-expired"))
    );
}

fn tally(app: &TestApp, args: &[&str]) -> std::process::Output {
    app.tally_command().args(args).output().expect("tally runs")
}

#[tokio::test]
async fn a_token_revoked_with_the_cli_is_refused_by_another_server_within_two_seconds() {
    a_token_revoked_with_the_cli_is_refused_by_another_server(&|_| {}).await;
}

/// `tally token revoke` and a `tally serve` process, both connected as `route` says.
pub(crate) async fn a_token_revoked_with_the_cli_is_refused_by_another_server(route: &Route<'_>) {
    let app = spawn_app_with(route).await;
    app.add_tenant("acme").await;
    let created = tally(
        &app,
        &[
            "token",
            "create",
            "--role",
            "reader",
            "--tenant",
            "acme",
            "--name",
            "dash",
            "--expires-in",
            "30d",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(token.starts_with("tly_"));

    let port = free_port();
    let mut server = app.serve_process(port, &[]);
    let url = format!("http://127.0.0.1:{port}{COUNT}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = app.client.get(&url).bearer_auth(&token).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "serve never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let listed = tally(&app, &["token", "list", "--format", "json"]);
    let text = String::from_utf8(listed.stdout).expect("utf-8");
    assert!(!text.contains(&token), "the list never shows a token");
    let tokens: Value = serde_json::from_str(&text).expect("json");
    let id = tokens[0]["id"].to_string();
    assert_eq!(tokens[0]["name"], "dash");

    let revoked = tally(&app, &["token", "revoke", &id]);
    assert!(revoked.status.success(), "{revoked:?}");
    let revoked_at = Instant::now();
    let refused_after = loop {
        let response = app
            .client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("sent");
        if response.status() == 401 {
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["code"], "token-revoked");
            break revoked_at.elapsed();
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused_after <= Duration::from_secs(2),
        "refused after {refused_after:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn the_token_list_pages_by_link_in_the_order_tokens_were_made() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    app.add_tenant("globex").await;
    let owner = app.token(Role::Owner, None).await;
    for tenant in ["acme", "globex", "acme", "acme", "globex"] {
        app.token(Role::Reader, Some(tenant)).await;
    }
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM api_tokens ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .expect("ids");
    let id_of = |t: &Value| t["id"].as_i64().expect("id");
    let walked = walk_list(&app, &format!("{TOKENS}?limit=2"), &owner, 2).await;
    assert_eq!(walked.iter().map(id_of).collect::<Vec<_>>(), all);
    // The tenant filter is kept on every next link.
    let acme = walk_list(&app, &format!("{TOKENS}?tenant=acme&limit=2"), &owner, 2).await;
    assert_eq!(acme.len(), 3);
    assert!(acme.iter().all(|t| t["tenant"] == "acme"), "{acme:?}");
    for (query, code) in [
        ("limit=0", "invalid-limit"),
        ("limit=101", "invalid-limit"),
        ("starting_after=x", "invalid-starting-after"),
        ("starting_after=999999", "invalid-starting-after"),
    ] {
        let (status, body) = app.get_json(&format!("{TOKENS}?{query}"), &owner).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
}

#[tokio::test]
async fn a_removed_tenant_gets_no_token_and_its_tokens_are_not_listed() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let owner = app.token(Role::Owner, None).await;
    let (status, _) = post_token(&app, &owner, json!({"role": "reader", "tenant": "acme"})).await;
    assert_eq!(status, 201);
    tally::commands::tenant::remove(&app.pool, "acme", false, false, &tally::audit::Actor::cli())
        .await
        .expect("removed");

    // As every API route answers an owner naming a removed tenant.
    let (status, body) = post_token(&app, &owner, json!({"role": "admin", "tenant": "acme"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant-removed")),
        "{body}"
    );
    let (status, body) = app.get_json(&format!("{TOKENS}?tenant=acme"), &owner).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant-removed")),
        "{body}"
    );
    let made: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE tenant_id IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(made, 1, "no token was made for the removed tenant");
}

#[tokio::test]
async fn a_nul_or_malformed_tenant_is_400_invalid_tenant_never_a_500() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let owner = app.token(Role::Owner, None).await;
    for query in [
        "tenant=%00",
        "tenant=acme%00",
        "tenant=ACME",
        "tenant=a%20b",
    ] {
        let (status, body) = app.get_json(&format!("{TOKENS}?{query}"), &owner).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid-tenant")),
            "{query}: {body}"
        );
    }
    for tenant in ["\u{0}", "acme\u{0}", "Acme"] {
        let (status, body) =
            post_token(&app, &owner, json!({"role": "reader", "tenant": tenant})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid-tenant")),
            "{tenant:?}: {body}"
        );
    }
}
