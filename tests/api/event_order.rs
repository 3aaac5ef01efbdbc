//! Stripe does not deliver events in order, and a sync page can race a webhook: an
//! older observation never replaces a newer one, and the receipt says `stale`.

use std::time::Duration;

use serde_json::{json, Value};
use tally::sim::{sign_webhook, SimHandle};
use tally::store;
use tally::store::accounts::AccountRow;
use tally::store::tenants::Tenant;
use tally::sync::SyncOptions;

use crate::helpers::{spawn_app, TestApp};
use crate::sync::{add_org_tenant, spawn_sim, stored, sync_ok, sync_with};

const SECRET: &str = "whsec_test_order_0123456789";
const DEAUTHORIZED: &str = "account.application.deauthorized";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An app with an organization tenant synced from a simulator of `accounts`
/// connected accounts, and the account the test sends events about.
struct Scene {
    app: TestApp,
    sim: SimHandle,
    tenant: Tenant,
    account: String,
}

impl Scene {
    async fn new(accounts: usize, index: usize) -> Scene {
        let app = spawn_app().await;
        let sim = spawn_sim(1, accounts, 0).await;
        let tenant = add_org_tenant(&app, &sim, "acme", Some(SECRET)).await;
        sync_ok(&app, &tenant).await;
        let account = sim.keys().platforms[0].accounts[index].clone();
        Scene {
            app,
            sim,
            tenant,
            account,
        }
    }

    /// Posts a `kind` event about the account, created at `created`, signed now;
    /// returns the status and the receipt's outcome.
    async fn deliver(&self, id: &str, kind: &str, created: i64, object: Value) -> (u16, String) {
        let event = json!({
            "id": id, "object": "event", "type": kind, "account": self.account,
            "context": self.account, "created": created, "livemode": false,
            "pending_webhooks": 1, "data": {"object": object}
        });
        let payload = event.to_string();
        let response = self
            .app
            .client
            .post(format!(
                "{}/webhooks/stripe/{}",
                self.app.address, self.tenant.slug
            ))
            .header("content-type", "application/json")
            .header("stripe-signature", sign_webhook(SECRET, now(), &payload))
            .body(payload)
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        let outcome = body["outcome"].as_str().unwrap_or_default().to_owned();
        (status, outcome)
    }

    /// An `account.updated` naming `owner` as the account's owner.
    async fn update(&self, id: &str, created: i64, owner: &str) -> (u16, String) {
        let mut object = self.sim.account_object(&self.account).expect("account");
        object["metadata"]["accountid"] = json!(owner);
        self.deliver(id, "account.updated", created, object).await
    }

    async fn deauthorize(&self, id: &str, created: i64) -> (u16, String) {
        let application = json!({"id": "ca_1", "object": "application"});
        self.deliver(id, DEAUTHORIZED, created, application).await
    }

    async fn stored(&self) -> AccountRow {
        stored(&self.app, self.tenant.id, &self.account).await
    }

    async fn owner(&self) -> Option<String> {
        self.stored().await.accountid
    }
}

fn answered(outcome: &str) -> (u16, String) {
    (200, outcome.to_owned())
}

#[tokio::test]
async fn an_older_account_updated_delivered_late_is_stale() {
    let scene = Scene::new(3, 0).await;
    let t = now();

    assert_eq!(
        scene.update("evt_new", t, "owner_newer").await,
        answered("applied")
    );
    assert_eq!(
        scene.update("evt_old", t - 60, "owner_older").await,
        answered("stale")
    );
    assert_eq!(scene.owner().await.as_deref(), Some("owner_newer"));
    // A stale event is still processed once: its redelivery is a duplicate.
    assert_eq!(
        scene.update("evt_old", t - 60, "owner_older").await,
        answered("duplicate")
    );
}

