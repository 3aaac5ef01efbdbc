//! No input crashes the server or reaches Postgres unchecked: NUL bytes in query
//! values and signed events.

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

    for path in [
        format!("{LIST}?accountid=%00"),
        format!("{LIST}?accountid=o%00&all=true"),
        format!("{COUNT}?accountid=%00"),
        format!("{LIST}?accountid={}", "x".repeat(501)),
    ] {
        assert_eq!(
            code(&app, &path, &reader).await,
            (400, "invalid-accountid".into()),
            "{path}"
        );
    }
    assert_eq!(
        code(&app, &format!("{ONE}?stripeid=%00"), &reader).await,
        (400, "invalid-stripeid".into())
    );
    for path in [
        format!("{LIST}?tenant=%00"),
        format!("{COUNT}?tenant=acme%00"),
        format!("{ONE}?tenant=%00&stripeid=acct_1Nul"),
        "/api/administrator/connect/balances?tenant=%00".to_owned(),
    ] {
        assert_eq!(
            code(&app, &path, &owner).await,
            (400, "invalid-tenant".into()),
            "{path}"
        );
    }
    // A tenant token naming a malformed tenant is refused the same way.
    assert_eq!(
        code(&app, &format!("{LIST}?tenant=%00"), &reader).await,
        (400, "invalid-tenant".into())
    );
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
    let latest = tally::store::snapshots::latest(&app.pool, tenant.id, &account)
        .await
        .expect("query")
        .expect("the balance was stored");
    assert_eq!(latest.source, "webhook");
}
