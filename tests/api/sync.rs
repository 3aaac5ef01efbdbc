//! Account sync through the real simulator over HTTP into the real Postgres: platform
//! ids and owners, paging, idempotence, interruption and resumption, removal, the
//! API endpoints and the CLI.

use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tally::commands::tenant::TenantSpec;
use tally::crypto::MasterKey;
use tally::domain::Role;
use tally::sim::{SimConfig, SimHandle};
use tally::store;
use tally::store::accounts::AccountRow;
use tally::store::sync_runs::RunCounts;
use tally::store::tenants::Tenant;
use tally::sync::{self, Progress, SyncError, SyncOptions, SyncSummary};
use tally::tenants::StripeTenants;

use crate::helpers::{ids, spawn_app, TestApp};

/// Fast enough for tests; the simulator has no rate limit unless a test sets one.
const TEST_RATE: u32 = 1000;

pub async fn spawn_sim(platforms: usize, accounts_per_platform: usize, org: usize) -> SimHandle {
    tally::sim::spawn(SimConfig {
        platforms,
        accounts_per_platform,
        org_accounts: org,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn spec(slug: &str, key: &str, sim: &SimHandle, webhook_secret: Option<&str>) -> TenantSpec {
    TenantSpec {
        slug: slug.to_owned(),
        key: SecretString::from(key.to_owned()),
        platforms: vec![],
        accounts: vec![],
        api_base: Some(sim.base_url()),
        api_version: None,
        rate_limit: Some(TEST_RATE),
        webhook_secret: webhook_secret.map(|s| SecretString::from(s.to_owned())),
    }
}

async fn add(app: &TestApp, spec: TenantSpec) -> Tenant {
    let slug = spec.slug.clone();
    tally::commands::tenant::add(&app.pool, &app.master, &app.settings, spec)
        .await
        .expect("tenant added");
    store::tenants::find_by_slug(&app.pool, &slug)
        .await
        .expect("query")
        .expect("tenant exists")
}

/// An organization tenant with every platform and org account of the simulator.
pub async fn add_org_tenant(
    app: &TestApp,
    sim: &SimHandle,
    slug: &str,
    webhook_secret: Option<&str>,
) -> Tenant {
    let keys = sim.keys();
    let mut spec = spec(slug, &keys.organization_key, sim, webhook_secret);
    spec.platforms = keys.platforms.iter().map(|p| p.id.clone()).collect();
    spec.accounts = keys.org_accounts.clone();
    add(app, spec).await
}

/// A platform tenant holding the simulator's `platform`-th platform key.
pub async fn add_platform_tenant(
    app: &TestApp,
    sim: &SimHandle,
    slug: &str,
    platform: usize,
    webhook_secret: Option<&str>,
) -> Tenant {
    let key = sim.keys().platforms[platform].key.clone();
    add(app, spec(slug, &key, sim, webhook_secret)).await
}

/// The app's Stripe access, rebuilt with `max_attempts` (1: failures surface at once).
pub fn stripe_tenants(app: &TestApp, max_attempts: u32) -> StripeTenants {
    let mut settings = app.settings.stripe.clone();
    settings.max_attempts = max_attempts;
    let master = MasterKey::from_base64(&app.master_base64).expect("master key");
    StripeTenants::new(&settings, Arc::new(master)).expect("stripe client")
}

pub async fn sync_with(
    app: &TestApp,
    tenant: &Tenant,
    options: &SyncOptions,
    progress: &dyn Progress,
    max_attempts: u32,
) -> Result<SyncSummary, SyncError> {
    let stripe = stripe_tenants(app, max_attempts);
    let client = stripe.client_for(tenant).expect("client");
    sync::run(&app.pool, &client, tenant, options, progress).await
}

pub async fn sync_ok(app: &TestApp, tenant: &Tenant) -> SyncSummary {
    let options = SyncOptions::from_settings(&app.settings);
    sync_with(app, tenant, &options, &sync::Quiet, 4)
        .await
        .expect("sync succeeds")
}

/// The stored record of `stripeid`, removed or not; it must exist.
pub async fn stored(app: &TestApp, tenant_id: i64, stripeid: &str) -> AccountRow {
    store::accounts::get(&app.pool, tenant_id, &crate::helpers::acct(stripeid))
        .await
        .expect("query")
        .unwrap_or_else(|| panic!("{stripeid} stored"))
}

async fn listed_count(app: &TestApp, tenant_id: i64) -> i64 {
    store::accounts::count(&app.pool, tenant_id)
        .await
        .expect("count")
}

fn counts(summary: &SyncSummary) -> (i64, i64, i64, i64) {
    let run = &summary.run;
    (run.inserted, run.updated, run.unchanged, run.removed)
}

#[tokio::test]
async fn an_org_sync_lands_every_account_with_its_platform_and_owner() {
    let app = spawn_app().await;
    let sim = spawn_sim(3, 40, 4).await;
    let tenant = add_org_tenant(&app, &sim, "acme", None).await;

    let summary = sync_ok(&app, &tenant).await;

    assert_eq!(summary.run.status, "succeeded");
    assert_eq!(counts(&summary), (124, 0, 0, 0));
    assert_eq!(listed_count(&app, tenant.id).await, 124);
    let keys = sim.keys();
    let expected = keys
        .platforms
        .iter()
        .flat_map(|p| p.accounts.iter().map(move |a| (a, Some(p.id.as_str()))))
        .chain(keys.org_accounts.iter().map(|a| (a, None)));
    for (stripeid, platform) in expected {
        let row = stored(&app, tenant.id, stripeid).await;
        let object = sim.account_object(stripeid).expect("sim account");
        assert_eq!(row.platform_id.as_deref(), platform, "{stripeid}");
        assert_eq!(
            row.accountid.as_deref(),
            object["metadata"]["accountid"].as_str(),
            "{stripeid}"
        );
        let stored: Value = serde_json::from_str(&row.stripe_object).expect("json");
        assert_eq!(stored, object, "{stripeid}");
    }
    let stats = sim.stats();
    assert_eq!(stats.header_violations, 0, "{stats:?}");
}

#[tokio::test]
async fn paging_walks_every_page_of_every_platform() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 260, 2).await;
    let tenant = add_org_tenant(&app, &sim, "acme", None).await;

    let summary = sync_ok(&app, &tenant).await;

    // 3 pages per platform (100, 100, 60) and one batch of org accounts.
    assert_eq!(summary.run.pages, 7);
    assert_eq!(summary.run.accounts_seen, 522);
    assert_eq!(listed_count(&app, tenant.id).await, 522);
    assert_eq!(
        sim.stats().by_path.get("GET /v1/accounts").copied(),
        Some(6),
        "{:?}",
        sim.stats().by_path
    );
}

#[tokio::test]
async fn a_second_sync_with_nothing_changed_changes_nothing() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 30, 2).await;
    let tenant = add_org_tenant(&app, &sim, "acme", None).await;
    sync_ok(&app, &tenant).await;
    let probe = sim.keys().platforms[0].accounts[3].clone();
    let before = stored(&app, tenant.id, &probe).await;

    let second = sync_ok(&app, &tenant).await;

    assert_eq!(counts(&second), (0, 0, 62, 0));
    let after = stored(&app, tenant.id, &probe).await;
    assert_eq!(after.updated_at, before.updated_at);

    // Rows written before the object was also kept as text have none: they are read
    // from the jsonb column, the same object, and a sync that finds nothing changed
    // leaves them as they are.
    sqlx::query("UPDATE stripe_accounts SET stripe_object_text = NULL WHERE tenant_id = $1")
        .bind(tenant.id)
        .execute(&app.pool)
        .await
        .expect("rows from before");
    let old_row = stored(&app, tenant.id, &probe).await;
    let as_json = |text: &str| serde_json::from_str::<Value>(text).expect("json");
    assert_eq!(
        as_json(&old_row.stripe_object),
        as_json(&before.stripe_object)
    );
    assert_eq!(counts(&sync_ok(&app, &tenant).await), (0, 0, 62, 0));
    assert_eq!(
        stored(&app, tenant.id, &probe).await.updated_at,
        before.updated_at
    );

    // A real change is picked up, and only that one.
    sim.update_account_metadata(&probe, "accountid", Some("owner_moved"));
    let third = sync_ok(&app, &tenant).await;
    assert_eq!(counts(&third), (0, 1, 61, 0));
    let moved = stored(&app, tenant.id, &probe).await;
    assert_eq!(moved.accountid.as_deref(), Some("owner_moved"));
    assert!(moved.updated_at > before.updated_at);
}

