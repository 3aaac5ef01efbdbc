//! Following what changes: Connect events mark accounts changed, changed accounts are
//! fetched once within the change delay, and a tenant in `events` mode lets its live
//! event stream vouch for the accounts no event named (issue "Follow what changes").

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally::audit::Actor;
use tally::commands::tenant::{self, TenantError, TenantUpdate};
use tally::domain::Role;
use tally::freshness::FreshnessMode;
use tally::sim::SimHandle;
use tally::store::tenants::Tenant;

use crate::helpers::{spawn_app_on, spawn_app_with, TestApp};
use crate::sync::{add_platform_tenant, spawn_sim, sync_ok};
use crate::webhooks::{event, now, post_event, post_raw, SECRET};

/// Every type a platform receives for its connected accounts' money.
const MONEY_EVENTS: [&str; 6] = [
    "charge.succeeded",
    "charge.refunded",
    "charge.dispute.created",
    "payout.created",
    "payout.paid",
    "transfer.created",
];

async fn fetches(app: &TestApp, tenant_id: i64, stripeid: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM balance_snapshots
          WHERE tenant_id = $1 AND stripeid = $2 AND source = 'fetch'",
    )
    .bind(tenant_id)
    .bind(stripeid)
    .fetch_one(&app.pool)
    .await
    .expect("count")
}

