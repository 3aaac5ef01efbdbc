//! The Dashboard-compatible listing, count and lookup, including the Dashboard
//! module's own test cases.

use serde_json::Value;
use tally::domain::Role;

use crate::helpers::{account_object, ids, spawn_app, spawn_app_with, TestApp};

const LIST: &str = "/api/administrator/connect/stripe-accounts";
const COUNT: &str = "/api/administrator/connect/stripe-accounts-count";
const ONE: &str = "/api/administrator/connect/stripe-account";

/// The Dashboard module's fixture: page_size + 2 owners with one account each, then
/// one owner with two accounts (the newest). Returns the ids newest first and the
/// owner of the last two.
async fn dashboard_fixture(
    app: &TestApp,
    tenant_id: i64,
    page_size: usize,
) -> (Vec<String>, String) {
    let mut objects = Vec::new();
    for i in 0..page_size + 2 {
        let id = format!("acct_1Single{i:04}");
        objects.push(account_object(
            &id,
            1_700_000_000 + i as i64,
            Some(&format!("owner_{i}")),
        ));
    }
    let owner = "acct_03e7768574aa6c3d".to_owned();
    objects.push(account_object("acct_1DoubleA", 1_700_001_000, Some(&owner)));
    objects.push(account_object("acct_1DoubleB", 1_700_001_001, Some(&owner)));
    app.store_accounts(tenant_id, &objects).await;
    let mut newest_first: Vec<String> = objects
        .iter()
        .map(|o| o["id"].as_str().expect("id").to_owned())
        .collect();
    newest_first.reverse();
    (newest_first, owner)
}

async fn reader_app(page_size: i64) -> (TestApp, i64, String) {
    let app = spawn_app_with(|s| s.api.page_size = page_size).await;
    let tenant_id = app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    (app, tenant_id, token)
}

#[tokio::test]
async fn the_default_page_is_page_size_records_newest_first() {
    let (app, tenant_id, token) = reader_app(10).await;
    let (expected, _) = dashboard_fixture(&app, tenant_id, 10).await;
    let response = app.get(LIST, &token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-total-count"], "14");
    let body: Value = response.json().await.expect("json");
    assert_eq!(ids(&body), expected[..10]);
}

#[tokio::test]
async fn page_size_setting_changes_the_default_page() {
    let (app, tenant_id, token) = reader_app(3).await;
    let (expected, _) = dashboard_fixture(&app, tenant_id, 3).await;
    let (status, body) = app.get_json(LIST, &token).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), expected[..3]);
}

#[tokio::test]
async fn offset_one_shifts_the_page_by_one() {
    let (app, tenant_id, token) = reader_app(2).await;
    let (expected, _) = dashboard_fixture(&app, tenant_id, 2).await;
    let (_, body) = app.get_json(&format!("{LIST}?offset=1"), &token).await;
    assert_eq!(ids(&body), expected[1..3]);
}

#[tokio::test]
async fn limit_one_gives_one_record_and_offset_limit_combine() {
    let (app, tenant_id, token) = reader_app(10).await;
    let (expected, _) = dashboard_fixture(&app, tenant_id, 10).await;
    let (_, body) = app.get_json(&format!("{LIST}?limit=1"), &token).await;
    assert_eq!(ids(&body), expected[..1]);
    let (_, body) = app
        .get_json(&format!("{LIST}?offset=12&limit=5"), &token)
        .await;
    assert_eq!(ids(&body), expected[12..]);
    let (_, body) = app.get_json(&format!("{LIST}?offset=100"), &token).await;
    assert_eq!(body, serde_json::json!([]));
}

#[tokio::test]
async fn all_true_gives_every_record_in_order() {
    let (app, tenant_id, token) = reader_app(10).await;
    let (expected, _) = dashboard_fixture(&app, tenant_id, 10).await;
    let response = app
        .get(&format!("{LIST}?all=true&limit=1&offset=3"), &token)
        .await;
    assert_eq!(response.headers()["x-total-count"], "14");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        ids(&body),
        expected,
        "all ignores offset and limit, as the Dashboard does"
    );
}

