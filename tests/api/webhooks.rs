//! `POST /webhooks/stripe/{tenant}`: signatures (valid, wrong secret, stale, tampered,
//! several v1 values), replays, the three events, and tenant isolation.

use serde_json::{json, Value};
use tally::sim::{sign_webhook, SimHandle};
use tally::store;
use tally::store::tenants::Tenant;

use crate::helpers::{spawn_app, TestApp};
use crate::sync::{add_org_tenant, add_platform_tenant, spawn_sim, stored, sync_ok};

pub(crate) const SECRET: &str = "whsec_test_acme_0123456789";
const OTHER_SECRET: &str = "whsec_test_globex_987654321";

fn url(app: &TestApp, slug: &str) -> String {
    format!("{}/webhooks/stripe/{slug}", app.address)
}

/// Has the simulator sign and send a `kind` event about `account`; returns the status.
async fn sim_sends(
    app: &TestApp,
    sim: &SimHandle,
    slug: &str,
    secret: &str,
    kind: &str,
    account: &str,
) -> u16 {
    sim.send_webhook(&url(app, slug), secret, kind, account)
        .await
        .expect("sent")
        .as_u16()
}

/// Posts `payload` with the given `Stripe-Signature` header; returns status and body.
pub(crate) async fn post_raw(
    app: &TestApp,
    slug: &str,
    payload: &str,
    signature: &str,
) -> (u16, Value) {
    let response = app
        .client
        .post(url(app, slug))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(payload.to_owned())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// Posts `event` signed with `secret` at `t`.
pub(crate) async fn post_event(
    app: &TestApp,
    slug: &str,
    secret: &str,
    event: &Value,
    t: i64,
) -> (u16, Value) {
    let payload = event.to_string();
    post_raw(app, slug, &payload, &sign_webhook(secret, t, &payload)).await
}

/// Every refusal before the signature verifies looks the same, whatever the reason.
pub(crate) fn assert_refused(status: u16, body: &Value) {
    assert_eq!(
        (status, body),
        (
            400,
            &json!({
                "object": "error",
                "code": "invalid-signature",
                "message": "the Stripe-Signature header does not verify for this endpoint"
            })
        )
    );
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn event(id: &str, kind: &str, account: &str, object: Value) -> Value {
    json!({
        "id": id, "object": "event", "type": kind, "account": account, "context": account,
        "created": now(), "livemode": false, "pending_webhooks": 1,
        "data": {"object": object}
    })
}

async fn synced_org(app: &TestApp, sim: &SimHandle, slug: &str, secret: &str) -> Tenant {
    let tenant = add_org_tenant(app, sim, slug, Some(secret)).await;
    sync_ok(app, &tenant).await;
    tenant
}

async fn accountid(app: &TestApp, tenant: &Tenant, stripeid: &str) -> Option<String> {
    stored(app, tenant.id, stripeid).await.accountid
}

async fn processed_events(app: &TestApp, tenant_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_signed_account_updated_event_is_applied() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 10, 1).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[1].accounts[2].clone();
    sim.update_account_metadata(&account, "accountid", Some("owner_from_webhook"));

    assert_eq!(
        sim_sends(&app, &sim, "acme", SECRET, "account.updated", &account).await,
        200
    );
    assert_eq!(
        accountid(&app, &tenant, &account).await.as_deref(),
        Some("owner_from_webhook")
    );
    // The stored platform is kept (the event's context names only the account).
    let row = stored(&app, tenant.id, &account).await;
    assert_eq!(
        row.platform_id.as_deref(),
        Some(sim.keys().platforms[1].id.as_str())
    );
}

#[tokio::test]
async fn bad_signatures_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let before = accountid(&app, &tenant, &account).await;
    let mut object = sim.account_object(&account).expect("account");
    object["metadata"]["accountid"] = json!("owner_forged");
    let forged = event("evt_forged1", "account.updated", &account, object);
    let payload = forged.to_string();

    // Signed with another secret.
    let (status, body) = post_event(&app, "acme", OTHER_SECRET, &forged, now()).await;
    assert_refused(status, &body);
    // Correct secret, but signed six minutes ago: the same answer (the log says why).
    let (status, body) = post_event(&app, "acme", SECRET, &forged, now() - 360).await;
    assert_refused(status, &body);
    // Correct signature over a different body.
    let signature = sign_webhook(SECRET, now(), &payload);
    let tampered = payload.replace("owner_forged", "owner_forged2");
    let (status, body) = post_raw(&app, "acme", &tampered, &signature).await;
    assert_refused(status, &body);
    // No signature at all, and a signature header that is not one.
    let (status, body) = post_raw(&app, "acme", &payload, "").await;
    assert_refused(status, &body);
    let (status, body) = post_raw(&app, "acme", &payload, "t=abc,v1=zz").await;
    assert_refused(status, &body);

    assert_eq!(accountid(&app, &tenant, &account).await, before);
    assert_eq!(processed_events(&app, tenant.id).await, 0);
}