/// Calls `act` once, when the `after`-th page is committed.
struct AfterPages<F: Fn() + Send + Sync> {
    after: i64,
    act: F,
    pages: AtomicI64,
}

impl<F: Fn() + Send + Sync> Progress for AfterPages<F> {
    fn page_committed(&self, _counts: &RunCounts, _elapsed: Duration) {
        if self.pages.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            (self.act)();
        }
    }
}

async fn run_status(app: &TestApp, tenant_id: i64) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT status, error FROM sync_runs WHERE tenant_id = $1 ORDER BY started_at")
        .bind(tenant_id)
        .fetch_all(&app.pool)
        .await
        .expect("runs")
}

#[tokio::test]
async fn a_sync_failing_midway_keeps_its_pages_and_a_rerun_finishes() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 1000, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let options = SyncOptions::from_settings(&app.settings);
    // Stripe starts failing once the first page is stored.
    let breaker = AfterPages {
        after: 1,
        act: || sim.set_knobs(|k| k.error_rate = 1.0),
        pages: AtomicI64::new(0),
    };

    let failed = sync_with(&app, &tenant, &options, &breaker, 1).await;

    let error = failed.expect_err("the sync fails");
    assert!(
        error
            .to_string()
            .contains("listing the platform's connected accounts"),
        "{error}"
    );
    let kept = listed_count(&app, tenant.id).await;
    assert!((100..1000).contains(&kept), "kept {kept}");
    let runs = run_status(&app, tenant.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, "failed");
    assert!(
        runs[0].1.as_deref().is_some_and(|e| e.contains("HTTP 500")),
        "{runs:?}"
    );

    sim.set_knobs(|k| k.error_rate = 0.0);
    let rerun = sync_ok(&app, &tenant).await;

    assert_eq!(counts(&rerun), (1000 - kept, 0, kept, 0));
    assert_eq!(listed_count(&app, tenant.id).await, 1000);
}

