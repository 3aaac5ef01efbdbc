//! The refresher (DESIGN §5): polls that answer 202 then 200, replicas sharing the
//! work and one Stripe budget through Postgres, a killed replica's work taken over,
//! webhook-fresh accounts left alone, and a clean stop.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use tally::commands::tenant::TenantSpec;
use tally::domain::Role;
use tally::sim::{SimConfig, SimHandle};
use tally::store;

use crate::helpers::{
    assert_within_the_budget, free_port, least_span, spawn_app_on, spawn_app_with, spawn_sim,
    walk_list, Route, TestApp, TestDb, SLOT_SPACING_SECS,
};

const BALANCES: &str = "/api/administrator/connect/balances";
const REFRESHES: &str = "/api/administrator/connect/balances/refreshes";

/// A replica that answers the API but fetches nothing.
fn api_only(settings: &mut tally::config::Settings) {
    settings.refresh.worker = false;
}

/// A platform tenant on the simulator's first platform, paced at `rate` per second,
/// with every account of that platform stored.
pub(crate) async fn tenant_on(app: &TestApp, sim: &SimHandle, slug: &str, rate: u32) -> i64 {
    let spec = TenantSpec {
        api_base: Some(sim.base_url()),
        rate_limit: Some(rate),
        ..TenantSpec::new(
            slug,
            SecretString::from(sim.keys().platforms[0].key.clone()),
        )
    };
    tally::commands::tenant::add(&app.pool, &app.master, &app.settings, spec)
        .await
        .expect("tenant added");
    let id = store::tenants::find_by_slug(&app.pool, slug)
        .await
        .expect("query")
        .expect("tenant")
        .id;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(id, sim, &ids, None).await;
    id
}

/// Per-currency available/pending of `ids` as the simulator holds them.
fn expected_available(sim: &SimHandle, ids: &[String]) -> std::collections::BTreeMap<String, i64> {
    let mut totals = std::collections::BTreeMap::new();
    for id in ids {
        let balance = sim.balance_of(id).expect("balance");
        for entry in balance["available"].as_array().expect("available") {
            *totals
                .entry(entry["currency"].as_str().expect("currency").to_owned())
                .or_insert(0) += entry["amount"].as_i64().expect("amount");
        }
    }
    totals
}

fn reported_available(body: &Value) -> std::collections::BTreeMap<String, i64> {
    body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|row| {
            (
                row["currency"].as_str().expect("currency").to_owned(),
                row["available"].as_i64().expect("available"),
            )
        })
        .filter(|(_, amount)| *amount != 0)
        .collect()
}

/// Fetch snapshots per account, for "each account fetched once".
async fn fetches_per_account(app: &TestApp, tenant_id: i64) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(s.id) FROM stripe_accounts a
         LEFT JOIN balance_snapshots s ON s.tenant_id = a.tenant_id AND s.stripeid = a.stripeid
              AND s.source = 'fetch'
         WHERE a.tenant_id = $1 GROUP BY a.stripeid ORDER BY a.stripeid",
    )
    .bind(tenant_id)
    .fetch_all(&app.pool)
    .await
    .expect("counts")
}

async fn untried(app: &TestApp, tenant_id: i64) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM stripe_accounts a WHERE a.tenant_id = $1 AND a.removed_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM latest_balances l
                           WHERE l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid)",
    )
    .bind(tenant_id)
    .fetch_one(&app.pool)
    .await
    .expect("count")
}

