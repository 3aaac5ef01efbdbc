//! No input crashes the server or reaches Postgres unchecked: NUL bytes in query
//! values and signed events, arbitrary query strings on every endpoint (proptest),
//! and a panic answers 500 JSON instead of dropping the connection.

use proptest::prelude::*;
use serde_json::{json, Value};
use tally::domain::Role;
use tally::sim::sign_webhook;

use crate::helpers::{account_object, spawn_app, TestApp};
use crate::sync::{add_org_tenant, spawn_sim, stored, sync_ok};

const LIST: &str = "/api/administrator/connect/stripe-accounts";
const COUNT: &str = "/api/administrator/connect/stripe-accounts-count";
const ONE: &str = "/api/administrator/connect/stripe-account";
const SECRET: &str = "whsec_test_nul_0123456789";

async fn code(app: &TestApp, path: &str, token: &str) -> (u16, String) {
    let (status, body) = app.get_json(path, token).await;
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_nul_in_a_query_value_is_a_400_with_the_parameters_own_code() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    app.store_accounts(
        tenant_id,
        &[account_object("acct_1Nul", 1_700_000_000, Some("o"))],
    )
    .await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;

    let balances = "/api/administrator/connect/balances";
    let refused = [
        (
            format!("{LIST}?accountid=%00"),
            &reader,
            "invalid-accountid",
        ),
        (
            format!("{LIST}?accountid=o%00&all=true"),
            &reader,
            "invalid-accountid",
        ),
        (
            format!("{COUNT}?accountid=%00"),
            &reader,
            "invalid-accountid",
        ),
        (
            format!("{LIST}?accountid={}", "x".repeat(501)),
            &reader,
            "invalid-accountid",
        ),
        (format!("{ONE}?stripeid=%00"), &reader, "invalid-stripeid"),
        (format!("{LIST}?tenant=%00"), &owner, "invalid-tenant"),
        (format!("{COUNT}?tenant=acme%00"), &owner, "invalid-tenant"),
        (
            format!("{ONE}?tenant=%00&stripeid=acct_1Nul"),
            &owner,
            "invalid-tenant",
        ),
        (format!("{balances}?tenant=%00"), &owner, "invalid-tenant"),
        // A tenant token naming a malformed tenant is refused the same way.
        (format!("{LIST}?tenant=%00"), &reader, "invalid-tenant"),
    ];
    for (path, token, expected) in refused {
        assert_eq!(
            code(&app, &path, token).await,
            (400, expected.into()),
            "{path}"
        );
    }
    // Well-formed values still work.
    assert_eq!(
        code(&app, &format!("{LIST}?accountid=o&tenant=acme"), &owner)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_signed_event_carrying_nul_is_stored_and_acknowledged() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 2, 0).await;
    let tenant = add_org_tenant(&app, &sim, "acme", Some(SECRET)).await;
    sync_ok(&app, &tenant).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let mut object = sim.account_object(&account).expect("account");
    object["business_profile"]["name"] = json!("Acme\u{0}Corp");
    object["metadata"]["accountid"] = json!("owner\u{0}1");
    let mut balance = sim.balance_of(&account).expect("balance");
    balance["note\u{0}"] = json!("x\u{0}");

    let cases = [
        ("evt_nul_account", "account.updated", object),
        ("evt_nul_balance", "balance.available", balance),
        (
            "evt_nul_\u{0}_ignored",
            "payout.paid",
            json!({"id": "po_\u{0}"}),
        ),
    ];
    for (id, kind, object) in cases {
        let payload = json!({
            "id": id, "object": "event", "type": kind, "account": account,
            "created": chrono::Utc::now().timestamp(), "data": {"object": object}
        })
        .to_string();
        assert!(
            payload.contains("\\u0000"),
            "the payload escapes NUL as JSON does"
        );
        let t = chrono::Utc::now().timestamp();
        let response = app
            .client
            .post(format!("{}/webhooks/stripe/acme", app.address))
            .header("stripe-signature", sign_webhook(SECRET, t, &payload))
            .body(payload)
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "{kind}: {body}");
    }
    let row = stored(&app, tenant.id, &account).await;
    assert_eq!(row.accountid.as_deref(), Some("owner\u{fffd}1"));
    let object: Value = serde_json::from_str(&row.stripe_object).expect("json");
    assert_eq!(object["business_profile"]["name"], "Acme\u{fffd}Corp");
    let latest =
        tally::store::snapshots::latest(&app.pool, tenant.id, &crate::helpers::acct(&account))
            .await
            .expect("query")
            .expect("the balance was stored");
    assert_eq!(latest.source, "webhook");
}

#[tokio::test]
async fn a_parameter_that_panicked_the_server_now_gets_a_json_answer() {
    // This max_age overflowed a date computation and the panic dropped the
    // connection. Whatever the bound on max_age, the answer is a JSON error.
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let response = app
        .get(
            "/api/administrator/connect/balances?max_age=10000000000000",
            &token,
        )
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    assert!(matches!(status, 400 | 500), "{status} {body}");
    assert_eq!(body["object"], "error");
    assert!(body["code"].is_string());
}