#[tokio::test]
async fn an_abandoned_run_is_returned_while_its_lease_lasts_and_taken_over_once_it_expires() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 500, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let options = SyncOptions {
        lease: Duration::from_secs(2),
        ..SyncOptions::from_settings(&app.settings)
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = Mutex::new(Some(stop));
    let killer = AfterPages {
        after: 2,
        act: || {
            if let Some(stop) = stop.lock().expect("lock").take() {
                let _ = stop.send(());
            }
        },
        pages: AtomicI64::new(0),
    };

    // The process "dies" after two pages: the future is dropped mid-run.
    tokio::select! {
        // Checked first, so the run cannot commit another page after the signal.
        biased;
        _ = stopped => {}
        outcome = sync_with(&app, &tenant, &options, &killer, 4) => panic!("finished: {outcome:?}"),
    }
    let kept = listed_count(&app, tenant.id).await;
    assert!(kept >= 200, "kept {kept}");

    // While its lease lasts, the run counts as running.
    let blocked = sync_with(&app, &tenant, &options, &sync::Quiet, 4).await;
    assert!(
        matches!(blocked, Err(SyncError::AlreadyRunning(_))),
        "{blocked:?}"
    );
    let admin = app.token(Role::Admin, Some("acme")).await;
    let response = app
        .client
        .post(format!("{}/api/administrator/connect/sync", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let running: Value = response.json().await.expect("json");
    assert_eq!(running["status"], "running");
    assert_eq!(running["pages"].as_i64(), Some(kept / 100));

    // Once its lease ran out, a new run takes over and finishes the job.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let rerun = sync_with(&app, &tenant, &options, &sync::Quiet, 4)
        .await
        .expect("rerun succeeds");
    assert_eq!(rerun.run.inserted, 500 - kept);
    assert_eq!(listed_count(&app, tenant.id).await, 500);
    let runs = run_status(&app, tenant.id).await;
    assert_eq!(runs[0].0, "interrupted");
    assert!(
        runs[0]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("stopped renewing the lease")),
        "{runs:?}"
    );
    assert_eq!(runs[1].0, "succeeded");
}

#[tokio::test]
async fn an_account_stripe_stops_returning_is_marked_removed_but_kept() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 20, 2).await;
    let tenant = add_org_tenant(&app, &sim, "acme", None).await;
    sync_ok(&app, &tenant).await;
    let revoked = sim.keys().platforms[1].accounts[5].clone();
    // A balance for it counts in the tenant's totals until it is removed.
    let balance = sim.balance_of(&revoked).expect("balance");
    let parsed: tally::stripe::Balance = serde_json::from_value(balance.clone()).expect("parse");
    let totals = tally::money::Totals::from_balance(&parsed).expect("totals");
    let mut conn = app.pool.acquire().await.expect("connection");
    store::snapshots::record(
        &mut conn,
        tenant.id,
        &crate::helpers::acct(&revoked),
        chrono::Utc::now(),
        "fetch",
        store::snapshots::SnapshotOutcome::Balance {
            raw: &balance,
            totals: &totals,
        },
    )
    .await
    .expect("snapshot");
    drop(conn);
    assert!(!store::snapshots::tenant_totals(&app.pool, tenant.id)
        .await
        .expect("totals")
        .is_empty());

    sim.revoke(&revoked);
    let summary = sync_ok(&app, &tenant).await;

    assert_eq!(counts(&summary), (0, 0, 41, 1));
    assert_eq!(listed_count(&app, tenant.id).await, 41);
    assert!(store::snapshots::tenant_totals(&app.pool, tenant.id)
        .await
        .expect("totals")
        .is_empty());
    let reader = app.token(Role::Reader, Some("acme")).await;
    let (status, listing) = app
        .get_json(
            "/api/administrator/connect/stripe-accounts?all=true",
            &reader,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!ids(&listing).contains(&revoked));
    let (status, record) = app
        .get_json(
            &format!("/api/administrator/connect/stripe-account?stripeid={revoked}"),
            &reader,
        )
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["stripeid"], revoked.as_str());
    assert!(record["removedAt"].is_string(), "{record}");

    // Nothing else was touched, and the next sync removes nothing more.
    let again = sync_ok(&app, &tenant).await;
    assert_eq!(counts(&again), (0, 0, 41, 0));
}