async fn wait_until_all_tried(app: &TestApp, tenant_id: i64, within: Duration) {
    let deadline = Instant::now() + within;
    while untried(app, tenant_id).await > 0 {
        assert!(
            Instant::now() < deadline,
            "accounts still untried after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Several threads: the simulator times arrivals on the runtime the replicas use too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_gets_202_with_a_refresh_to_follow_then_200_with_exact_totals() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 40,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    let tenant_id = tenant_on(&app, &sim, "acme", 10).await;
    let token = app.token(Role::Reader, Some("acme")).await;

    // 40 accounts at 10/s cannot be fresh within wait=1.
    let started = Instant::now();
    let response = app
        .get(&format!("{BALANCES}?max_age=600&wait=1"), &token)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within wait"
    );
    assert_eq!(response.status(), 202);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let location = response.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    let refresh: Value = response.json().await.expect("json");
    assert_eq!(refresh["object"], "balanceRefresh");
    assert_eq!(refresh["status"], "running");
    assert_eq!(refresh["total"], 40);
    assert_eq!(
        location,
        format!("{REFRESHES}/{}", refresh["id"].as_str().expect("id"))
    );

    // A second poll joins the same refresh instead of starting another.
    let again = app
        .get(&format!("{BALANCES}?max_age=600&wait=0"), &token)
        .await;
    assert_eq!(again.status(), 202);
    let joined: Value = again.json().await.expect("json");
    assert_eq!(joined["id"], refresh["id"]);

    // Following Location shows progress, then the end.
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = app.get_json(&location, &token).await;
        assert_eq!(status, 200);
        last = body;
        if last["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["done"], 40);

    let (status, body) = app
        .get_json(&format!("{BALANCES}?max_age=600"), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true);
    assert_eq!(
        reported_available(&body),
        expected_available(&sim, &sim.keys().platforms[0].accounts)
    );
    assert_eq!(fetches_per_account(&app, tenant_id).await, vec![1; 40]);
    let stats = sim.stats();
    // The budget's spacing, seen at the simulator with `ARRIVAL_SPREAD_SECS` of delay.
    assert_within_the_budget(&stats, 10);

    // The refresher's log lists it, newest first.
    let (_, list) = app.get_json(REFRESHES, &token).await;
    assert_eq!(list["data"][0]["id"], refresh["id"]);
}

#[tokio::test]
async fn without_max_age_the_aggregate_answers_at_once_from_what_is_stored() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 5,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, "acme", 20).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let (status, body) = app.get_json(BALANCES, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], false);
    assert_eq!(body["accounts"]["stale"], 5, "{body}");
    assert_eq!(body["failures"][0]["code"], "not-fetched");
    assert_eq!(sim.stats().total_requests, 0, "nothing fetched to answer");
}

#[tokio::test]
async fn refresh_parameters_and_ids_are_checked() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 3,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, "acme", 20).await;
    tenant_on(&app, &sim, "globex", 20).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let globex = app.token(Role::Reader, Some("globex")).await;
    for (query, code) in [
        ("max_age=10000000000000", "invalid-max-age"),
        ("max_age=31536001", "invalid-max-age"),
        ("max_age=-1", "invalid-max-age"),
        ("max_age=60&wait=26", "invalid-wait"),
        ("max_age=60&wait=soon", "invalid-wait"),
    ] {
        let (status, body) = app.get_json(&format!("{BALANCES}?{query}"), &reader).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
        let (status, body) = app
            .get_json(
                &format!(
                    "/api/administrator/connect/stripe-account/balance?stripeid=acct_1X&{query}"
                ),
                &reader,
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    // A reader cannot start one; an admin can.
    let post = |token: &str| {
        app.client
            .post(format!("{}{REFRESHES}", app.address))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(post(&reader).await.expect("sent").status(), 403);
    let started = post(&admin).await.expect("sent");
    assert_eq!(started.status(), 202);
    assert!(started.headers().contains_key("location"));
    let refresh: Value = started.json().await.expect("json");
    assert_eq!(refresh["trigger"], "person");
    // Another tenant's refresh is not found, and neither is nonsense.
    let id = refresh["id"].as_str().expect("id");
    let (status, body) = app.get_json(&format!("{REFRESHES}/{id}"), &globex).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-refreshid"))
    );
    let (status, body) = app.get_json(&format!("{REFRESHES}/nope"), &reader).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-refreshid"))
    );
    let (status, body) = app
        .get_json(&format!("{REFRESHES}?starting_after=nope"), &reader)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-starting-after"))
    );

    // One refresh per account asked for by a person; the list walks them all by
    // `Link`, newest first, each once; another tenant's id is no cursor here.
    let mut started = vec![id.to_owned()];
    for stripeid in &sim.keys().platforms[0].accounts {
        let response = app
            .client
            .post(format!("{}{REFRESHES}?stripeid={stripeid}", app.address))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("sent");
        assert!(response.status().is_success(), "{}", response.status());
        let body: Value = response.json().await.expect("json");
        started.push(body["id"].as_str().expect("id").to_owned());
    }
    started.dedup();
    let walked = walk_list(&app, &format!("{REFRESHES}?limit=1"), &reader, 1).await;
    let walked_ids: Vec<String> = walked
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_refreshes b JOIN tenants t ON t.id = b.tenant_id \
         WHERE t.slug = 'acme'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(walked_ids.len() as i64, stored, "each refresh once");
    for id in &started {
        assert!(walked_ids.contains(id), "{id} listed");
    }
    let started_at: Vec<&str> = walked
        .iter()
        .map(|r| r["startedAt"].as_str().expect("startedAt"))
        .collect();
    assert!(
        started_at.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {started_at:?}"
    );
    let post_globex = app
        .client
        .post(format!("{}{REFRESHES}?tenant=globex", app.address))
        .bearer_auth(app.token(Role::Owner, None).await)
        .send()
        .await
        .expect("sent");
    let globex_refresh: Value = post_globex.json().await.expect("json");
    let (status, body) = app
        .get_json(
            &format!(
                "{REFRESHES}?starting_after={}",
                globex_refresh["id"].as_str().expect("id")
            ),
            &reader,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-starting-after"))
    );
}