async fn waiting_changes(app: &TestApp, tenant_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM changed_accounts WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Polls `check` until it holds or `within` passes; true when it held.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// A platform tenant with the test secret, synced, every account fetched once.
async fn fetched_tenant(app: &TestApp, sim: &SimHandle, token: &mut String) -> Tenant {
    let tenant = add_platform_tenant(app, sim, "acme", 0, Some(SECRET)).await;
    sync_ok(app, &tenant).await;
    *token = app.token(Role::Admin, Some("acme")).await;
    let (status, body) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tenant
}

async fn balance_of(app: &TestApp, token: &str, stripeid: &str, query: &str) -> (u16, Value) {
    app.get_json(
        &format!("/api/administrator/connect/stripe-account/balance?stripeid={stripeid}&{query}"),
        token,
    )
    .await
}

fn money_event(id: &str, kind: &str, account: &str, created: i64) -> Value {
    let mut event = event(id, kind, account, json!({"id": format!("obj_{id}")}));
    event["created"] = json!(created);
    event
}

async fn set_freshness(app: &TestApp, slug: &str, mode: FreshnessMode) {
    tenant::update(
        &app.pool,
        &app.master,
        slug,
        TenantUpdate {
            freshness: Some(mode),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await
    .expect("freshness mode");
}

#[tokio::test]
async fn every_money_event_has_its_account_fetched_once_and_no_other() {
    let app = spawn_app_with(|s| s.refresh.change_delay_ms = 200).await;
    let sim = spawn_sim(1, 8, 0).await;
    let mut token = String::new();
    let tenant = fetched_tenant(&app, &sim, &mut token).await;
    let accounts = sim.keys().platforms[0].accounts.clone();

    // Money moves on six accounts, a seventh is updated, the eighth stays idle.
    let mut named = Vec::new();
    for (i, kind) in MONEY_EVENTS.iter().enumerate() {
        sim.move_money(&accounts[i]);
        let (status, body) = post_event(
            &app,
            "acme",
            SECRET,
            &money_event(&format!("evt_money{i}"), kind, &accounts[i], now()),
            now(),
        )
        .await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("applied")));
        named.push(accounts[i].clone());
    }
    let updated = &accounts[6];
    let (status, _) = post_event(
        &app,
        "acme",
        SECRET,
        &event(
            "evt_updated",
            "account.updated",
            updated,
            sim.account_object(updated).expect("account"),
        ),
        now(),
    )
    .await;
    assert_eq!(status, 200);
    named.push(updated.clone());

    let all_fetched = eventually(Duration::from_secs(20), || async {
        waiting_changes(&app, tenant.id).await == 0
    })
    .await;
    assert!(all_fetched, "every changed account was fetched");
    for account in &named {
        assert_eq!(
            fetches(&app, tenant.id, account).await,
            2,
            "{account}: the first fetch and one for its change"
        );
        // The stored balance is the one Stripe answers now.
        let (status, body) = balance_of(&app, &token, account, "max_age=3600").await;
        assert_eq!(status, 200, "{body}");
        let expected = sim.balance_of(account).expect("balance");
        assert_eq!(body["available"], expected["available"], "{account}");
        assert_eq!(body["pending"], expected["pending"], "{account}");
    }
    assert_eq!(
        fetches(&app, tenant.id, &accounts[7]).await,
        1,
        "an account no event named is not fetched again"
    );
}

#[tokio::test]
async fn duplicate_late_and_reordered_events_in_one_window_make_one_fetch() {
    // A window long enough for four posts on a loaded machine.
    let app = spawn_app_with(|s| s.refresh.change_delay_ms = 3000).await;
    let sim = spawn_sim(1, 3, 0).await;
    let mut token = String::new();
    let tenant = fetched_tenant(&app, &sim, &mut token).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    // The first fetch is now at least two whole seconds old.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t = now();

    sim.move_money(&account);
    let burst = [
        money_event("evt_b1", "charge.succeeded", &account, t),
        money_event("evt_b1", "charge.succeeded", &account, t), // delivered twice
        money_event("evt_b3", "charge.refunded", &account, t),
        money_event("evt_b2", "payout.created", &account, t - 1), // late, out of order
    ];
    let mut outcomes = Vec::new();
    for event in &burst {
        let (status, body) = post_event(&app, "acme", SECRET, event, now()).await;
        assert_eq!(status, 200, "{body}");
        outcomes.push(body["outcome"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(outcomes, ["applied", "duplicate", "applied", "applied"]);

    let fetched = eventually(Duration::from_secs(20), || async {
        waiting_changes(&app, tenant.id).await == 0
    })
    .await;
    assert!(fetched);
    // A few more rounds for a (wrong) second fetch to happen.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fetches(&app, tenant.id, &account).await,
        2,
        "one fetch per window"
    );

    // An event older than that fetch (created two seconds before it) changes nothing.
    let (status, body) = post_event(
        &app,
        "acme",
        SECRET,
        &money_event("evt_old", "transfer.created", &account, t - 2),
        now(),
    )
    .await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("stale")));
    assert_eq!(waiting_changes(&app, tenant.id).await, 0);
}

#[tokio::test]
async fn a_live_stream_vouches_for_unchanged_accounts_and_a_silent_one_does_not() {
    let app = spawn_app_with(|s| {
        s.refresh.change_delay_ms = 100;
        s.webhooks.max_silence_secs = 5;
    })
    .await;
    let sim = spawn_sim(1, 4, 0).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let (busy, idle) = (accounts[0].clone(), accounts[1].clone());
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, Some(SECRET)).await;
    sync_ok(&app, &tenant).await;
    set_freshness(&app, "acme", FreshnessMode::Events).await;
    let token = app.token(Role::Admin, Some("acme")).await;
    // The stream starts with its first event; accounts fetched after it can be vouched for.
    let (status, _) = post_event(
        &app,
        "acme",
        SECRET,
        &money_event("evt_first", "charge.succeeded", &busy, now()),
        now(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // Events about another account keep the stream live: the idle account, fetched
    // 3 s ago, answers max_age=2 without a fetch, confirmed by the stream.
    let (status, _) = post_event(
        &app,
        "acme",
        SECRET,
        &money_event("evt_second", "payout.paid", &busy, now()),
        now(),
    )
    .await;
    assert_eq!(status, 200);
    let before = fetches(&app, tenant.id, &idle).await;
    let (status, body) = balance_of(&app, &token, &idle, "max_age=2&wait=0").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["freshnessBy"], "events", "{body}");
    let confirmed = chrono::DateTime::parse_from_rfc3339(body["confirmedAt"].as_str().unwrap())
        .expect("confirmedAt");
    let fetched = chrono::DateTime::parse_from_rfc3339(body["fetchedAt"].as_str().unwrap())
        .expect("fetchedAt");
    assert!(confirmed > fetched, "{body}");
    assert_eq!(
        fetches(&app, tenant.id, &idle).await,
        before,
        "no Stripe read"
    );

    // The aggregate says how it knows. (Asked once the changed account was fetched:
    // until issue "One contract" item 1 lands, a refresh that succeeded within the last
    // minute still answers for its scope, so the aggregate would not wait for it.)
    let fetched_again = eventually(Duration::from_secs(20), || async {
        waiting_changes(&app, tenant.id).await == 0
    })
    .await;
    assert!(fetched_again);
    let (status, body) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=2&wait=10",
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["freshnessMode"], "events");
    assert_eq!(body["streamLive"], true);
    assert!(body["oldestConfirmedAt"].as_str() > body["oldestFetchedAt"].as_str());
    assert_eq!(fetches(&app, tenant.id, &idle).await, before);

    // The CSV says it per account.
    let csv = app
        .client
        .get(format!(
            "{}/api/administrator/connect/balances",
            app.address
        ))
        .bearer_auth(&token)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("text");
    let header = csv.lines().next().unwrap_or_default();
    assert!(header.ends_with(",confirmed_at,freshness_by"), "{header}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&idle) && l.ends_with(",events")),
        "{csv}"
    );

    // Silent for longer than max_silence: the idle account needs a fetch again.
    tokio::time::sleep(Duration::from_millis(5300)).await;
    let (status, body) = balance_of(&app, &token, &idle, "max_age=1&wait=0").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = balance_of(&app, &token, &idle, "max_age=2&wait=20").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["freshnessBy"], "fetch", "{body}");
    assert_eq!(fetches(&app, tenant.id, &idle).await, before + 1);
    let (_, body) = app
        .get_json("/api/administrator/connect/balances", &token)
        .await;
    assert_eq!(body["streamLive"], false, "{body}");
}