#[tokio::test]
async fn an_event_older_than_the_last_sync_is_stale() {
    let scene = Scene::new(3, 1).await;
    let before = scene.stored().await;

    // Created two minutes before the sync read the account, delivered after it.
    assert_eq!(
        scene.update("evt_late", now() - 120, "owner_past").await,
        answered("stale")
    );
    let after = scene.stored().await;
    assert_eq!(after.accountid, before.accountid);
    assert_eq!(after.updated_at, before.updated_at);

    // One created after the sync applies.
    assert_eq!(
        scene.update("evt_fresh", now(), "owner_fresh").await,
        answered("applied")
    );
    assert_eq!(scene.owner().await.as_deref(), Some("owner_fresh"));
}

#[tokio::test]
async fn an_older_deauthorization_does_not_remove_a_newer_record() {
    let scene = Scene::new(3, 2).await;
    let t = now();
    scene.update("evt_upd", t, "owner_newer").await;

    assert_eq!(
        scene.deauthorize("evt_deauth_old", t - 30).await,
        answered("stale")
    );
    assert!(scene.stored().await.removed_at.is_none());

    // A newer deauthorization removes it, and an older update does not bring it back.
    assert_eq!(
        scene.deauthorize("evt_deauth_new", t + 1).await,
        answered("applied")
    );
    assert_eq!(
        scene.update("evt_upd_old", t - 5, "owner_older").await,
        answered("stale")
    );
    assert!(scene.stored().await.removed_at.is_some());
}

#[tokio::test]
async fn an_older_balance_available_is_stale_and_kept_in_history_only() {
    let scene = Scene::new(3, 0).await;
    let balance = scene.sim.balance_of(&scene.account).expect("balance");
    let mut older = balance.clone();
    older["available"][0]["amount"] = json!(1);
    let t = now();

    let kind = "balance.available";
    assert_eq!(
        scene.deliver("evt_bal_new", kind, t, balance.clone()).await,
        answered("applied")
    );
    assert_eq!(
        scene.deliver("evt_bal_old", kind, t - 60, older).await,
        answered("stale")
    );

    let (pool, tenant_id, account) = (&scene.app.pool, scene.tenant.id, &scene.account);
    let latest = store::snapshots::latest(pool, tenant_id, &crate::helpers::acct(account))
        .await
        .expect("query")
        .expect("a snapshot");
    assert_eq!(latest.balance, Some(balance));
    let history = store::snapshots::history(
        pool,
        tenant_id,
        &crate::helpers::acct(account),
        None,
        None,
        10,
    )
    .await
    .expect("history");
    assert_eq!(history.len(), 2, "the stale one is kept in history");
}

#[tokio::test]
async fn a_balance_available_older_than_the_full_history_is_stale_and_not_stored() {
    let scene = Scene::new(3, 0).await;
    let balance = scene.sim.balance_of(&scene.account).expect("balance");
    let (pool, tenant_id, account) = (&scene.app.pool, scene.tenant.id, &scene.account);
    let stored = || async {
        store::snapshots::history(
            pool,
            tenant_id,
            &crate::helpers::acct(account),
            None,
            None,
            10,
        )
        .await
        .expect("history")
        .len()
    };
    let before = stored().await;
    // Older than retention.snapshots_full_days (a day): history there is pruned to a
    // balance a day, which a balance placed among them would contradict.
    assert_eq!(
        scene
            .deliver(
                "evt_bal_ancient",
                "balance.available",
                now() - 2 * 86_400,
                balance
            )
            .await,
        answered("stale")
    );
    assert_eq!(stored().await, before, "not stored");
}