// Several threads: the simulator times arrivals on the runtime the replicas use too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_each_account_once_within_the_tenants_rate() {
    three_replicas_fetch_each_account_once(&|_| {}).await;
}

/// Three replicas sharing one tenant's work and budget, each connected as `route`
/// says (directly, or through PgBouncer: tests/api/pgbouncer.rs).
pub(crate) async fn three_replicas_fetch_each_account_once(route: &Route<'_>) {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 90,
        latency_ms: 30,
        jitter_ms: 20,
        // Stripe's sandbox limit; the tenant asks for less.
        rate_limit: 25,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    let configure = |settings: &mut tally::config::Settings| {
        settings.refresh.enabled = true;
        settings.refresh.interval_secs = 60;
        route(settings);
    };
    let master = tally::crypto::MasterKey::generate_base64();
    // The tenant exists before the replicas start, so they all race for it.
    let setup = spawn_app_on(db.alias(), master.clone(), |settings| {
        api_only(settings);
        route(settings);
    })
    .await;
    let tenant_id = tenant_on(&setup, &sim, "acme", 20).await;
    sim.reset_stats();
    let started = Instant::now();
    let first = spawn_app_on(db, master.clone(), configure).await;
    let second = spawn_app_on(first.db.alias(), master.clone(), configure).await;
    let third = spawn_app_on(first.db.alias(), master, configure).await;
    wait_until_all_tried(&first, tenant_id, Duration::from_secs(30)).await;
    let took = started.elapsed();

    assert_eq!(
        fetches_per_account(&first, tenant_id).await,
        vec![1; 90],
        "each account fetched exactly once"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.by_path.get("GET /v1/balance").copied().unwrap_or(0),
        90
    );
    // The shared budget spaces the tenant's slots 1.006 s / 20 apart whichever replica
    // takes them: 90 slots span at least 89 × 50.6 ms from the start, however loaded
    // the machine (a late request only makes it longer). Three replicas pacing
    // themselves alone would be done in a third of that.
    assert!(
        took >= least_span(90, 20),
        "90 fetches at the tenant's 20/s took only {took:?}"
    );
    // At the simulator, a second holds the slots of 1 s plus how unevenly requests
    // arrived after them (`ARRIVAL_SPREAD_SECS`): at most 25, Stripe's limit, so no
    // 429 either. Three replicas at 20/s each would show about 57.
    assert_within_the_budget(&stats, 20);
    // 90 accounts at 20/s is 4.7 s; three replicas do not make it slower.
    assert!(took < Duration::from_secs(15), "{took:?}");
    drop((second, third, setup));
}

#[tokio::test]
async fn webhook_fresh_accounts_are_not_polled() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 10,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    let master = tally::crypto::MasterKey::generate_base64();
    let setup = spawn_app_on(db.alias(), master.clone(), api_only).await;
    let spec = TenantSpec {
        api_base: Some(sim.base_url()),
        rate_limit: Some(50),
        webhook_secret: Some(SecretString::from("whsec_refresh_test".to_owned())),
        ..TenantSpec::new(
            "acme",
            SecretString::from(sim.keys().platforms[0].key.clone()),
        )
    };
    tally::commands::tenant::add(&setup.pool, &setup.master, &setup.settings, spec)
        .await
        .expect("tenant");
    let tenant_id = store::tenants::find_by_slug(&setup.pool, "acme")
        .await
        .expect("q")
        .expect("t")
        .id;
    let ids = sim.keys().platforms[0].accounts.clone();
    setup.store_sim_accounts(tenant_id, &sim, &ids, None).await;
    let pushed = &ids[..4];
    for id in pushed {
        let status = sim
            .send_webhook(
                &format!("{}/webhooks/stripe/acme", setup.address),
                "whsec_refresh_test",
                "balance.available",
                id,
            )
            .await
            .expect("sent");
        assert!(status.is_success(), "{status}");
    }
    sim.reset_stats();
    let app = spawn_app_on(db, master, |settings| {
        settings.refresh.enabled = true;
        settings.refresh.interval_secs = 120;
    })
    .await;
    wait_until_all_tried(&app, tenant_id, Duration::from_secs(20)).await;
    // Give the refresher a few more rounds to (wrongly) poll the pushed ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_snapshots WHERE tenant_id = $1 AND source = 'fetch'
           AND stripeid = ANY($2)",
    )
    .bind(tenant_id)
    .bind(pushed)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(polled, 0, "accounts a webhook made fresh cost no polling");
    assert_eq!(
        sim.stats()
            .by_path
            .get("GET /v1/balance")
            .copied()
            .unwrap_or(0),
        6
    );
    drop(setup);
}