#[tokio::test]
async fn a_refused_event_stops_the_stream_vouching_for_earlier_fetches() {
    let app = spawn_app_with(|s| s.refresh.change_delay_ms = 100).await;
    let sim = spawn_sim(1, 3, 0).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let (busy, idle) = (accounts[0].clone(), accounts[1].clone());
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, Some(SECRET)).await;
    sync_ok(&app, &tenant).await;
    set_freshness(&app, "acme", FreshnessMode::Events).await;
    let token = app.token(Role::Admin, Some("acme")).await;
    post_event(
        &app,
        "acme",
        SECRET,
        &money_event("evt_first", "charge.succeeded", &busy, now()),
        now(),
    )
    .await;
    let (status, _) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            &token,
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Signed, but not an event tally can read: refused, and whatever it said is unknown.
    let garbage = r#"{"id": "evt_garbage", "type": "charge.succeeded"}"#;
    let (status, body) = post_raw(
        &app,
        "acme",
        garbage,
        &tally::sim::sign_webhook(SECRET, now(), garbage),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-event"))
    );
    let recorded = eventually(Duration::from_secs(10), || async {
        let since: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT vouched_since FROM event_streams WHERE tenant_id = $1")
                .bind(tenant.id)
                .fetch_optional(&app.pool)
                .await
                .expect("stream");
        since.is_some_and(|since| chrono::Utc::now() - since < chrono::Duration::seconds(1))
    })
    .await;
    assert!(recorded, "the refusal moved the stream's vouched_since");
    post_event(
        &app,
        "acme",
        SECRET,
        &money_event("evt_after", "payout.paid", &busy, now()),
        now(),
    )
    .await;
    // The stream is live again, but it cannot vouch for a fetch made before the refusal.
    let (status, body) = balance_of(&app, &token, &idle, "max_age=1&wait=0").await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn events_mode_needs_a_way_to_receive_events() {
    let app = spawn_app_with(|_| {}).await;
    let sim = spawn_sim(1, 1, 0).await;
    add_platform_tenant(&app, &sim, "nosecret", 0, None).await;
    let refused = tenant::update(
        &app.pool,
        &app.master,
        "nosecret",
        TenantUpdate {
            freshness: Some(FreshnessMode::Events),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await;
    assert!(
        matches!(refused, Err(TenantError::EventsNeedAnEndpoint(_))),
        "{refused:?}"
    );
    let mode: String = sqlx::query_scalar("SELECT freshness FROM tenants WHERE slug = 'nosecret'")
        .fetch_one(&app.pool)
        .await
        .expect("tenant");
    assert_eq!(mode, "poll", "nothing changed");
}

#[tokio::test]
async fn three_replicas_split_changed_accounts_without_fetching_one_twice() {
    let configure = |s: &mut tally::config::Settings| s.refresh.change_delay_ms = 300;
    let first = spawn_app_with(configure).await;
    let second = spawn_app_on(first.db.alias(), first.master_base64.clone(), configure).await;
    let third = spawn_app_on(first.db.alias(), first.master_base64.clone(), configure).await;
    let sim = spawn_sim(1, 45, 0).await;
    let mut token = String::new();
    let tenant = fetched_tenant(&first, &sim, &mut token).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let replicas = [&first, &second, &third];

    // Each account gets two events, at two different replicas.
    for (i, account) in accounts.iter().enumerate() {
        for round in 0..2 {
            let replica = replicas[(i + round) % 3];
            let kind = MONEY_EVENTS[(i + round) % MONEY_EVENTS.len()];
            let (status, _) = post_event(
                replica,
                "acme",
                SECRET,
                &money_event(&format!("evt_{i}_{round}"), kind, account, now()),
                now(),
            )
            .await;
            assert_eq!(status, 200);
        }
    }
    let done = eventually(Duration::from_secs(60), || async {
        waiting_changes(&first, tenant.id).await == 0
    })
    .await;
    assert!(done, "every changed account was fetched");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let per_account: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM balance_snapshots WHERE tenant_id = $1 AND source = 'fetch'
          GROUP BY stripeid ORDER BY stripeid",
    )
    .bind(tenant.id)
    .fetch_all(&first.pool)
    .await
    .expect("counts");
    assert_eq!(per_account.len(), accounts.len());
    // Events at different replicas can straddle a fetch (the second arrives while the
    // first's fetch is under way): then that account is rightly fetched again. Never
    // more than once per event, and never two fetches of one change at once.
    let extra: i64 = per_account.iter().map(|n| n - 2).sum();
    assert!(
        per_account.iter().all(|n| (2..=3).contains(n)),
        "{per_account:?}"
    );
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_snapshots a JOIN balance_snapshots b
            ON a.tenant_id = b.tenant_id AND a.stripeid = b.stripeid AND a.id < b.id
         WHERE a.tenant_id = $1 AND a.source = 'fetch' AND b.source = 'fetch'
           AND abs(extract(epoch FROM b.fetched_at - a.fetched_at)) < 0.05",
    )
    .bind(tenant.id)
    .fetch_one(&first.pool)
    .await
    .expect("overlaps");
    assert_eq!(
        overlapping, 0,
        "no account fetched twice at once ({extra} refetches)"
    );
}