async fn post_sync(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    let response = app
        .client
        .post(format!(
            "{}/api/administrator/connect/sync{query}",
            app.address
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn wait_finished(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (status, run) = app
            .get_json(&format!("/api/administrator/connect/sync/{id}"), token)
            .await;
        assert_eq!(status, 200, "{run}");
        if run["status"] != "running" {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sync {id} did not finish");
}

#[tokio::test]
async fn the_sync_endpoints_start_a_background_run_and_show_it() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 30, 1).await;
    add_org_tenant(&app, &sim, "acme", None).await;
    add_org_tenant(&app, &sim, "globex", None).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;
    let other_admin = app.token(Role::Admin, Some("globex")).await;

    let (status, body) = post_sync(&app, &reader, "").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    let (status, run) = post_sync(&app, &admin, "").await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["object"], "syncRun");
    assert_eq!(run["appid"], "acme");
    let id = run["id"].as_str().expect("id").to_owned();
    let done = wait_finished(&app, &reader, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["accountsSeen"], 61);
    assert_eq!(done["inserted"], 61);
    assert!(done["error"].is_null());
    assert!(done["finishedAt"].is_string());

    // Another tenant's run answers exactly like a missing one.
    let (status, body) = app
        .get_json(
            &format!("/api/administrator/connect/sync/{id}"),
            &other_admin,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-syncid"))
    );
    let (status, _) = app
        .get_json(
            &format!("/api/administrator/connect/sync/{}", uuid::Uuid::new_v4()),
            &admin,
        )
        .await;
    assert_eq!(status, 404);
    for id in ["not-a-uuid", "%80"] {
        let (status, body) = app
            .get_json(&format!("/api/administrator/connect/sync/{id}"), &admin)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("invalid-syncid")),
            "{id}"
        );
    }

    // An owner names the tenant.
    let (status, run) = post_sync(&app, &owner, "?tenant=globex").await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["appid"], "globex");
    let id = run["id"].as_str().expect("id").to_owned();
    let done = wait_finished(&app, &other_admin, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

/// `tally sync <slug>` against the app's database, with the test configuration.
fn cli_sync_command(app: &TestApp, slug: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(["sync", slug])
        .env("DATABASE_URL", &app.db.url)
        .env("TALLY_MASTER_KEY", &app.master_base64)
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env("TALLY_ENV", "test");
    command
}

/// Runs `tally sync <slug>`, off the runtime that serves the simulator the CLI talks to.
async fn cli_sync(app: &TestApp, slug: &str) -> std::process::Output {
    let mut command = cli_sync_command(app, slug);
    tokio::task::spawn_blocking(move || command.output().expect("tally runs"))
        .await
        .expect("joined")
}

#[tokio::test]
async fn the_cli_syncs_and_explains_failure_in_one_line() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 120, 0).await;
    add_platform_tenant(&app, &sim, "acme", 0, None).await;

    let ok = cli_sync(&app, "acme").await;

    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.starts_with("synced acme: 120 accounts in 2 pages (120 inserted"),
        "{stdout}"
    );
    assert_eq!(
        listed_count(
            &app,
            store::tenants::find_by_slug(&app.pool, "acme")
                .await
                .expect("q")
                .expect("t")
                .id
        )
        .await,
        120
    );

    let failed = cli_sync(&app, "nope").await;

    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no tenant named 'nope'"), "{stderr}");
}

