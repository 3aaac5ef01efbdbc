//! Stripe does not deliver events in order, and a sync page can race a webhook: an
//! older observation never replaces a newer one, and the receipt says `stale`.

use std::time::Duration;

use serde_json::{json, Value};
use tally::sim::{sign_webhook, SimHandle};
use tally::store;
use tally::store::tenants::Tenant;
use tally::sync::SyncOptions;

use crate::helpers::{spawn_app, TestApp};
use crate::sync::{add_org_tenant, spawn_sim, stored, sync_ok, sync_with};

const SECRET: &str = "whsec_test_order_0123456789";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Posts an event of `kind` about `account`, created at `created`, signed now.
async fn deliver(
    app: &TestApp,
    tenant: &Tenant,
    id: &str,
    kind: &str,
    account: &str,
    created: i64,
    object: Value,
) -> (u16, Value) {
    let event = json!({
        "id": id, "object": "event", "type": kind, "account": account, "context": account,
        "created": created, "livemode": false, "pending_webhooks": 1,
        "data": {"object": object}
    });
    let payload = event.to_string();
    let response = app
        .client
        .post(format!("{}/webhooks/stripe/{}", app.address, tenant.slug))
        .header("content-type", "application/json")
        .header("stripe-signature", sign_webhook(SECRET, now(), &payload))
        .body(payload)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Delivers an `account.updated` about `account`, created at `created`, naming `owner`.
async fn update(
    app: &TestApp,
    sim: &SimHandle,
    tenant: &Tenant,
    id: &str,
    account: &str,
    created: i64,
    owner: &str,
) -> (u16, Value) {
    let object = owned_by(sim, account, owner);
    deliver(app, tenant, id, "account.updated", account, created, object).await
}

fn owned_by(sim: &SimHandle, account: &str, owner: &str) -> Value {
    let mut object = sim.account_object(account).expect("account");
    object["metadata"]["accountid"] = json!(owner);
    object
}

async fn synced(app: &TestApp, sim: &SimHandle) -> Tenant {
    let tenant = add_org_tenant(app, sim, "acme", Some(SECRET)).await;
    sync_ok(app, &tenant).await;
    tenant
}

#[tokio::test]
async fn an_older_account_updated_delivered_late_is_stale() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = synced(&app, &sim).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let t = now();

    let (status, body) = update(&app, &sim, &tenant, "evt_new", &account, t, "owner_newer").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (status, body) = update(
        &app,
        &sim,
        &tenant,
        "evt_old",
        &account,
        t - 60,
        "owner_older",
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    assert_eq!(
        stored(&app, tenant.id, &account).await.accountid.as_deref(),
        Some("owner_newer")
    );
    // A stale event is still processed once: its redelivery is a duplicate.
    let (_, body) = update(
        &app,
        &sim,
        &tenant,
        "evt_old",
        &account,
        t - 60,
        "owner_older",
    )
    .await;
    assert_eq!(body["outcome"], "duplicate");
}

#[tokio::test]
async fn an_event_older_than_the_last_sync_is_stale() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = synced(&app, &sim).await;
    let account = sim.keys().platforms[0].accounts[1].clone();
    let before = stored(&app, tenant.id, &account).await;

    // Created two minutes before the sync read the account, delivered after it.
    let (status, body) = update(
        &app,
        &sim,
        &tenant,
        "evt_late",
        &account,
        now() - 120,
        "owner_from_the_past",
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    let after = stored(&app, tenant.id, &account).await;
    assert_eq!(after.accountid, before.accountid);
    assert_eq!(after.updated_at, before.updated_at);

    // One created after the sync applies.
    let (_, body) = update(
        &app,
        &sim,
        &tenant,
        "evt_fresh",
        &account,
        now(),
        "owner_fresh",
    )
    .await;
    assert_eq!(body["outcome"], "applied");
    assert_eq!(
        stored(&app, tenant.id, &account).await.accountid.as_deref(),
        Some("owner_fresh")
    );
}

#[tokio::test]
async fn an_older_deauthorization_does_not_remove_a_newer_record() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = synced(&app, &sim).await;
    let account = sim.keys().platforms[0].accounts[2].clone();
    let t = now();
    update(&app, &sim, &tenant, "evt_upd", &account, t, "owner_newer").await;

    let (status, body) = deliver(
        &app,
        &tenant,
        "evt_deauth_old",
        "account.application.deauthorized",
        &account,
        t - 30,
        json!({"id": "ca_1", "object": "application"}),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("stale")),
        "{body}"
    );
    assert!(stored(&app, tenant.id, &account).await.removed_at.is_none());

    // A newer deauthorization removes it, and an older update does not bring it back.
    let (_, body) = deliver(
        &app,
        &tenant,
        "evt_deauth_new",
        "account.application.deauthorized",
        &account,
        t + 1,
        json!({"id": "ca_1", "object": "application"}),
    )
    .await;
    assert_eq!(body["outcome"], "applied");
    let (_, body) = update(
        &app,
        &sim,
        &tenant,
        "evt_upd_old",
        &account,
        t - 5,
        "owner_older",
    )
    .await;
    assert_eq!(body["outcome"], "stale");
    assert!(stored(&app, tenant.id, &account).await.removed_at.is_some());
}