/// Registers a Connect endpoint for the tenant at the simulator, as the platform would
/// in Stripe's Dashboard, and gives tally its secret.
async fn register_endpoint(app: &TestApp, sim: &SimHandle, slug: &str) {
    let platform_key = sim.keys().platforms[0].key.clone();
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/webhook_endpoints", sim.base_url()))
        .bearer_auth(&platform_key)
        .form(&[
            ("url", format!("{}/webhooks/stripe/{slug}", app.address)),
            ("enabled_events[]", "*".to_owned()),
            ("connect", "true".to_owned()),
        ])
        .send()
        .await
        .expect("create endpoint")
        .json()
        .await
        .expect("endpoint json");
    let secret = created["secret"]
        .as_str()
        .expect("secret on create")
        .to_owned();
    tenant::update(
        &app.pool,
        &app.master,
        slug,
        TenantUpdate {
            webhook_secret: Some(secrecy::SecretString::from(secret)),
            freshness: Some(FreshnessMode::Events),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await
    .expect("secret stored, events mode");
}

/// Re-reads every account of the tenant (an explicit refresh, max_age 0) and waits
/// until it has.
async fn sweep(app: &TestApp, token: &str) {
    let started: Value = app
        .client
        .post(format!(
            "{}/api/administrator/connect/balances/refreshes",
            app.address
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("refresh")
        .json()
        .await
        .expect("json");
    let id = started["id"].as_str().expect("refresh id").to_owned();
    let done = eventually(Duration::from_secs(60), || async {
        let (_, refresh) = app
            .get_json(
                &format!("/api/administrator/connect/balances/refreshes/{id}"),
                token,
            )
            .await;
        refresh["status"] == "succeeded"
    })
    .await;
    assert!(done, "the sweep finished");
}

/// The tenant's totals as `(currency, available, pending)`, and the simulator's.
async fn totals_pair(app: &TestApp, sim: &SimHandle, token: &str) -> (Vec<Value>, Vec<Value>) {
    let (status, body) = app
        .get_json("/api/administrator/connect/balances", token)
        .await;
    assert_eq!(status, 200, "{body}");
    let ours: Vec<Value> = body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|t| json!([t["currency"], t["available"], t["pending"]]))
        .collect();
    let platform = sim.keys().platforms[0].id.clone();
    let truth = sim.totals(&platform).expect("platform totals");
    let theirs: Vec<Value> = truth
        .currencies
        .iter()
        .map(|c| json!([c.currency, c.available, c.pending]))
        .collect();
    (ours, theirs)
}

#[tokio::test]
async fn with_activity_and_failed_deliveries_tally_follows_every_change_to_the_cent() {
    let app = spawn_app_with(|s| s.refresh.change_delay_ms = 200).await;
    // The simulated clock runs at real time and never pauses before the end: events are
    // stamped on tally's clock, as Stripe's are (a faster clock stamps them in tally's
    // future, so a late delivery would look newer than a later fetch).
    let sim = tally::sim::spawn(tally::sim::SimConfig {
        platforms: 1,
        accounts_per_platform: 30,
        org_accounts: 0,
        // About 15 balance changes per second across the 30 accounts.
        activity_per_hour: 1800.0,
        settlement_secs: 3,
        webhook_fail_rate: 0.3,
        webhook_retry_base_ms: 200,
        ..tally::sim::SimConfig::default()
    })
    .await
    .expect("simulator");
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &tenant).await;
    register_endpoint(&app, &sim, "acme").await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let (status, _) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            &token,
        )
        .await;
    assert_eq!(status, 200);

    sim.reset_stats();
    tokio::time::sleep(Duration::from_secs(6)).await;
    sim.set_clock_paused(true);
    // Every event the simulator delivered (30 % of first attempts fail and are retried,
    // some first deliveries are seconds late) is stored once, and every account it
    // names is fetched. Settled means no delivery is still on its way: a quiet spell is
    // not enough, since a retry's backoff or a late delivery can outlast it, and the
    // live stream vouches for accounts whose late event has not arrived yet.
    let settled = eventually(Duration::from_secs(60), || {
        let delivering = sim.pending_deliveries();
        let app = &app;
        let tenant_id = tenant.id;
        async move { delivering == 0 && waiting_changes(app, tenant_id).await == 0 }
    })
    .await;
    let stats = sim.stats();
    let received: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE tenant_id = $1")
            .bind(tenant.id)
            .fetch_one(&app.pool)
            .await
            .expect("events");
    assert!(settled, "deliveries settled and every change was followed");
    let delivered_events = stats.webhooks.delivered - stats.webhooks.duplicates;
    assert!(
        received >= delivered_events as i64,
        "{received} stored of {delivered_events} delivered: {:?}",
        stats.webhooks
    );
    assert!(
        stats.activities > 50,
        "activity happened: {}",
        stats.activities
    );
    assert!(stats.webhooks.failed > 0, "some first deliveries failed");
    // Reads follow changes: at most one per announced change, far from a poll.
    let reads = stats.by_path.get("GET /v1/balance").copied().unwrap_or(0);
    assert!(
        reads <= stats.webhooks.events,
        "{reads} balance reads for {} events",
        stats.webhooks.events
    );

    // Stripe announces some changes to nobody (its own fees): the sweep, the safety
    // net, reads every account once more; then the totals are Stripe's to the cent.
    sweep(&app, &token).await;
    let (ours, theirs) = totals_pair(&app, &sim, &token).await;
    assert_eq!(
        ours, theirs,
        "tally's totals are the simulator's ledger totals"
    );
}

#[tokio::test]
async fn a_silent_change_is_caught_by_the_sweep_and_not_vouched_for_by_a_silent_stream() {
    let app = spawn_app_with(|s| {
        s.refresh.enabled = true;
        s.refresh.change_delay_ms = 100;
        s.refresh.sweep_interval_secs = 6;
        s.webhooks.max_silence_secs = 2;
    })
    .await;
    let sim = tally::sim::spawn(tally::sim::SimConfig {
        platforms: 1,
        accounts_per_platform: 5,
        org_accounts: 0,
        activity_per_hour: 600.0,
        clock_speed: 60.0,
        silent_change_rate: 1.0,
        // A late or repeated delivery would make the stream speak again.
        webhook_late_rate: 0.0,
        webhook_duplicate_rate: 0.0,
        ..tally::sim::SimConfig::default()
    })
    .await
    .expect("simulator");
    sim.set_clock_paused(true);
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &tenant).await;
    register_endpoint(&app, &sim, "acme").await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    // The stream speaks once (money moved, announced), then every change is silent.
    sim.move_money(&account);
    let (status, _) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            &token,
        )
        .await;
    assert_eq!(status, 200);
    sim.set_clock_paused(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sim.set_clock_paused(true);
    assert!(sim.stats().webhooks.silent > 0, "changes happened silently");

    // The stream has been silent past max_silence: nothing is vouched for by events.
    let (status, body) = balance_of(&app, &token, &account, "max_age=1&wait=0").await;
    assert_eq!(status, 202, "{body}");
    let (_, body) = app
        .get_json("/api/administrator/connect/balances", &token)
        .await;
    assert_eq!(body["streamLive"], false, "{body}");

    // The sweep (every 6 s here) reads every account again: Stripe's totals.
    let swept = eventually(Duration::from_secs(30), || async {
        let (ours, theirs) = totals_pair(&app, &sim, &token).await;
        ours == theirs
    })
    .await;
    assert!(swept, "the sweep caught the silent changes");
}