#[tokio::test]
async fn accountid_gives_only_that_owners_records() {
    let (app, tenant_id, token) = reader_app(10).await;
    let (expected, owner) = dashboard_fixture(&app, tenant_id, 10).await;
    let response = app.get(&format!("{LIST}?accountid={owner}"), &token).await;
    assert_eq!(response.headers()["x-total-count"], "2");
    let body: Value = response.json().await.expect("json");
    assert_eq!(ids(&body), expected[..2]);
    for record in body.as_array().expect("array") {
        assert_eq!(record["accountid"], owner.as_str());
    }
    let (_, body) = app
        .get_json(&format!("{LIST}?accountid={owner}&offset=1"), &token)
        .await;
    assert_eq!(ids(&body), expected[1..2]);
    let (_, body) = app
        .get_json(&format!("{LIST}?accountid={owner}&all=true"), &token)
        .await;
    assert_eq!(ids(&body), expected[..2]);
}

#[tokio::test]
async fn unknown_accountid_is_invalid_accountid_on_list_and_count() {
    let (app, tenant_id, token) = reader_app(10).await;
    dashboard_fixture(&app, tenant_id, 10).await;
    for path in [
        format!("{LIST}?accountid=invalid"),
        format!("{COUNT}?accountid=invalid"),
    ] {
        let (status, body) = app.get_json(&path, &token).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["object"], "error");
        assert_eq!(body["code"], "invalid-accountid");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn malformed_paging_values_get_stable_codes() {
    let (app, tenant_id, token) = reader_app(10).await;
    dashboard_fixture(&app, tenant_id, 10).await;
    let cases = [
        ("offset=-1", "invalid-offset"),
        ("offset=abc", "invalid-offset"),
        ("offset=1.5", "invalid-offset"),
        ("limit=0", "invalid-limit"),
        ("limit=-3", "invalid-limit"),
        ("limit=ten", "invalid-limit"),
        ("all=maybe", "invalid-all"),
    ];
    for (query, code) in cases {
        let (status, body) = app.get_json(&format!("{LIST}?{query}"), &token).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["code"], code, "{query}");
        assert_eq!(body["object"], "error");
    }
}

#[tokio::test]
async fn count_counts_listed_records_and_one_owners() {
    let (app, tenant_id, token) = reader_app(10).await;
    let (_, owner) = dashboard_fixture(&app, tenant_id, 10).await;
    let (status, body) = app.get_json(COUNT, &token).await;
    assert_eq!((status, body), (200, serde_json::json!(14)));
    let (_, body) = app
        .get_json(&format!("{COUNT}?accountid={owner}"), &token)
        .await;
    assert_eq!(body, serde_json::json!(2));
}

#[tokio::test]
async fn an_empty_tenant_lists_an_empty_array_and_counts_zero() {
    let (app, _, token) = reader_app(10).await;
    let response = app.get(LIST, &token).await;
    assert_eq!(response.headers()["x-total-count"], "0");
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        serde_json::json!([])
    );
    let (_, body) = app.get_json(&format!("{LIST}?all=true"), &token).await;
    assert_eq!(body, serde_json::json!([]));
    let (_, body) = app.get_json(COUNT, &token).await;
    assert_eq!(body, serde_json::json!(0));
}

