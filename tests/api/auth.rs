//! Bearer tokens, roles and tenant isolation.

use serde_json::Value;
use tally::domain::Role;

use crate::helpers::{account_object, ids, spawn_app};

const LIST: &str = "/api/administrator/connect/stripe-accounts";
const ONE: &str = "/api/administrator/connect/stripe-account";

#[tokio::test]
async fn a_missing_or_unknown_token_gets_401() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let response = app
        .client
        .get(format!("{}{LIST}", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");

    let (status, body) = app.get_json(LIST, "tly_not-a-real-token").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));

    let response = app
        .client
        .get(format!("{}{LIST}", app.address))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_owner_names_the_tenant_and_sees_any() {
    let app = spawn_app().await;
    let acme = app.add_tenant("acme").await;
    let globex = app.add_tenant("globex").await;
    app.store_accounts(acme, &[account_object("acct_1Acme", 1, None)])
        .await;
    app.store_accounts(globex, &[account_object("acct_1Globex", 1, None)])
        .await;
    let owner = app.token(Role::Owner, None).await;

    let (status, body) = app.get_json(LIST, &owner).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("missing-tenant"))
    );
    let (_, body) = app.get_json(&format!("{LIST}?tenant=acme"), &owner).await;
    assert_eq!(ids(&body), ["acct_1Acme"]);
    let (_, body) = app.get_json(&format!("{LIST}?tenant=globex"), &owner).await;
    assert_eq!(ids(&body), ["acct_1Globex"]);
    assert_eq!(body[0]["appid"], "globex");
    let (status, body) = app.get_json(&format!("{LIST}?tenant=nope"), &owner).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-tenant"))
    );
}

#[tokio::test]
async fn a_tenant_token_never_reads_another_tenants_records() {
    let app = spawn_app().await;
    let acme = app.add_tenant("acme").await;
    let globex = app.add_tenant("globex").await;
    app.store_accounts(acme, &[account_object("acct_1Acme", 1, Some("owner_acme"))])
        .await;
    app.store_accounts(
        globex,
        &[account_object("acct_1Globex", 1, Some("owner_globex"))],
    )
    .await;

    for role in [Role::Reader, Role::Admin] {
        let token = app.token(role, Some("acme")).await;
        let (_, own) = app.get_json(LIST, &token).await;
        assert_eq!(ids(&own), ["acct_1Acme"]);
        let (_, own_named) = app.get_json(&format!("{LIST}?tenant=acme"), &token).await;
        assert_eq!(ids(&own_named), ["acct_1Acme"]);

        // Another tenant's slug, record or owner is answered exactly as a missing one.
        let other = app.get_json(&format!("{LIST}?tenant=globex"), &token).await;
        let missing = app
            .get_json(&format!("{LIST}?tenant=no-such-tenant"), &token)
            .await;
        assert_eq!(other, missing);
        assert_eq!(other.0, 404);

        let other = app
            .get_json(&format!("{ONE}?stripeid=acct_1Globex"), &token)
            .await;
        let missing = app
            .get_json(&format!("{ONE}?stripeid=acct_1Missing"), &token)
            .await;
        assert_eq!(other, missing);
        assert_eq!(other.1["code"], "invalid-stripeid");

        let other = app
            .get_json(&format!("{LIST}?accountid=owner_globex"), &token)
            .await;
        let missing = app
            .get_json(&format!("{LIST}?accountid=owner_missing"), &token)
            .await;
        assert_eq!(other, missing);
        assert_eq!(other.1["code"], "invalid-accountid");
    }
}

#[tokio::test]
async fn tokens_for_tenants_need_a_tenant_and_owners_none() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let no_tenant = tally::tokens::create(&app.pool, Role::Reader, None).await;
    assert!(no_tenant.is_err());
    let owner_with_tenant = tally::tokens::create(&app.pool, Role::Owner, Some("acme")).await;
    assert!(owner_with_tenant.is_err());
    let unknown = tally::tokens::create(&app.pool, Role::Admin, Some("nope")).await;
    assert!(unknown
        .expect_err("unknown tenant")
        .to_string()
        .contains("nope"));
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_all(&app.pool)
        .await
        .expect("query");
    assert!(hashes.is_empty(), "refused tokens are not stored");

    let token = app.token(Role::Reader, Some("acme")).await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_one(&app.pool)
        .await
        .expect("query");
    assert_ne!(stored, token.as_bytes(), "only the hash is stored");
    assert_eq!(stored, tally::crypto::hash_token(&token));
}