#[tokio::test]
async fn a_sync_page_read_before_a_webhook_does_not_roll_it_back() {
    let scene = Scene::new(5, 3).await;
    // Stripe answers slowly: the webhook lands while the sync's page is in flight.
    scene.sim.set_knobs(|knobs| knobs.latency_ms = 1500);
    scene.sim.reset_stats();
    let options = SyncOptions::from_settings(&scene.app.settings);
    let sync = sync_with(&scene.app, &scene.tenant, &options, &tally::sync::Quiet, 1);
    let webhook = async {
        // Once Stripe has the page request (answered 1.5 s later), the account changes.
        while scene.sim.stats().total_requests == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scene.update("evt_race", now(), "owner_from_webhook").await
    };
    let (synced, receipt) = tokio::join!(sync, webhook);
    let synced = synced.expect("sync succeeds");
    assert_eq!(receipt, answered("applied"));
    assert_eq!(synced.run.updated, 0, "the older page changed nothing");
    assert_eq!(
        scene.owner().await.as_deref(),
        Some("owner_from_webhook"),
        "the page read before the event must not replace it"
    );

    // The next sync reads Stripe after the event, and wins.
    scene.sim.set_knobs(|knobs| knobs.latency_ms = 0);
    sync_ok(&scene.app, &scene.tenant).await;
    assert_ne!(scene.owner().await.as_deref(), Some("owner_from_webhook"));
}

/// No time stored about the account lies in the future: when what last wrote the
/// record was observed, and its snapshots' fetch times.
async fn assert_nothing_in_the_future(scene: &Scene) {
    let times = stored_times(scene).await;
    let now = chrono::Utc::now();
    assert!(times.iter().all(|at| *at <= now), "{times:?} after {now}");
}

async fn stored_times(scene: &Scene) -> Vec<chrono::DateTime<chrono::Utc>> {
    let (pool, tenant_id, account) = (&scene.app.pool, scene.tenant.id, &scene.account);
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT observed_at FROM stripe_accounts WHERE tenant_id = $1 AND stripeid = $2
         UNION ALL SELECT fetched_at FROM balance_snapshots WHERE tenant_id = $1 AND stripeid = $2
         UNION ALL SELECT fetched_at FROM latest_balances WHERE tenant_id = $1 AND stripeid = $2",
    )
    .bind(tenant_id)
    .bind(account)
    .fetch_all(pool)
    .await
    .expect("times");
    times.sort();
    times
}

#[tokio::test]
async fn an_event_from_the_future_is_placed_at_its_arrival_and_freezes_nothing() {
    let scene = Scene::new(3, 0).await;
    let year_ahead = now() + 365 * 24 * 3600;

    // An account.updated a year ahead applies, as of its arrival.
    assert_eq!(
        scene.update("evt_future", year_ahead, "owner_future").await,
        answered("applied")
    );
    assert_nothing_in_the_future(&scene).await;
    // Later events and syncs still apply: nothing waits for that year to pass.
    assert_eq!(
        scene.update("evt_now", now(), "owner_now").await,
        answered("applied")
    );
    assert_eq!(scene.owner().await.as_deref(), Some("owner_now"));
    let synced = sync_ok(&scene.app, &scene.tenant).await;
    assert_eq!(synced.run.updated, 1, "the sync reads Stripe afresh");
    assert_ne!(scene.owner().await.as_deref(), Some("owner_now"));

    // A balance.available a year ahead is stored as fetched at its arrival: it is no
    // fresher than that, and what comes later replaces it.
    let mut forged = scene.sim.balance_of(&scene.account).expect("balance");
    forged["available"][0]["amount"] = json!(777_777);
    let kind = "balance.available";
    assert_eq!(
        scene
            .deliver("evt_bal_future", kind, year_ahead, forged.clone())
            .await,
        answered("applied")
    );
    assert_nothing_in_the_future(&scene).await;
    // Stripe's `created` has whole seconds: one created in a later second than the
    // arrival above is newer. (The refresher may have read the account since, after
    // the account.updated above marked it changed: then that read replaced it.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut newer = forged.clone();
    newer["available"][0]["amount"] = json!(4242);
    let (status, _) = scene.deliver("evt_bal_now", kind, now(), newer).await;
    assert_eq!(status, 200);
    let latest = store::snapshots::latest(
        &scene.app.pool,
        scene.tenant.id,
        &crate::helpers::acct(&scene.account),
    )
    .await
    .expect("query")
    .expect("a snapshot");
    assert_ne!(
        latest.balance,
        Some(forged),
        "the balance from the future still stands"
    );
    assert!(latest.fetched_at <= chrono::Utc::now());
}