#[tokio::test]
async fn records_have_the_dashboard_shape() {
    let (app, tenant_id, token) = reader_app(10).await;
    let object = account_object(
        "acct_1LEBrTDFE7gToZYy",
        1656074627,
        Some("acct_03e7768574aa6c3d"),
    );
    app.store_accounts(tenant_id, std::slice::from_ref(&object))
        .await;
    let (status, record) = app
        .get_json(&format!("{ONE}?stripeid=acct_1LEBrTDFE7gToZYy"), &token)
        .await;
    assert_eq!(status, 200);
    let mut keys: Vec<&str> = record
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "accountid",
            "appid",
            "createdAt",
            "object",
            "platformid",
            "stripeObject",
            "stripeid",
            "updatedAt"
        ]
    );
    assert_eq!(record["stripeid"], "acct_1LEBrTDFE7gToZYy");
    assert_eq!(record["object"], "stripeAccount");
    assert_eq!(record["accountid"], "acct_03e7768574aa6c3d");
    assert_eq!(record["appid"], "acme");
    assert_eq!(record["platformid"], Value::Null);
    assert_eq!(record["stripeObject"], object);
    assert_eq!(record["createdAt"], "2022-06-24T12:43:47.000Z");
    let (_, listed) = app.get_json(LIST, &token).await;
    assert_eq!(listed[0], record);
}

#[tokio::test]
async fn stripe_account_refuses_missing_malformed_and_unknown_ids() {
    let (app, tenant_id, token) = reader_app(10).await;
    dashboard_fixture(&app, tenant_id, 10).await;
    for (query, status) in [
        ("", 400),
        ("?stripeid=", 400),
        ("?stripeid=cus_123", 400),
        ("?stripeid=acct_1Nope", 404),
    ] {
        let (got, body) = app.get_json(&format!("{ONE}{query}"), &token).await;
        assert_eq!(got, status, "{query}");
        assert_eq!(body["code"], "invalid-stripeid", "{query}");
    }
}

#[tokio::test]
async fn ties_on_created_are_ordered_by_stripeid() {
    let (app, tenant_id, token) = reader_app(10).await;
    let objects: Vec<Value> = ["acct_1C", "acct_1A", "acct_1B"]
        .iter()
        .map(|id| account_object(id, 1_700_000_000, None))
        .collect();
    app.store_accounts(tenant_id, &objects).await;
    app.store_accounts(tenant_id, &[account_object("acct_1Z", 1_600_000_000, None)])
        .await;
    let (_, body) = app.get_json(LIST, &token).await;
    assert_eq!(ids(&body), ["acct_1A", "acct_1B", "acct_1C", "acct_1Z"]);
}

#[tokio::test]
async fn large_pages_and_all_stream_every_record_in_order() {
    let (app, tenant_id, token) = reader_app(10).await;
    let objects: Vec<Value> = (0..1200)
        .map(|i| account_object(&format!("acct_1Bulk{i:05}"), 1_600_000_000 + i, None))
        .collect();
    app.store_accounts(tenant_id, &objects).await;
    let expected: Vec<String> = (0..1200)
        .rev()
        .map(|i| format!("acct_1Bulk{i:05}"))
        .collect();
    let (_, body) = app.get_json(&format!("{LIST}?all=true"), &token).await;
    assert_eq!(ids(&body), expected);
    let (_, body) = app
        .get_json(&format!("{LIST}?offset=50&limit=700"), &token)
        .await;
    assert_eq!(ids(&body), expected[50..750]);
}

#[tokio::test]
async fn upserting_the_same_object_changes_nothing_and_a_change_is_kept() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let object = account_object("acct_1Same", 1_700_000_000, Some("owner_a"));
    app.store_accounts(tenant_id, std::slice::from_ref(&object))
        .await;
    let path = format!("{ONE}?stripeid=acct_1Same");
    let (_, first) = app.get_json(&path, &token).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.store_accounts(tenant_id, std::slice::from_ref(&object))
        .await;
    let (_, second) = app.get_json(&path, &token).await;
    assert_eq!(
        first["updatedAt"], second["updatedAt"],
        "an unchanged object keeps updatedAt"
    );

    let moved = account_object("acct_1Same", 1_700_000_000, Some("owner_b"));
    app.store_accounts(tenant_id, &[moved]).await;
    let (_, third) = app.get_json(&path, &token).await;
    assert_eq!(third["accountid"], "owner_b");
    assert_ne!(third["updatedAt"], first["updatedAt"]);
    let (_, count) = app.get_json(COUNT, &token).await;
    assert_eq!(
        count,
        serde_json::json!(1),
        "an update is not a second record"
    );
}