#[tokio::test]
async fn one_valid_v1_among_several_is_enough() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[0].accounts[1].clone();
    let mut object = sim.account_object(&account).expect("account");
    object["metadata"]["accountid"] = json!("owner_rolled");
    let payload = event("evt_rolled1", "account.updated", &account, object).to_string();
    let t = now();
    let old = sign_webhook("whsec_old_secret", t, &payload);
    let new = sign_webhook(SECRET, t, &payload);
    let v1 = |header: &str| header.split_once(",v1=").expect("v1").1.to_owned();
    let header = format!("t={t},v1={},v1={}", v1(&old), v1(&new));

    let (status, body) = post_raw(&app, "acme", &payload, &header).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied");
    assert_eq!(
        accountid(&app, &tenant, &account).await.as_deref(),
        Some("owner_rolled")
    );
}

#[tokio::test]
async fn a_replayed_event_id_is_acknowledged_and_applied_once() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[0].accounts[2].clone();
    let balance = event(
        "evt_balance1",
        "balance.available",
        &account,
        sim.balance_of(&account).expect("balance"),
    );

    let (first, body) = post_event(&app, "acme", SECRET, &balance, now()).await;
    assert_eq!((first, body["outcome"].as_str()), (200, Some("applied")));
    let (again, body) = post_event(&app, "acme", SECRET, &balance, now()).await;
    assert_eq!((again, body["outcome"].as_str()), (200, Some("duplicate")));

    let history = store::snapshots::history(
        &app.pool,
        tenant.id,
        &crate::helpers::acct(&account),
        None,
        None,
        10,
    )
    .await
    .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(processed_events(&app, tenant.id).await, 1);
}

#[tokio::test]
async fn balance_available_stores_a_snapshot_in_the_totals() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[0].accounts[3].clone();

    assert_eq!(
        sim_sends(&app, &sim, "acme", SECRET, "balance.available", &account).await,
        200
    );
    let latest = store::snapshots::latest(&app.pool, tenant.id, &crate::helpers::acct(&account))
        .await
        .expect("query")
        .expect("a snapshot");
    assert_eq!(latest.source, "webhook");
    assert_eq!(latest.balance, sim.balance_of(&account));
    let totals = store::snapshots::tenant_totals(&app.pool, tenant.id)
        .await
        .expect("totals");
    assert!(!totals.is_empty());
}

#[tokio::test]
async fn deauthorized_accounts_are_marked_removed() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let account = sim.keys().platforms[0].accounts[4].clone();

    assert_eq!(
        sim_sends(
            &app,
            &sim,
            "acme",
            SECRET,
            "account.application.deauthorized",
            &account
        )
        .await,
        200
    );
    let row = stored(&app, tenant.id, &account).await;
    assert!(row.removed_at.is_some());
    assert_eq!(
        store::accounts::count(&app.pool, tenant.id)
            .await
            .expect("count"),
        4
    );
}

#[tokio::test]
async fn a_new_account_takes_its_platform_from_the_context() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let platform = sim.keys().platforms[0].id.clone();
    let added = sim.add_accounts(&platform, 1).remove(0);
    let mut created = event(
        "evt_new1",
        "account.updated",
        &added,
        sim.account_object(&added).expect("account"),
    );
    created["context"] = json!(format!("{platform}/{added}"));

    let (status, body) = post_event(&app, "acme", SECRET, &created, now()).await;

    assert_eq!(status, 200, "{body}");
    let row = stored(&app, tenant.id, &added).await;
    assert_eq!(row.platform_id.as_deref(), Some(platform.as_str()));
}