/// Query strings built from the pieces that break parsers: every parameter name the
/// endpoints read, integers past i64, signs, exponents, percent escapes (NUL,
/// invalid UTF-8, `&` and `=` inside values), empty values and repeated keys.
fn query_string() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("offset".to_owned()),
        Just("limit".to_owned()),
        Just("all".to_owned()),
        Just("accountid".to_owned()),
        Just("stripeid".to_owned()),
        Just("tenant".to_owned()),
        Just("starting_after".to_owned()),
        "[a-z%0-9]{0,6}",
    ];
    let value = prop_oneof![
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<i128>().prop_map(|n| n.to_string()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => Just("-0".to_owned()),
        1 => Just("+5".to_owned()),
        1 => Just("1e3".to_owned()),
        4 => Just("%00".to_owned()),
        2 => Just("o%00".to_owned()),
        1 => Just("%FF%FE".to_owned()),
        1 => Just("%".to_owned()),
        1 => Just("%2".to_owned()),
        1 => Just("a%26b%3Dc".to_owned()),
        1 => Just("acct_1Q".to_owned()),
        1 => Just("acme".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just(String::new()),
        1 => "[ -~]{0,12}",
        1 => "\\PC{0,8}",
    ];
    let pair = (key, prop::option::of(value)).prop_map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k,
    });
    prop_oneof![
        prop::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join("&")),
        "[ -~]{0,40}",
    ]
}

/// What each endpoint may answer: its documented statuses and codes, never a 5xx.
fn documented(path: &str, status: u16, code: &str) -> bool {
    let common = matches!(
        (status, code),
        (400, "invalid-query" | "invalid-tenant" | "missing-tenant") | (404, "invalid-tenant")
    );
    let own = match path {
        LIST => matches!(
            (status, code),
            (200, "")
                | (
                    400,
                    "invalid-offset"
                        | "invalid-limit"
                        | "invalid-all"
                        | "invalid-accountid"
                        | "invalid-starting-after"
                        | "invalid-ending-before"
                        | "invalid-paging"
                )
                | (404, "invalid-accountid")
                | (429, "too-many-streams")
        ),
        COUNT => matches!(
            (status, code),
            (200, "") | (400, "invalid-accountid") | (404, "invalid-accountid")
        ),
        ONE => matches!(
            (status, code),
            (200, "") | (400, "invalid-stripeid") | (404, "invalid-stripeid")
        ),
        _ => false,
    };
    common || own
}

/// The status and error code (empty for a success) of `GET path?query`.
async fn answer(app: &TestApp, path: &str, query: &str, token: &str) -> (u16, String) {
    let response = app
        .client
        .get(format!("{}{path}?{query}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers (it did not drop the connection)");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON body");
    let code = if status == 200 {
        String::new()
    } else {
        assert_eq!(body["object"], "error", "{body}");
        body["code"].as_str().unwrap_or("(none)").to_owned()
    };
    (status, code)
}

#[test]
fn arbitrary_query_strings_get_documented_answers_on_every_account_endpoint() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, reader, owner) = runtime.block_on(async {
        let app = spawn_app().await;
        let tenant_id = app.add_tenant("acme").await;
        let objects: Vec<Value> = (0..30)
            .map(|i| account_object(&format!("acct_1Q{i:03}"), 1_700_000_000 + i, Some("o")))
            .collect();
        app.store_accounts(tenant_id, &objects).await;
        let reader = app.token(Role::Reader, Some("acme")).await;
        let owner = app.token(Role::Owner, None).await;
        (app, reader, owner)
    });
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(query in query_string(), as_owner in any::<bool>(), which in 0..3_usize)| {
        let path = [LIST, COUNT, ONE][which];
        let token = if as_owner { &owner } else { &reader };
        let (status, code) = runtime.block_on(answer(&app, path, &query, token));
        prop_assert!(
            documented(path, status, &code),
            "GET {path}?{query} answered {status} {code}"
        );
    });
}

/// A path segment: tenant slugs, run ids, and what is neither.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("acme".to_owned()),
        Just("%00".to_owned()),
        // Not UTF-8 once decoded: the path extractor's own rejection must not show.
        Just("%80".to_owned()),
        Just("%Aa".to_owned()),
        Just("ACME".to_owned()),
        Just("6f0c0d9e-0000-4000-8000-000000000000".to_owned()),
        "[a-z0-9_.~-]{1,70}",
        "[A-Za-z0-9%]{1,12}",
    ]
}

#[test]
fn arbitrary_paths_bodies_and_signatures_get_documented_answers_on_sync_and_webhooks() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, reader) = runtime.block_on(async {
        let app = spawn_app().await;
        app.add_tenant("acme").await;
        let reader = app.token(Role::Reader, Some("acme")).await;
        (app, reader)
    });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(id in segment(), body in "\\PC{0,40}", signature in "[ -~]{0,60}")| {
        let (status, code) = runtime.block_on(async {
            let response = app
                .client
                .get(format!("{}/api/administrator/connect/sync/{id}", app.address))
                .bearer_auth(&reader)
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body["code"].as_str().unwrap_or("").to_owned())
        });
        prop_assert!(
            matches!((status, code.as_str()), (404, "invalid-syncid" | "not-found")),
            "sync/{id}: {status} {code}"
        );
        let (status, code) = runtime.block_on(async {
            let response = app
                .client
                .post(format!("{}/webhooks/stripe/{id}", app.address))
                .header("stripe-signature", signature.as_str())
                .body(body.clone())
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body["code"].as_str().unwrap_or("").to_owned())
        });
        prop_assert!(
            matches!(
                (status, code.as_str()),
                (400, "invalid-signature" | "webhook-not-configured" | "invalid-event")
                    | (404, "invalid-tenant" | "not-found")
            ),
            "webhooks/stripe/{id}: {status} {code}"
        );
    });
}