#[tokio::test]
async fn the_stale_gauge_counts_only_what_the_freshness_rule_does_not_confirm() {
    // Its own slug: the metrics recorder is shared by every test in this process.
    let slug = "gauged";
    let app = spawn_app_with(|s| s.refresh.interval_secs = 2).await;
    let sim = spawn_sim(1, 3, 0).await;
    let tenant = add_platform_tenant(&app, &sim, slug, 0, Some(SECRET)).await;
    sync_ok(&app, &tenant).await;
    set_freshness(&app, slug, FreshnessMode::Events).await;
    let owner = app.token(Role::Owner, None).await;
    // Events about an account the tenant does not list keep its stream live and mark
    // nothing changed.
    let keep_alive = |n: usize| {
        money_event(
            &format!("evt_alive{n}"),
            "payout.paid",
            "acct_1NotListedHere",
            now(),
        )
    };
    post_event(&app, slug, SECRET, &keep_alive(0), now()).await;
    let (status, _) = app
        .get_json(
            &format!("/api/administrator/connect/balances?tenant={slug}&max_age=0&wait=25"),
            &owner,
        )
        .await;
    assert_eq!(status, 200);
    let gauge = |page: &str| {
        page.lines()
            .find(|l| l.starts_with("tally_accounts_stale{") && l.contains(slug))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Every fetch is older than the 2 s interval, yet the live stream vouches for all.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = None;
    for n in 1..40 {
        post_event(&app, slug, SECRET, &keep_alive(n), now()).await;
        let page = app
            .get("/metrics", &owner)
            .await
            .text()
            .await
            .expect("page");
        seen = gauge(&page);
        if seen == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        seen,
        Some(0.0),
        "no account is stale while the stream vouches"
    );

    // In poll mode the same accounts are all stale.
    set_freshness(&app, slug, FreshnessMode::Poll).await;
    let stale = eventually(Duration::from_secs(20), || async {
        let page = app
            .get("/metrics", &owner)
            .await
            .text()
            .await
            .expect("page");
        gauge(&page) == Some(3.0)
    })
    .await;
    assert!(stale, "every account is stale by the poll rule");
}