/// `tally sync <slug>` as a child process holding a `lease_secs` lease.
fn spawn_cli_sync(app: &TestApp, slug: &str, lease_secs: u64) -> std::process::Child {
    cli_sync_command(app, slug)
        .env("TALLY__SYNC__LEASE_SECS", lease_secs.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tally starts")
}

/// The tenant's running run and the pages it committed, if one is running.
async fn running_run(app: &TestApp, tenant_id: i64) -> Option<(uuid::Uuid, i64)> {
    sqlx::query_as("SELECT id, pages FROM sync_runs WHERE tenant_id = $1 AND status = 'running'")
        .bind(tenant_id)
        .fetch_optional(&app.pool)
        .await
        .expect("runs")
}

#[tokio::test]
async fn a_sigkilled_cli_sync_is_taken_over_as_soon_as_its_lease_runs_out() {
    const LEASE_SECS: u64 = 3;
    let app = spawn_app().await;
    let sim = spawn_sim(1, 400, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    sim.set_knobs(|k| k.latency_ms = 700);
    let mut child = spawn_cli_sync(&app, "acme", LEASE_SECS);
    let started = std::time::Instant::now();
    let dead = loop {
        if let Some((id, pages)) = running_run(&app, tenant.id).await {
            if pages >= 1 {
                break id;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no page committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // SIGKILL: nothing in the process runs again, its lease is simply not renewed.
    child.kill().expect("SIGKILL");
    let killed_at = std::time::Instant::now();
    child.wait().expect("reaped");
    sim.set_knobs(|k| k.latency_ms = 0);

    // While the lease lasts, the dead run is still the running one…
    let (status, run) = post_sync(&app, &admin, "").await;
    assert_eq!(
        (status, run["id"].as_str()),
        (200, Some(dead.to_string().as_str()))
    );
    // …and once it ran out, the next sync takes over at once.
    let new = loop {
        let (status, run) = post_sync(&app, &admin, "").await;
        if status == 202 {
            break run;
        }
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["id"], dead.to_string());
        assert!(
            killed_at.elapsed() < Duration::from_secs(LEASE_SECS + 2),
            "not taken over within the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let takeover = killed_at.elapsed();
    eprintln!(
        "taken over {:.2} s after SIGKILL (lease {LEASE_SECS} s)",
        takeover.as_secs_f64()
    );
    // The lease ran out at most LEASE_SECS after the kill (it was renewed every
    // sixth of it before); the rest is this loop's polling and a loaded machine.
    assert!(
        takeover <= Duration::from_secs(LEASE_SECS + 1),
        "{takeover:?}"
    );
    assert_ne!(new["id"], dead.to_string());
    let done = wait_finished(&app, &admin, new["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["accountsSeen"], 400);
    assert_eq!(listed_count(&app, tenant.id).await, 400);
    let (_, old) = app
        .get_json(&format!("/api/administrator/connect/sync/{dead}"), &admin)
        .await;
    assert_eq!(old["status"], "interrupted", "{old}");
    assert!(
        old["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped renewing the lease")),
        "{old}"
    );
    assert!(old["finishedAt"].is_string(), "{old}");
}

#[tokio::test]
async fn a_live_sync_keeps_its_lease_while_no_page_arrives_for_longer_than_the_lease() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 150, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    // Each page takes three leases to arrive.
    sim.set_knobs(|k| k.latency_ms = 3000);
    let options = SyncOptions {
        lease: Duration::from_secs(1),
        ..SyncOptions::from_settings(&app.settings)
    };
    let slow = sync_with(&app, &tenant, &options, &sync::Quiet, 1);
    let watch = async {
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (status, run) = post_sync(&app, &admin, "").await;
        let again = sync_with(&app, &tenant, &options, &sync::Quiet, 1).await;
        (status, run, again)
    };
    let (outcome, (status, run, again)) = tokio::join!(slow, watch);

    let summary = outcome.expect("the slow sync finishes");
    assert_eq!(summary.run.status, "succeeded");
    assert_eq!(summary.run.accounts_seen, 150);
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["id"], summary.run.id.to_string());
    assert_eq!(run["status"], "running");
    assert_eq!(run["pages"], 0, "no page had arrived: {run}");
    let at = |key: &str| -> chrono::DateTime<chrono::Utc> {
        run[key]
            .as_str()
            .expect("timestamp")
            .parse()
            .expect("RFC 3339")
    };
    assert!(
        (at("heartbeatAt") - at("startedAt")).num_milliseconds() >= 1500,
        "the timer renewed the lease while no page arrived: {run}"
    );
    assert!(
        matches!(again, Err(SyncError::AlreadyRunning(id)) if id == summary.run.id),
        "{again:?}"
    );
    let runs = run_status(&app, tenant.id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
}