#[tokio::test]
async fn other_types_mark_their_account_changed_and_unknown_tenants_are_refused_as_bad_signatures()
{
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    synced_org(&app, &sim, "acme", SECRET).await;
    add_platform_tenant(&app, &sim, "nosecret", 0, None).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let payout = event(
        "evt_payout1",
        "payout.paid",
        &account,
        json!({"id": "po_1"}),
    );

    let (status, body) = post_event(&app, "acme", SECRET, &payout, now()).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("applied")));
    // About an account the tenant does not list: recorded, nothing to mark.
    let elsewhere = event(
        "evt_payout2",
        "payout.paid",
        "acct_1NotListedHere",
        json!({"id": "po_2"}),
    );
    let (status, body) = post_event(&app, "acme", SECRET, &elsewhere, now()).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("ignored")));
    // An unknown tenant, a malformed slug and a tenant without a secret get exactly
    // a bad signature's answer: an unauthenticated caller learns nothing.
    for slug in ["nobody", "NOT%20A%20SLUG", "nosecret"] {
        let (status, body) = post_event(&app, slug, SECRET, &payout, now()).await;
        assert_refused(status, &body);
    }
    // Signed correctly, but not an event.
    let (status, body) =
        post_raw(&app, "acme", "[1,2]", &sign_webhook(SECRET, now(), "[1,2]")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-event"))
    );
}

#[tokio::test]
async fn a_webhook_for_one_tenant_never_touches_another() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 6, 0).await;
    // Two tenants holding the same platform's accounts, each with its own secret.
    let acme = add_platform_tenant(&app, &sim, "acme", 0, Some(SECRET)).await;
    let globex = add_platform_tenant(&app, &sim, "globex", 0, Some(OTHER_SECRET)).await;
    sync_ok(&app, &acme).await;
    sync_ok(&app, &globex).await;
    let account = sim.keys().platforms[0].accounts[0].clone();

    // acme's event, signed with acme's secret, sent to globex: refused.
    assert_eq!(
        sim_sends(
            &app,
            &sim,
            "globex",
            SECRET,
            "account.application.deauthorized",
            &account
        )
        .await,
        400
    );
    // Sent to acme: only acme's record changes.
    assert_eq!(
        sim_sends(
            &app,
            &sim,
            "acme",
            SECRET,
            "account.application.deauthorized",
            &account
        )
        .await,
        200
    );
    assert_eq!(
        sim_sends(
            &app,
            &sim,
            "acme",
            SECRET,
            "balance.available",
            &sim.keys().platforms[0].accounts[1]
        )
        .await,
        200
    );

    assert!(stored(&app, acme.id, &account).await.removed_at.is_some());
    assert!(stored(&app, globex.id, &account).await.removed_at.is_none());
    assert_eq!(
        store::accounts::count(&app.pool, globex.id)
            .await
            .expect("count"),
        6
    );
    assert!(store::snapshots::tenant_totals(&app.pool, globex.id)
        .await
        .expect("totals")
        .is_empty());
    assert_eq!(processed_events(&app, globex.id).await, 0);
}

#[tokio::test]
async fn a_balance_too_large_to_sum_is_kept_as_a_failed_try_and_answered_200() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = synced_org(&app, &sim, "acme", SECRET).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let huge = |entries: usize| {
        json!({
            "object": "balance", "livemode": false, "pending": [],
            "available": vec![json!({"amount": i64::MAX, "currency": "usd"}); entries],
        })
    };
    // Two accounts at 2^63-1 each: the tenant's total cannot hold both; one account
    // whose own entries overflow.
    let sent = [
        ("evt_huge_1", &accounts[0], huge(1)),
        ("evt_huge_2", &accounts[1], huge(1)),
        ("evt_huge_3", &accounts[2], huge(2)),
    ];
    for (id, account, balance) in &sent {
        let (status, body) = post_event(
            &app,
            "acme",
            SECRET,
            &event(id, "balance.available", account, balance.clone()),
            now(),
        )
        .await;
        assert_eq!(
            (status, body["outcome"].as_str()),
            (200, Some("applied")),
            "{id}: {body}"
        );
    }
    let mut overflowed = 0;
    for (_, account, _) in &sent {
        let latest = store::snapshots::latest(&app.pool, tenant.id, &crate::helpers::acct(account))
            .await
            .expect("query")
            .expect("a snapshot");
        if let Some(error) = &latest.error {
            assert_eq!(
                error.0.code.as_deref(),
                Some("amount-overflow"),
                "{account}"
            );
            overflowed += 1;
        }
    }
    assert_eq!(
        overflowed, 2,
        "the second 2^63-1 and the one that overflows alone"
    );

    // The aggregate answers, with the failures saying why.
    let reader = app.token(tally::domain::Role::Reader, Some("acme")).await;
    let (status, body) = app
        .get_json("/api/administrator/connect/balances", &reader)
        .await;
    assert_eq!(status, 200, "{body}");
    let overflowing = body["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter(|failure| failure["code"] == "amount-overflow")
        .count();
    assert_eq!(overflowing, 2, "{body}");
    assert_eq!(body["totals"][0]["available"], i64::MAX, "{body}");
}