#[tokio::test]
async fn a_stop_during_a_refresh_and_a_sync_leaves_no_lease_and_nothing_running() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        // Fifteen pages to list: the sync is still going when the stop comes.
        accounts_per_platform: 1500,
        latency_ms: 200,
        ..SimConfig::default()
    })
    .await;
    let mut app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, "acme", 5).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let response = app
        .client
        .post(format!("{}{REFRESHES}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let response = app
        .client
        .post(format!("{}/api/administrator/connect/sync", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    // Let the refresher claim accounts and the sync get going.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_leases WHERE expires_at > now()")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert!(leased > 0, "the refresh was under way");

    app.shut_down().await;
    let pool = store::pool(&app.settings.database).expect("pool");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_leases WHERE expires_at > now()")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(leased, 0, "every lease given back");
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM balance_refreshes")
        .fetch_all(&pool)
        .await
        .expect("refreshes");
    assert_eq!(statuses, ["interrupted"]);
    let syncs: Vec<String> = sqlx::query_scalar("SELECT status FROM sync_runs")
        .fetch_all(&pool)
        .await
        .expect("syncs");
    assert_eq!(syncs, ["interrupted"]);
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&pool)
        .await
        .expect("workers");
    assert_eq!(workers, 0, "the worker deregistered");
    pool.close().await;
}

/// `tally serve` as a separate process against the app's database.
fn serve_process(app: &TestApp, port: u16, lease_secs: u64) -> Child {
    app.serve_process(
        port,
        &[("TALLY__REFRESH__LEASE_SECS", &lease_secs.to_string())],
    )
}

async fn fetched(app: &TestApp, tenant_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM latest_balances WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_refresh_leaves_its_accounts_to_the_others() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 60,
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    let master = tally::crypto::MasterKey::generate_base64();
    // No worker here: this app only sets up and watches.
    let app = spawn_app_on(db, master.clone(), api_only).await;
    let tenant_id = tenant_on(&app, &sim, "acme", 15).await;
    let admin = app.token(Role::Admin, Some("acme")).await;

    // Three replicas: a `tally serve` process to be killed, and two that stay.
    let mut killed = serve_process(&app, free_port(), 3);
    let pid = i32::try_from(killed.id()).expect("pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    let killed_worker: uuid::Uuid = loop {
        let worker = sqlx::query_scalar("SELECT id FROM workers WHERE pid = $1")
            .bind(pid)
            .fetch_optional(&app.pool)
            .await
            .expect("workers");
        if let Some(worker) = worker {
            break worker;
        }
        assert!(Instant::now() < deadline, "the process never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let survivors = [
        spawn_app_on(app.db.alias(), master.clone(), |s| s.refresh.lease_secs = 3).await,
        spawn_app_on(app.db.alias(), master, |s| s.refresh.lease_secs = 3).await,
    ];
    // Every worker counts the others at its heartbeat (every 2 s) and sizes its
    // claims by that count: let all three have seen all three before the work starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers")
        .fetch_one(&app.pool)
        .await
        .expect("workers")
        < 3
    {
        assert!(Instant::now() < deadline, "the survivors never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let response = app
        .client
        .post(format!("{}{REFRESHES}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);

    // Kill it while it holds accounts it has not stored yet.
    let leases_of_killed = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT stripeid FROM refresh_leases WHERE worker_id = $1 AND expires_at > now()",
        )
        .bind(killed_worker)
        .fetch_all(&app.pool)
        .await
        .expect("leases")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while leases_of_killed().await.is_empty() || fetched(&app, tenant_id).await < 5 {
        assert!(Instant::now() < deadline, "the process never held a lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    let killed_at = chrono::Utc::now();
    // What it held when it died: a lease is given back only with its snapshot.
    let held = leases_of_killed().await;
    assert!(!held.is_empty(), "the killed replica held leases");

    // The others finish the same refresh, its accounts included, once the leases expire.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM balance_refreshes")
            .fetch_one(&app.pool)
            .await
            .expect("status");
        if status == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors never finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fetches_per_account(&app, tenant_id).await,
        vec![1; 60],
        "every account stored once"
    );
    let taken_over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_snapshots
          WHERE tenant_id = $1 AND stripeid = ANY($2) AND fetched_at > $3",
    )
    .bind(tenant_id)
    .bind(&held)
    .bind(killed_at)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(
        taken_over,
        held.len() as i64,
        "the killed replica's accounts were fetched by the others: {held:?}"
    );
    drop(survivors);
}

#[tokio::test]
async fn sigterm_of_tally_serve_gives_back_what_it_holds() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 60,
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(api_only).await;
    let tenant_id = tenant_on(&app, &sim, "acme", 10).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let mut server = serve_process(&app, free_port(), 60);
    let response = app
        .client
        .post(format!("{}{REFRESHES}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetched(&app, tenant_id).await < 5 {
        assert!(
            Instant::now() < deadline,
            "the process never started fetching"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = server.wait().expect("exits");
    assert!(status.success(), "{status:?}");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_leases WHERE expires_at > now()")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(leased, 0);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM balance_refreshes")
        .fetch_all(&app.pool)
        .await
        .expect("refreshes");
    assert_eq!(statuses, ["interrupted"]);
}

#[tokio::test]
async fn metrics_show_each_tenants_freshness_and_the_rate_in_force() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 12,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| {
        settings.refresh.enabled = true;
        settings.refresh.interval_secs = 600;
    })
    .await;
    // A slug of its own: the metrics recorder is shared by every test in the process.
    tenant_on(&app, &sim, "gauged", 40).await;
    let owner = app.token(Role::Owner, None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = app
            .get("/metrics", &owner)
            .await
            .text()
            .await
            .expect("text");
        let has = |line: &str| text.lines().any(|l| l == line);
        if has(r#"tally_accounts_listed{tenant="gauged"} 12"#)
            && has(r#"tally_accounts_stale{tenant="gauged"} 0"#)
            && has(r#"tally_accounts_failing{tenant="gauged"} 0"#)
            && has(r#"tally_refresh_backlog_accounts{tenant="gauged"} 0"#)
            && has(r#"tally_stripe_rate_per_second{tenant="gauged"} 40"#)
        {
            assert!(text.contains(r#"tally_oldest_snapshot_age_seconds{tenant="gauged"}"#));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauges never showed the fresh tenant:\n{}",
            text.lines()
                .filter(|l| l.contains("gauged"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn sigterm_ends_a_long_request_after_the_grace_period() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 100,
        latency_ms: 500,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(api_only).await;
    tenant_on(&app, &sim, "acme", 5).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let port = free_port();
    let mut server = app.serve_process(port, &[("TALLY__SERVER__SHUTDOWN_GRACE_SECS", "2")]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    // 100 accounts at 5/s cannot be fresh for a minute: this poll waits its 25 s.
    let poll = tokio::spawn({
        let request = app
            .client
            .get(format!("{base}{BALANCES}?max_age=0&wait=25"))
            .bearer_auth(reader);
        async move { request.send().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "serve outlived its 2 s grace by far"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "stopped {:?} after SIGTERM",
        signalled.elapsed()
    );
    poll.abort();
}

#[tokio::test]
async fn a_persons_single_account_goes_ahead_of_a_background_round() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 200,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| {
        settings.refresh.enabled = true;
        settings.refresh.interval_secs = 600;
    })
    .await;
    // 200 accounts at 5/s: the background round takes 40 s.
    let tenant_id = tenant_on(&app, &sim, "acme", 5).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetched(&app, tenant_id).await < 3 {
        assert!(
            Instant::now() < deadline,
            "the background round never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The account the round would reach last (it goes by creation, oldest snapshot first).
    let last: String = sqlx::query_scalar(
        "SELECT a.stripeid FROM stripe_accounts a WHERE a.tenant_id = $1
           AND NOT EXISTS (SELECT 1 FROM latest_balances l
                           WHERE l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid)
         ORDER BY a.stripeid DESC LIMIT 1",
    )
    .bind(tenant_id)
    .fetch_one(&app.pool)
    .await
    .expect("an account not fetched yet");
    let asked = Instant::now();
    let (status, body) = app
        .get_json(
            &format!(
                "/api/administrator/connect/stripe-account/balance?stripeid={last}&max_age=60&wait=10"
            ),
            &reader,
        )
        .await;
    let took = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "balance");
    assert_eq!(body["stripeid"], last.as_str());
    assert!(
        took < Duration::from_secs(4),
        "a person's account waited {took:?} behind background work"
    );
    assert!(
        fetched(&app, tenant_id).await < 100,
        "the round was still going"
    );
}

#[tokio::test]
async fn accounts_created_on_stripe_appear_without_anyone_running_sync() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 5,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| settings.sync.interval_secs = 2).await;
    let tenant_id = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let listed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM stripe_accounts WHERE tenant_id = $1 AND removed_at IS NULL",
        )
        .bind(tenant_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while listed().await < 5 {
        assert!(
            Instant::now() < deadline,
            "the first sync never ran by itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let platform = sim.keys().platforms[0].id.clone();
    sim.add_accounts(&platform, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed().await < 8 {
        assert!(
            Instant::now() < deadline,
            "new Stripe accounts never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Pages are committed as they arrive, so the accounts can show before their run
    // is marked succeeded.
    let succeeded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sync_runs WHERE status = 'succeeded'")
            .fetch_one(&app.pool)
            .await
            .expect("runs")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while succeeded().await < 2 {
        assert!(
            Instant::now() < deadline,
            "scheduled syncs: {}",
            succeeded().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times each account was fetched since `since`, in stripeid order.
async fn fetches_since(
    app: &TestApp,
    tenant_id: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT count(s.stripeid) FROM stripe_accounts a
           LEFT JOIN balance_snapshots s ON s.tenant_id = a.tenant_id AND s.stripeid = a.stripeid
                AND s.source = 'fetch' AND s.fetched_at >= $2
          WHERE a.tenant_id = $1 GROUP BY a.stripeid ORDER BY a.stripeid",
    )
    .bind(tenant_id)
    .bind(since)
    .fetch_all(&app.pool)
    .await
    .expect("counts")
}

/// The age of the tenant's oldest latest snapshot, by the database's clock.
async fn oldest_age(app: &TestApp, tenant_id: i64) -> Duration {
    let seconds: f64 = sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(latest))::float8, 1e9) FROM (
           SELECT max(s.fetched_at) AS latest FROM stripe_accounts a
             LEFT JOIN balance_snapshots s ON s.tenant_id = a.tenant_id AND s.stripeid = a.stripeid
            WHERE a.tenant_id = $1 GROUP BY a.stripeid) latest",
    )
    .bind(tenant_id)
    .fetch_one(&app.pool)
    .await
    .expect("age");
    Duration::from_secs_f64(seconds.max(0.0))
}

// Several threads: the simulator times arrivals on the runtime the replicas use too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_every_account_fresh_interval_after_interval() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 30,
        latency_ms: 20,
        rate_limit: 25,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    const INTERVAL: u64 = 3;
    let configure = |settings: &mut tally::config::Settings| {
        settings.refresh.enabled = true;
        settings.refresh.interval_secs = INTERVAL;
    };
    let master = tally::crypto::MasterKey::generate_base64();
    let setup = spawn_app_on(db.alias(), master.clone(), api_only).await;
    let tenant_id = tenant_on(&setup, &sim, "acme", 20).await;
    let replicas = [
        spawn_app_on(db.alias(), master.clone(), configure).await,
        spawn_app_on(db.alias(), master.clone(), configure).await,
        spawn_app_on(db, master, configure).await,
    ];
    wait_until_all_tried(&replicas[0], tenant_id, Duration::from_secs(20)).await;

    // Steady state: three intervals, watched twice a second.
    sim.reset_stats();
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&setup.pool)
        .await
        .expect("now");
    let mut oldest = Duration::ZERO;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3 * INTERVAL) {
        oldest = oldest.max(oldest_age(&setup, tenant_id).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counts = fetches_since(&setup, tenant_id, since).await;
    eprintln!("steady state over 3 intervals: fetches per account {counts:?}, oldest {oldest:?}");
    assert_eq!(counts.len(), 30);
    // Three intervals: each account three times, give or take the one that was
    // due just before or just after the window's edges; never a burst of repeats.
    assert!(
        counts.iter().all(|n| (2..=4).contains(n)),
        "fetches per account over 3 intervals: {counts:?}"
    );
    let total: i64 = counts.iter().sum();
    assert!(
        (80..=100).contains(&total),
        "about 30 accounts × 3 intervals: {total}"
    );
    assert!(
        oldest < Duration::from_secs(INTERVAL) + Duration::from_millis(2500),
        "the oldest snapshot stayed near the interval: {oldest:?}"
    );
    let stats = sim.stats();
    // The budget's spacing, seen at the simulator with `ARRIVAL_SPREAD_SECS` of delay.
    assert_within_the_budget(&stats, 20);
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_at_another_replica_joins_the_same_refresh_and_one_account_or_owner_waits_alike() {
    a_poll_at_another_replica_joins_the_same_refresh(&|_| {}).await;
}

/// Two replicas, each connected as `route` says, answering one refresh.
pub(crate) async fn a_poll_at_another_replica_joins_the_same_refresh(route: &Route<'_>) {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 20,
        // Slow enough that nothing is fresh within wait=0 or wait=1.
        latency_ms: 1500,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    let master = tally::crypto::MasterKey::generate_base64();
    let first = spawn_app_on(db.alias(), master.clone(), route).await;
    let second = spawn_app_on(db, master, route).await;
    let tenant_id = tenant_on(&first, &sim, "acme", 10).await;
    let token = first.token(Role::Reader, Some("acme")).await;

    let at_first = first
        .get(&format!("{BALANCES}?max_age=600&wait=0"), &token)
        .await;
    assert_eq!(at_first.status(), 202);
    let refresh: Value = at_first.json().await.expect("json");
    let at_second = second
        .get(&format!("{BALANCES}?max_age=600&wait=0"), &token)
        .await;
    assert_eq!(at_second.status(), 202);
    let joined: Value = at_second.json().await.expect("json");
    assert_eq!(joined["id"], refresh["id"], "one refresh for both replicas");
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_refreshes WHERE tenant_id = $1 AND status = 'running'
           AND scope_owner IS NULL AND scope_stripeid IS NULL",
    )
    .bind(tenant_id)
    .fetch_one(&first.pool)
    .await
    .expect("count");
    assert_eq!(running, 1);

    // One account and one owner's aggregate follow the same rule: 202 + Location
    // within `wait`, then 200 once their accounts were tried.
    let stripeid = sim.keys().platforms[0].accounts[0].clone();
    let owner: String = sqlx::query_scalar(
        "SELECT accountid FROM stripe_accounts WHERE tenant_id = $1 AND accountid IS NOT NULL
          ORDER BY stripeid LIMIT 1",
    )
    .bind(tenant_id)
    .fetch_one(&first.pool)
    .await
    .expect("an owner");
    let paths = [
        format!(
            "/api/administrator/connect/stripe-account/balance?stripeid={stripeid}&max_age=600"
        ),
        format!("{BALANCES}?accountid={owner}&max_age=600"),
    ];
    for path in &paths {
        let started = Instant::now();
        let response = second.get(&format!("{path}&wait=0"), &token).await;
        // Nothing answers from Stripe in under 1.5 s, so nothing is fresh yet.
        assert_eq!(response.status(), 202, "{path}");
        assert!(started.elapsed() < Duration::from_secs(1), "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let location = response.headers()["location"]
            .to_str()
            .expect("text")
            .to_owned();
        assert!(location.starts_with(REFRESHES), "{location}");
        let (status, body) = second.get_json(&location, &token).await;
        assert_eq!(
            (status, body["object"].as_str()),
            (200, Some("balanceRefresh"))
        );
    }
    for path in &paths {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = second.get_json(&format!("{path}&wait=5"), &token).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 202, "{path}: {body}");
            assert!(Instant::now() < deadline, "{path} never became fresh");
        }
    }
}

/// How long eight request slots of `budget` take to be granted.
async fn eight_slots(budget: &dyn tally::stripe::RateBudget) -> Duration {
    let started = Instant::now();
    for _ in 0..8 {
        budget
            .acquire(tally::stripe::Priority::Interactive, "/v1/balance")
            .await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_process_slows_every_process_sharing_the_budget() {
    use tally::shared_budget::SharedBudget;
    use tally::stripe::{Priority, RateBudget};

    let app = spawn_app_with(api_only).await;
    let tenant_id = app.add_tenant("acme").await;
    // Two processes: each its own pool, as two replicas would have.
    let pool = || async { sqlx::PgPool::connect(&app.db.url).await.expect("pool") };
    // The endpoint's limit (25/s) is above the tenant's: the tenant's rules here.
    let seeing = SharedBudget::new(pool().await, tenant_id, 20, 25);
    let other = SharedBudget::new(pool().await, tenant_id, 20, 25);
    // At 20/s, eight slots are 7 gaps of 50.6 ms.
    let before = eight_slots(&other).await;
    assert!(before < Duration::from_millis(600), "{before:?}");

    seeing.throttled(tally::stripe::Throttled::Account);
    // The 429 is shared in the background: wait until the database has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rate: i32 =
            sqlx::query_scalar("SELECT current_rate FROM stripe_budgets WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(&app.pool)
                .await
                .expect("rate");
        if rate == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 429 never reached the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = eight_slots(&other).await;
    // At 10/s, 7 gaps of 101.2 ms.
    assert!(after >= Duration::from_millis(700), "{after:?}");
    assert_eq!(
        other.current(),
        10,
        "the other process paces at half the rate"
    );
    let in_force: i32 =
        sqlx::query_scalar("SELECT current_rate FROM stripe_budgets WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&app.pool)
            .await
            .expect("rate");
    assert_eq!(in_force, 10);

    // Quiet for two seconds, the rate comes back by a quarter, for everyone.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    RateBudget::acquire(&other, Priority::Interactive, "/v1/balance").await;
    assert_eq!(other.current(), 15);
}

/// Stripe's two limits, decided in the database: slot times on its clock, so nothing
/// here depends on how busy the machine is.
#[tokio::test]
async fn each_endpoint_has_its_own_limit_inside_the_tenants_and_an_endpoint_429_slows_only_it() {
    use tally::store::stripe_budgets::{self as budget, Rates};

    let app = spawn_app_with(api_only).await;
    let tenant_id = app.add_tenant("acme").await;
    let rates = |endpoint| Rates {
        tenant: 100,
        endpoint,
        endpoint_rate: 10,
    };
    let horizon = Some(250);
    // Background balance reads at 10/s (101.2 ms apart): three fit in the 250 ms
    // horizon, the fourth is refused rather than queued.
    let mut granted = Vec::new();
    loop {
        let slot = budget::reserve(
            &app.pool,
            tenant_id,
            rates("/v1/balance"),
            horizon,
            SLOT_SPACING_SECS,
        )
        .await
        .expect("reserve");
        if !slot.reserved {
            break;
        }
        granted.push(slot.slot_at);
        assert!(granted.len() < 10, "the endpoint's limit holds");
    }
    assert_eq!(granted.len(), 3, "{granted:?}");
    for pair in granted.windows(2) {
        assert!(
            pair[1] - pair[0]
                >= chrono::Duration::microseconds((SLOT_SPACING_SECS / 10.0 * 1e6) as i64),
            "{granted:?}"
        );
    }
    // Another endpoint is not queued behind them: at most the horizon, at the tenant's
    // spacing (10.1 ms at 100/s), not after the balance reads' 304 ms.
    let accounts = budget::reserve(
        &app.pool,
        tenant_id,
        rates("/v1/accounts"),
        horizon,
        SLOT_SPACING_SECS,
    )
    .await
    .expect("reserve");
    assert!(accounts.reserved);
    assert!(
        accounts.slot_at - accounts.db_now <= chrono::Duration::milliseconds(261),
        "{:?}",
        accounts.slot_at - accounts.db_now
    );

    // A 429 `endpoint-rate` halves that endpoint only.
    budget::endpoint_throttled(&app.pool, tenant_id, "/v1/balance", 10)
        .await
        .expect("throttled");
    let rate_of = |endpoint: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT current_rate FROM stripe_endpoint_budgets
                  WHERE tenant_id = $1 AND endpoint = $2",
            )
            .bind(tenant_id)
            .bind(endpoint)
            .fetch_one(&pool)
            .await
            .expect("rate")
        }
    };
    assert_eq!(rate_of("/v1/balance").await, 5);
    assert_eq!(rate_of("/v1/accounts").await, 10);
    let tenant_rate: i32 =
        sqlx::query_scalar("SELECT current_rate FROM stripe_budgets WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&app.pool)
            .await
            .expect("rate");
    assert_eq!(tenant_rate, 100, "the tenant's rate is untouched");
}

#[tokio::test]
async fn a_persons_refresh_stays_theirs_when_polls_join_it() {
    // Nothing fetches here: the refresh stays running while polls join it.
    let app = spawn_app_with(api_only).await;
    let tenant = app.add_tenant("acme").await;
    app.store_accounts(
        tenant,
        &[crate::helpers::account_object("acct_1Trig", 1, None)],
    )
    .await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let started = app
        .client
        .post(format!("{}{REFRESHES}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(started.status(), 202);
    let refresh: Value = started.json().await.expect("json");
    assert_eq!(refresh["trigger"], "person");
    let id = refresh["id"].as_str().expect("id").to_owned();

    for _ in 0..2 {
        let response = app
            .get(&format!("{BALANCES}?max_age=0&wait=0"), &reader)
            .await;
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            location.ends_with(&id),
            "the poll joined the person's refresh: {location}"
        );
    }
    let (status, body) = app.get_json(&format!("{REFRESHES}/{id}"), &reader).await;
    assert_eq!(status, 200);
    assert_eq!(body["trigger"], "person", "{body}");
}