#[tokio::test]
async fn an_older_balance_available_is_stale_and_kept_in_history_only() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = synced(&app, &sim).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let balance = sim.balance_of(&account).expect("balance");
    let t = now();

    let (_, body) = deliver(
        &app,
        &tenant,
        "evt_bal_new",
        "balance.available",
        &account,
        t,
        balance.clone(),
    )
    .await;
    assert_eq!(body["outcome"], "applied");
    let mut older = balance.clone();
    older["available"][0]["amount"] = json!(1);
    let (status, body) = deliver(
        &app,
        &tenant,
        "evt_bal_old",
        "balance.available",
        &account,
        t - 60,
        older,
    )
    .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("stale")),
        "{body}"
    );

    let latest = store::snapshots::latest(&app.pool, tenant.id, &account)
        .await
        .expect("query")
        .expect("a snapshot");
    assert_eq!(latest.balance, Some(balance));
    let history = store::snapshots::history(&app.pool, tenant.id, &account, None, None, 10)
        .await
        .expect("history");
    assert_eq!(history.len(), 2, "the stale one is kept in history");
}

#[tokio::test]
async fn a_sync_page_read_before_a_webhook_does_not_roll_it_back() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 5, 0).await;
    let tenant = add_org_tenant(&app, &sim, "acme", Some(SECRET)).await;
    sync_ok(&app, &tenant).await;
    let account = sim.keys().platforms[0].accounts[3].clone();
    // Stripe answers slowly: the webhook lands while the sync's page is in flight.
    sim.set_knobs(|knobs| knobs.latency_ms = 1500);
    let options = SyncOptions::from_settings(&app.settings);
    let sync = {
        let app = &app;
        let tenant = &tenant;
        let options = &options;
        async move { sync_with(app, tenant, options, &tally::sync::Quiet, 1).await }
    };
    sim.reset_stats();
    let webhook = async {
        // Once Stripe has the page request (answered 1.5 s later), the account changes.
        while sim.stats().total_requests == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let changed = "owner_from_webhook";
        update(&app, &sim, &tenant, "evt_race", &account, now(), changed).await
    };
    let (synced, (status, body)) = tokio::join!(sync, webhook);
    let synced = synced.expect("sync succeeds");
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    assert_eq!(synced.run.updated, 0, "the older page changed nothing");

    assert_eq!(
        stored(&app, tenant.id, &account).await.accountid.as_deref(),
        Some("owner_from_webhook"),
        "the page read before the event must not replace it"
    );
    // The next sync reads Stripe after the event, and wins.
    sim.set_knobs(|knobs| knobs.latency_ms = 0);
    sync_ok(&app, &tenant).await;
    assert_ne!(
        stored(&app, tenant.id, &account).await.accountid.as_deref(),
        Some("owner_from_webhook")
    );
}
