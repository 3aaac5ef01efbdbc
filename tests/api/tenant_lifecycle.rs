//! Tenant lifecycle (issue 9 items 2-4): keys checked with Stripe before they are
//! stored, rotated without downtime on every replica, tenants updated, removed and
//! purged, the master key rotated, and every change in the audit log, never a secret.

use std::process::{Child, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use tally::audit::Actor;
use tally::commands::tenant::{self, Removal, TenantError, TenantSpec, TenantUpdate};
use tally::domain::{RefreshStatus, RefreshTrigger, Role};
use tally::sim::{mask_key, SimConfig, SimHandle};
use tally::store;
use tally::tenants::StripeTenants;

use crate::helpers::{
    assert_within_the_budget, free_port, spawn_app_on, spawn_app_with, spawn_sim, walk_list, Route,
    TestApp, TestDb, PLATFORM_KEY,
};

const BALANCE: &str = "/api/administrator/connect/stripe-account/balance";
const BALANCES: &str = "/api/administrator/connect/balances";
const REFRESHES: &str = "/api/administrator/connect/balances/refreshes";
const AUDIT: &str = "/api/administrator/audit";
const WEBHOOK_SECRET: &str = "whsec_lifecycle_test_0123456789abcdef";

fn api_only(settings: &mut tally::config::Settings) {
    settings.refresh.worker = false;
}

/// Runs the CLI without blocking the runtime (the simulator it talks to runs on it).
pub(crate) async fn run(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = app.tally_command();
    command.args(args).envs(env.iter().copied());
    tokio::process::Command::from(command)
        .output()
        .await
        .expect("tally runs")
}

/// `tally rekey` to `new`, with `previous` beside it to open what it sealed.
pub(crate) async fn rekey(app: &TestApp, new: &str, previous: &str) -> Output {
    let env = [
        ("TALLY_MASTER_KEY", new),
        ("TALLY_MASTER_KEY_PREVIOUS", previous),
    ];
    run(app, &["rekey"], &env).await
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stripe_for(app: &TestApp) -> StripeTenants {
    StripeTenants::new(
        &app.settings.stripe,
        Arc::new(tally::crypto::MasterKey::from_base64(&app.master_base64).expect("key")),
    )
    .expect("stripe")
}

fn sim_spec(sim: &SimHandle, slug: &str, key: &str) -> TenantSpec {
    TenantSpec {
        api_base: Some(sim.base_url()),
        rate_limit: Some(1000),
        ..TenantSpec::new(slug, SecretString::from(key.to_owned()))
    }
}

/// A platform tenant on the simulator's first platform, its accounts stored.
async fn sim_tenant(app: &TestApp, sim: &SimHandle, slug: &str, key: &str) -> i64 {
    tenant::add(
        &app.pool,
        &app.master,
        &app.settings,
        sim_spec(sim, slug, key),
    )
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

fn requests_with(sim: &SimHandle, key: &str) -> u64 {
    sim.stats().by_key.get(&mask_key(key)).copied().unwrap_or(0)
}

async fn tenants(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

pub(crate) fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn get_json(app: &TestApp, url: &str, token: &str) -> (u16, Value) {
    let response = app
        .client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn tenant_add_checks_the_key_with_stripe_and_refuses_a_wrong_one_with_its_message() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(api_only).await;
    let base = sim.base_url();
    let wrong = "sk_test_51WrongKeyThatStripeNeverIssued9876";
    let refused = run(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "K",
            "--api-base",
            &base,
        ],
        &[("K", wrong)],
    )
    .await;
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("Invalid API Key provided: sk_test_")
            && said.contains("9876")
            && said.contains("[request req_")
            && said.contains("nothing was stored"),
        "{said}"
    );
    assert!(!said.contains(wrong), "the key is never echoed: {said}");
    assert_eq!(tenants(&app).await, 0);

    let good = &sim.keys().platforms[0].key;
    sim.reset_stats();
    let added = run(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "K",
            "--api-base",
            &base,
        ],
        &[("K", good)],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added));
    let stats = sim.stats();
    assert_eq!(stats.total_requests, 1, "one cheap request: {stats:?}");
    assert_eq!(stats.by_path.get("GET /v1/balance"), Some(&1));

    // Offline set-up: nothing is asked of Stripe.
    sim.reset_stats();
    let offline = run(
        &app,
        &[
            "tenant",
            "add",
            "offline",
            "--key-env",
            "K",
            "--api-base",
            "http://127.0.0.1:9",
            "--no-verify",
        ],
        &[("K", wrong)],
    )
    .await;
    assert!(offline.status.success(), "{}", text(&offline));
    assert!(text(&offline).contains("not checked with Stripe"));
    // Without --no-verify, Stripe out of reach is no answer: refused, with the way out.
    let unreachable = run(
        &app,
        &[
            "tenant",
            "add",
            "later",
            "--key-env",
            "K",
            "--api-base",
            "http://127.0.0.1:9",
        ],
        &[("K", good)],
    )
    .await;
    assert!(!unreachable.status.success());
    assert!(
        text(&unreachable).contains("--no-verify"),
        "{}",
        text(&unreachable)
    );
    assert_eq!(tenants(&app).await, 2);
}

#[tokio::test]
async fn a_restricted_key_that_cannot_read_balances_is_refused_with_the_permission_it_lacks() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(api_only).await;
    let stripe = stripe_for(&app);
    let platform = sim.keys().platforms[0].id.clone();
    let no_balance = sim
        .restricted_key(&platform, &["rak_accounts_read"])
        .expect("key");
    let error = tenant::add_as(
        &app.pool,
        &app.master,
        &app.settings,
        sim_spec(&sim, "acme", &no_balance),
        Some(&stripe),
        &Actor::cli(),
    )
    .await
    .expect_err("refused");
    match &error {
        TenantError::KeyLacksPermission {
            permission,
            message,
            request_id,
        } => {
            assert_eq!(permission, "rak_balance_read");
            assert!(
                message.contains("does not have the required permissions"),
                "{message}"
            );
            assert!(request_id.starts_with("req_"));
        }
        other => panic!("expected a missing permission, got {other:?}"),
    }
    let said = error.to_string();
    assert!(
        said.contains("'rak_balance_read' permission (Balance: Read)"),
        "{said}"
    );
    assert!(!said.contains(&no_balance));
    assert_eq!(tenants(&app).await, 0);

    let reads_balances = sim
        .restricted_key(&platform, &["rak_balance_read", "rak_accounts_read"])
        .expect("key");
    let view = tenant::add_as(
        &app.pool,
        &app.master,
        &app.settings,
        sim_spec(&sim, "acme", &reads_balances),
        Some(&stripe),
        &Actor::cli(),
    )
    .await
    .expect("a restricted key with Balance: Read is fine");
    assert_eq!(view.kind, "platform");

    // An organization key is checked on an account it names; none named: refused.
    let org = TenantSpec {
        api_base: Some(sim.base_url()),
        ..TenantSpec::new(
            "org",
            SecretString::from(sim.keys().organization_key.clone()),
        )
    };
    let error = tenant::add_as(
        &app.pool,
        &app.master,
        &app.settings,
        org,
        Some(&stripe),
        &Actor::cli(),
    )
    .await
    .expect_err("org key without an account");
    assert!(matches!(error, TenantError::OrgKeyNeedsAccount), "{error}");
    let org = TenantSpec {
        api_base: Some(sim.base_url()),
        platforms: vec![platform.clone()],
        ..TenantSpec::new(
            "org",
            SecretString::from(sim.keys().organization_key.clone()),
        )
    };
    tenant::add_as(
        &app.pool,
        &app.master,
        &app.settings,
        org,
        Some(&stripe),
        &Actor::cli(),
    )
    .await
    .expect("org key checked with Stripe-Context: its platform");
}

#[tokio::test]
async fn rekey_reseals_under_the_new_master_key_and_a_server_with_only_it_reads_balances() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 3,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(api_only).await;
    let key = sim.keys().platforms[0].key.clone();
    let spec = TenantSpec {
        webhook_secret: Some(SecretString::from(WEBHOOK_SECRET.to_owned())),
        ..sim_spec(&sim, "acme", &key)
    };
    tenant::add(&app.pool, &app.master, &app.settings, spec)
        .await
        .expect("added");
    let id = store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    let accounts = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(id, &sim, &accounts, None).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let old = app.master_base64.clone();
    let new = tally::crypto::MasterKey::generate_base64();
    let balance =
        |base: &str, n: usize| format!("{base}{BALANCE}?stripeid={}&max_age=0", accounts[n]);

    // Before the rekey, a server with only the new key cannot open the stored key.
    let port = free_port();
    let server = app.serve_process(port, &[("TALLY_MASTER_KEY", &new)]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let (status, body) = get_json(&app, &balance(&base, 0), &reader).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("tenant-credential-unusable")),
        "{body}"
    );
    stop(server);

    // During the rollout: the new key with the previous one beside it works.
    let port = free_port();
    let server = app.serve_process(
        port,
        &[
            ("TALLY_MASTER_KEY", &new),
            ("TALLY_MASTER_KEY_PREVIOUS", &old),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let (status, body) = get_json(&app, &balance(&base, 0), &reader).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["available"],
        sim.balance_of(&accounts[0]).expect("held")["available"]
    );
    stop(server);

    // A rekey that cannot open a secret changes nothing.
    let stranger = tally::crypto::MasterKey::generate_base64();
    let before: Vec<u8> = sqlx::query_scalar("SELECT key_ciphertext FROM tenants")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    let failed = run(&app, &["rekey"], &[("TALLY_MASTER_KEY", &stranger)]).await;
    assert!(!failed.status.success());
    assert!(
        text(&failed).contains("tenant 'acme': its Stripe key opens with neither"),
        "{}",
        text(&failed)
    );
    let after: Vec<u8> = sqlx::query_scalar("SELECT key_ciphertext FROM tenants")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(before, after, "nothing changed");

    let rekeyed = rekey(&app, &new, &old).await;
    assert!(rekeyed.status.success(), "{}", text(&rekeyed));
    assert!(
        text(&rekeyed).contains("re-sealed 2 secrets of 1 tenants under TALLY_MASTER_KEY (2 were sealed with TALLY_MASTER_KEY_PREVIOUS)"),
        "{}",
        text(&rekeyed)
    );
    let dump: String = sqlx::query_scalar("SELECT row_to_json(t)::text FROM tenants t")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert!(
        !dump.contains(&key) && !dump.contains(WEBHOOK_SECRET),
        "no plaintext stored"
    );

    // Afterwards a server with only the new key works, webhooks included.
    let port = free_port();
    let server = app.serve_process(port, &[("TALLY_MASTER_KEY", &new)]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let (status, body) = get_json(&app, &balance(&base, 1), &reader).await;
    assert_eq!(status, 200, "{body}");
    let webhook = sim
        .send_webhook(
            &format!("{base}/webhooks/stripe/acme"),
            WEBHOOK_SECRET,
            "balance.available",
            &accounts[2],
        )
        .await
        .expect("sent");
    assert!(
        webhook.is_success(),
        "the re-sealed webhook secret opens: {webhook}"
    );
    stop(server);
    // And the old key alone no longer opens anything.
    let old_only = tally::crypto::MasterKey::from_base64(&old).expect("old");
    assert!(
        old_only.open("acme", &after).is_ok(),
        "the failed run left the old seal"
    );
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT key_ciphertext FROM tenants")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert!(old_only.open("acme", &sealed).is_err());
}

/// Starts a refresh of every account (POST, as a person) and waits for it to end.
async fn refresh_all(app: &TestApp, base: &str, token: &str) -> Value {
    let response = app
        .client
        .post(format!("{base}{REFRESHES}?max_age=0"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get_json(app, &format!("{base}{location}"), token).await;
        if body["status"] != "running" {
            return body;
        }
        assert!(Instant::now() < deadline, "the refresh never ended: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn set_key_while_a_fan_out_runs_loses_nothing_and_the_next_fetches_use_the_new_key() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 60,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| settings.refresh.enabled = false).await;
    let old = sim.keys().platforms[0].key.clone();
    sim_tenant(&app, &sim, "acme", &old).await;
    // 60 accounts at 20/s: the fan-out takes about three seconds.
    tenant::update(
        &app.pool,
        &app.master,
        "acme",
        TenantUpdate {
            rate_limit: Some(20),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await
    .expect("updated");
    let admin = app.token(Role::Admin, Some("acme")).await;
    let new = sim.roll_key(&sim.keys().platforms[0].id).expect("rolled");

    let address = app.address.clone();
    let fan_out = {
        let (app_client, admin) = (app.client.clone(), admin.clone());
        let address = address.clone();
        tokio::spawn(async move {
            let response = app_client
                .get(format!("{address}{BALANCES}?max_age=0&wait=25"))
                .bearer_auth(admin)
                .send()
                .await
                .expect("sent");
            (
                response.status().as_u16(),
                response.json::<Value>().await.expect("json"),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(requests_with(&sim, &old) > 0, "the fan-out was running");
    let stripe = stripe_for(&app);
    tenant::set_key(
        &app.pool,
        &app.master,
        &app.settings,
        "acme",
        &SecretString::from(new.clone()),
        Some(&stripe),
        &Actor::cli(),
    )
    .await
    .expect("key set");
    let (status, body) = fan_out.await.expect("joined");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    assert_eq!(body["accounts"]["ok"], 60, "{body}");
    assert_eq!(body["accounts"]["failed"], 0, "{body}");
    assert!(
        requests_with(&sim, &new) > 1,
        "the fan-out moved to the new key"
    );

    // The old key expires (as a rolled key does): nothing uses it any more.
    sim.expire_key(&old);
    let old_uses = requests_with(&sim, &old);
    let done = refresh_all(&app, &address, &admin).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, totals) = get_json(&app, &format!("{address}{BALANCES}"), &admin).await;
    assert_eq!(totals["accounts"]["failed"], 0, "{totals}");
    assert_eq!(requests_with(&sim, &old), old_uses);
    assert_within_the_budget(&sim.stats(), 20);
}

#[tokio::test]
async fn set_key_reaches_a_second_running_server_within_two_seconds() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 3,
        ..SimConfig::default()
    })
    .await;
    // This process only sets up: the other one fetches.
    let app = spawn_app_with(api_only).await;
    let old = sim.keys().platforms[0].key.clone();
    sim_tenant(&app, &sim, "acme", &old).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let port = free_port();
    let server = app.serve_process(port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let url = format!("{base}{BALANCE}?stripeid={}&max_age=0", accounts[0]);
    let (status, body) = get_json(&app, &url, &reader).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        requests_with(&sim, &old) > 0,
        "the server's client holds the old key"
    );

    let new = sim.roll_key(&sim.keys().platforms[0].id).expect("rolled");
    let set = run(
        &app,
        &["tenant", "set-key", "acme", "--key-env", "NEW"],
        &[("NEW", &new)],
    )
    .await;
    assert!(set.status.success(), "{}", text(&set));
    assert!(text(&set).contains("running servers switch within 2 s"));
    let set_at = Instant::now();
    // The old key is gone at once: only a server that moved to the new one succeeds.
    sim.expire_key(&old);
    let switched_after = loop {
        let (status, body) = get_json(&app, &url, &reader).await;
        if status == 200 && requests_with(&sim, &new) > 0 {
            break set_at.elapsed();
        }
        assert!(
            set_at.elapsed() < Duration::from_secs(6),
            "never switched: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop(server);
    eprintln!("set-key reached the other server after {switched_after:?}");
    assert!(
        switched_after <= Duration::from_secs(2),
        "switched after {switched_after:?}"
    );
}

#[tokio::test]
async fn update_reaches_a_second_running_server_within_two_seconds() {
    update_reaches_a_second_running_server(&|_| {}).await;
}

/// `tally tenant update` and a `tally serve` process, both connected as `route` says.
pub(crate) async fn update_reaches_a_second_running_server(route: &Route<'_>) {
    // Two simulators with one seed hold the same keys and accounts: moving the
    // tenant's API base from one to the other shows which one a server asks.
    let config = || SimConfig {
        platforms: 1,
        accounts_per_platform: 3,
        ..SimConfig::default()
    };
    let (before, after) = (spawn_sim(config()).await, spawn_sim(config()).await);
    let app = spawn_app_with(|settings| {
        api_only(settings);
        route(settings);
    })
    .await;
    let key = before.keys().platforms[0].key.clone();
    sim_tenant(&app, &before, "acme", &key).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let account = before.keys().platforms[0].accounts[0].clone();
    let port = free_port();
    let server = app.serve_process(port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let url = format!("{base}{BALANCE}?stripeid={account}&max_age=0");
    let (status, body) = get_json(&app, &url, &reader).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(after.stats().total_requests, 0);

    let updated = run(
        &app,
        &["tenant", "update", "acme", "--api-base", &after.base_url()],
        &[],
    )
    .await;
    assert!(updated.status.success(), "{}", text(&updated));
    let updated_at = Instant::now();
    let moved_after = loop {
        let (status, body) = get_json(&app, &url, &reader).await;
        assert_eq!(status, 200, "{body}");
        if after
            .stats()
            .by_path
            .get("GET /v1/balance")
            .copied()
            .unwrap_or(0)
            > 0
        {
            break updated_at.elapsed();
        }
        assert!(
            updated_at.elapsed() < Duration::from_secs(6),
            "the server never moved to the new API base"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop(server);
    eprintln!("tenant update reached the other server after {moved_after:?}");
    assert!(
        moved_after <= Duration::from_secs(2),
        "moved after {moved_after:?}"
    );
}

#[tokio::test]
async fn update_replaces_the_lists_and_changes_the_rate_the_client_uses() {
    let app = spawn_app_with(api_only).await;
    let org = TenantSpec {
        platforms: vec!["acct_1PlatformA".into(), "acct_1PlatformB".into()],
        accounts: vec!["acct_1Standalone".into()],
        rate_limit: Some(10),
        ..TenantSpec::new(
            "org",
            SecretString::from("sk_org_test_51OrgKey0002".to_owned()),
        )
    };
    tenant::add(&app.pool, &app.master, &app.settings, org)
        .await
        .expect("added");
    let stripe = stripe_for(&app);
    let row = store::tenants::find_by_slug(&app.pool, "org")
        .await
        .expect("query")
        .expect("tenant");
    assert_eq!(
        stripe.client_for(&row).expect("client").configured_rate(),
        10
    );

    let updated = run(
        &app,
        &[
            "tenant",
            "update",
            "org",
            "--platform",
            "acct_1PlatformC",
            "--rate-limit",
            "7",
            "--api-version",
            "2025-09-30.clover",
        ],
        &[],
    )
    .await;
    assert!(updated.status.success(), "{}", text(&updated));
    let row = store::tenants::find_by_slug(&app.pool, "org")
        .await
        .expect("query")
        .expect("tenant");
    assert_eq!(
        row.platform_ids,
        ["acct_1PlatformC"],
        "replaced, not appended"
    );
    assert_eq!(row.org_account_ids, ["acct_1Standalone"], "not given: kept");
    assert_eq!(
        (row.rate_limit, row.api_version.as_str()),
        (Some(7), "2025-09-30.clover")
    );
    assert_eq!(
        stripe.client_for(&row).expect("client").configured_rate(),
        7,
        "the newer row rebuilds the client"
    );

    // --clear-accounts empties a list no --account flag can.
    let cleared = run(&app, &["tenant", "update", "org", "--clear-accounts"], &[]).await;
    assert!(cleared.status.success(), "{}", text(&cleared));
    let row = store::tenants::find_by_slug(&app.pool, "org")
        .await
        .expect("query")
        .expect("tenant");
    assert!(row.org_account_ids.is_empty(), "{:?}", row.org_account_ids);
    assert_eq!(row.platform_ids, ["acct_1PlatformC"], "not given: kept");
    let both = run(
        &app,
        &[
            "tenant",
            "update",
            "org",
            "--clear-platforms",
            "--platform",
            "acct_1X",
        ],
        &[],
    )
    .await;
    assert!(
        !both.status.success(),
        "clearing and replacing at once is refused"
    );

    let nothing = run(&app, &["tenant", "update", "org"], &[]).await;
    assert!(
        text(&nothing).contains("nothing to update"),
        "{}",
        text(&nothing)
    );
    let bad = run(&app, &["tenant", "update", "org", "--rate-limit", "0"], &[]).await;
    assert!(
        text(&bad).contains("--rate-limit must be at least 1"),
        "{}",
        text(&bad)
    );
    app.add_tenant("acme").await;
    let platform = run(
        &app,
        &["tenant", "update", "acme", "--platform", "acct_1P"],
        &[],
    )
    .await;
    assert!(!platform.status.success());
    assert!(
        text(&platform).contains("organization key's platforms"),
        "{}",
        text(&platform)
    );
    let kind = tenant::set_key(
        &app.pool,
        &app.master,
        &app.settings,
        "acme",
        &SecretString::from("sk_org_test_51Other".to_owned()),
        None,
        &Actor::cli(),
    )
    .await
    .expect_err("kind change");
    assert!(matches!(kind, TenantError::KindChange { .. }), "{kind}");
    let unknown = run(
        &app,
        &["tenant", "update", "nope", "--rate-limit", "3"],
        &[],
    )
    .await;
    assert!(
        text(&unknown).contains("no tenant named 'nope'"),
        "{}",
        text(&unknown)
    );
}

#[tokio::test]
async fn a_removed_tenant_refuses_its_tokens_keeps_its_data_and_is_skipped() {
    let app = spawn_app_with(api_only).await;
    let acme = app.add_tenant("acme").await;
    app.store_accounts(
        acme,
        &[crate::helpers::account_object("acct_1A", 1, Some("o"))],
    )
    .await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;
    let listing = "/api/administrator/connect/stripe-accounts";
    let (status, _) = app.get_json(listing, &reader).await;
    assert_eq!(status, 200);

    let removed = run(&app, &["tenant", "remove", "acme"], &[]).await;
    assert!(removed.status.success(), "{}", text(&removed));
    let removed_at = Instant::now();
    let refused_after = loop {
        let (status, body) = app.get_json(listing, &reader).await;
        if status == 401 {
            assert_eq!(body["code"], "tenant-removed", "{body}");
            break removed_at.elapsed();
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(5),
            "still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused_after <= Duration::from_secs(2), "{refused_after:?}");
    let (status, body) = app
        .get_json(&format!("{listing}?tenant=acme"), &owner)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("tenant-removed")),
        "{body}"
    );

    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_accounts WHERE tenant_id = $1")
        .bind(acme)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(kept, 1, "its data stays");
    assert!(
        store::tenants::ids(&app.pool)
            .await
            .expect("ids")
            .is_empty(),
        "the refresher skips it"
    );
    let sync = run(&app, &["sync", "acme"], &[]).await;
    assert!(!sync.status.success());
    assert!(text(&sync).contains("was removed"), "{}", text(&sync));
    let listed = run(&app, &["tenant", "list", "--format", "json"], &[]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed[0]["status"], "removed");
    let set_key = run(
        &app,
        &["tenant", "set-key", "acme", "--key-env", "K", "--no-verify"],
        &[("K", PLATFORM_KEY)],
    )
    .await;
    assert!(text(&set_key).contains("was removed"), "{}", text(&set_key));
    let again = run(&app, &["tenant", "remove", "acme"], &[]).await;
    assert!(text(&again).contains("already removed"), "{}", text(&again));
}

async fn owned_rows(app: &TestApp, tenant_id: i64) -> i64 {
    let mut total = 0;
    for table in [
        "stripe_accounts",
        "api_tokens",
        "balance_snapshots",
        "latest_balances",
        "tenant_balance_totals",
        "tenant_account_counts",
        "sync_runs",
    ] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        ))
        .bind(tenant_id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
        total += n;
    }
    total
}

#[tokio::test]
async fn purge_deletes_the_tenant_and_all_it_owns_and_leaves_the_others_alone() {
    let sim = spawn_sim(SimConfig {
        platforms: 2,
        accounts_per_platform: 3,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|settings| settings.refresh.enabled = false).await;
    let acme = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let other = app.add_sim_platform_tenant("other", &sim, 1).await;
    for slug in ["acme", "other"] {
        let synced = run(&app, &["sync", slug], &[]).await;
        assert!(synced.status.success(), "{}", text(&synced));
        let admin = app.token(Role::Admin, Some(slug)).await;
        let (status, body) = app
            .get_json(&format!("{BALANCES}?max_age=0&wait=20"), &admin)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let before_other = owned_rows(&app, other).await;
    assert!(owned_rows(&app, acme).await > 0);

    let unconfirmed = run(&app, &["tenant", "remove", "acme", "--purge"], &[]).await;
    assert!(!unconfirmed.status.success());
    assert!(
        text(&unconfirmed).contains("add --yes to confirm"),
        "{}",
        text(&unconfirmed)
    );
    assert!(owned_rows(&app, acme).await > 0, "refused: nothing deleted");

    let purged = tenant::remove(&app.pool, "acme", true, true, &Actor::cli())
        .await
        .expect("purged");
    assert_eq!(
        purged,
        Removal::Purged {
            accounts: 3,
            tokens: 1
        }
    );
    assert_eq!(owned_rows(&app, acme).await, 0);
    assert!(store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .is_none());
    assert_eq!(
        owned_rows(&app, other).await,
        before_other,
        "the other tenant is untouched"
    );
    let audit = run(
        &app,
        &["audit", "--tenant", "acme", "--format", "json"],
        &[],
    )
    .await;
    let events: Value = serde_json::from_slice(&audit.stdout).expect("json");
    let actions: Vec<&str> = events
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions.first(), Some(&"tenant.purge"), "{actions:?}");
    assert!(
        actions.contains(&"tenant.add"),
        "the purged tenant's history survives: {actions:?}"
    );
}

/// Every event of the audit log, following `Link: rel="next"` pages of `limit`.
async fn all_audit_pages(app: &TestApp, owner: &str, limit: usize) -> Vec<Value> {
    walk_list(app, &format!("{AUDIT}?limit={limit}"), owner, limit).await
}

#[tokio::test]
async fn the_audit_log_records_every_kind_of_change_with_who_did_it_and_no_secret() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let db = TestDb::create().await;
    let master = tally::crypto::MasterKey::generate_base64();
    let app = spawn_app_on(db, master.clone(), |settings| {
        settings.refresh.enabled = false
    })
    .await;
    let key = sim.keys().platforms[0].key.clone();
    let base = sim.base_url();
    let added = run(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "K",
            "--api-base",
            &base,
            "--webhook-secret-env",
            "W",
        ],
        &[("K", &key), ("W", WEBHOOK_SECRET), ("USER", "ops-alice")],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added));
    let updated = run(
        &app,
        &[
            "tenant",
            "update",
            "acme",
            "--rate-limit",
            "50",
            "--webhook-secret-env",
            "W",
        ],
        &[
            ("W", "whsec_rotated_secret_value_42"),
            ("USER", "ops-alice"),
        ],
    )
    .await;
    assert!(updated.status.success(), "{}", text(&updated));
    let new_key = sim.roll_key(&sim.keys().platforms[0].id).expect("rolled");
    let set = run(
        &app,
        &["tenant", "set-key", "acme", "--key-env", "K"],
        &[("K", &new_key)],
    )
    .await;
    assert!(set.status.success(), "{}", text(&set));
    let synced = run(&app, &["sync", "acme"], &[("USER", "ops-alice")]).await;
    assert!(synced.status.success(), "{}", text(&synced));

    // Over HTTP, as an owner token with a name.
    let owner_cli = run(
        &app,
        &["token", "create", "--role", "owner", "--name", "ops-bot"],
        &[],
    )
    .await;
    assert!(owner_cli.status.success());
    let owner = String::from_utf8_lossy(&owner_cli.stdout).trim().to_owned();
    let created: Value = app
        .client
        .post(format!("{}/api/administrator/tokens", app.address))
        .bearer_auth(&owner)
        .json(&serde_json::json!({"role": "admin", "tenant": "acme", "name": "finance-bot"}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let admin = created["token"].as_str().expect("token").to_owned();
    let sync = app
        .client
        .post(format!(
            "{}/api/administrator/connect/sync?tenant=acme",
            app.address
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent");
    assert!(sync.status().is_success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refresh = refresh_all(&app, &app.address, &admin).await;
    assert_eq!(refresh["status"], "succeeded", "{refresh}");
    let revoke = app
        .client
        .delete(format!(
            "{}/api/administrator/tokens/{}",
            app.address, created["id"]
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent");
    assert_eq!(revoke.status(), 200);
    let cli_token = run(
        &app,
        &["token", "create", "--role", "reader", "--tenant", "acme"],
        &[],
    )
    .await;
    let reader = String::from_utf8_lossy(&cli_token.stdout).trim().to_owned();
    let revoked = run(&app, &["token", "revoke", "3"], &[]).await;
    assert!(revoked.status.success(), "{}", text(&revoked));
    let new_master = tally::crypto::MasterKey::generate_base64();
    let rekeyed = rekey(&app, &new_master, &master).await;
    assert!(rekeyed.status.success(), "{}", text(&rekeyed));
    let gone = run(&app, &["tenant", "remove", "acme"], &[]).await;
    assert!(gone.status.success());
    let purged = run(&app, &["tenant", "remove", "acme", "--purge", "--yes"], &[]).await;
    assert!(purged.status.success(), "{}", text(&purged));

    let events = all_audit_pages(&app, &owner, 3).await;
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, each once: {ids:?}"
    );
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {events:#?}"))
            .clone()
    };
    for action in [
        "tenant.add",
        "tenant.update",
        "tenant.set-key",
        "token.create",
        "token.revoke",
        "sync.start",
        "refresh.start",
        "rekey",
        "tenant.remove",
        "tenant.purge",
    ] {
        let event = find(action);
        assert!(event["at"].is_string(), "{event}");
    }
    let add = find("tenant.add");
    assert_eq!(
        add["actor"],
        serde_json::json!({"type": "cli", "user": "ops-alice"})
    );
    assert_eq!(add["tenant"], "acme");
    assert_eq!(add["details"]["verified"], true);
    let update = find("tenant.update");
    assert_eq!(
        update["details"]["changed"],
        serde_json::json!(["rateLimit", "webhookSecret"])
    );
    let cli_sync = events
        .iter()
        .find(|e| e["action"] == "sync.start" && e["actor"]["type"] == "cli")
        .expect("tally sync is recorded");
    assert_eq!(cli_sync["actor"]["user"], "ops-alice");
    assert_eq!(cli_sync["tenant"], "acme");
    let sync = find("sync.start");
    assert_eq!(sync["actor"]["type"], "token");
    assert_eq!(sync["actor"]["name"], "ops-bot");
    let refresh = find("refresh.start");
    assert_eq!(refresh["actor"]["name"], "finance-bot");
    assert_eq!(refresh["actor"]["tokenId"], created["id"]);
    let http_create = events
        .iter()
        .find(|e| e["action"] == "token.create" && e["actor"]["type"] == "token")
        .expect("token created over HTTP");
    assert_eq!(http_create["details"]["name"], "finance-bot");
    assert_eq!(find("rekey")["details"]["secrets"], 2);

    // Nothing secret anywhere in it: not in the API's answer, not in the table.
    let dump: String = sqlx::query_scalar(
        "SELECT COALESCE(string_agg(row_to_json(a)::text, ' '), '') FROM audit_events a",
    )
    .fetch_one(&app.pool)
    .await
    .expect("dump");
    let listed = serde_json::to_string(&events).expect("json");
    for secret in [
        key.as_str(),
        new_key.as_str(),
        WEBHOOK_SECRET,
        "whsec_rotated_secret_value_42",
        owner.as_str(),
        admin.as_str(),
        reader.as_str(),
        master.as_str(),
        new_master.as_str(),
    ] {
        assert!(!dump.contains(secret), "the audit table holds a secret");
        assert!(!listed.contains(secret), "the audit listing holds a secret");
    }

    // Filters and refusals.
    let (status, body) = app
        .get_json(&format!("{AUDIT}?tenant=acme&limit=100"), &owner)
        .await;
    assert_eq!(status, 200);
    assert!(body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|e| e["tenant"] == "acme"));
    let (_, body) = app
        .get_json(&format!("{AUDIT}?since=2999-01-01"), &owner)
        .await;
    assert_eq!(body["data"], serde_json::json!([]));
    for (query, code) in [
        ("limit=0", "invalid-limit"),
        ("limit=101", "invalid-limit"),
        ("starting_after=x", "invalid-starting-after"),
        ("starting_after=999999", "invalid-starting-after"),
        ("since=yesterday", "invalid-since"),
        ("tenant=Not%20A%20Slug", "invalid-tenant"),
    ] {
        let (status, body) = app.get_json(&format!("{AUDIT}?{query}"), &owner).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
    let cli = run(
        &app,
        &["audit", "--since", "2999-01-01", "--format", "json"],
        &[],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "[]");
    let table = run(&app, &["audit", "--tenant", "acme"], &[]).await;
    assert!(text(&table).contains("cli (ops-alice)"), "{}", text(&table));
    let bad = run(&app, &["audit", "--since", "soon"], &[]).await;
    assert!(!bad.status.success());

    // The CLI pages too: --limit, and --starting-after the last id it names.
    let all = run(&app, &["audit", "--format", "json"], &[]).await;
    let all: Vec<Value> = serde_json::from_slice(&all.stdout).expect("json");
    assert!(all.len() >= 3, "{all:?}");
    let mut walked = Vec::new();
    let mut args = vec!["audit".to_owned(), "--limit".into(), "2".into()];
    loop {
        let mut page_args = args.clone();
        page_args.extend(["--format".into(), "json".into()]);
        let argv: Vec<&str> = page_args.iter().map(String::as_str).collect();
        let page = run(&app, &argv, &[]).await;
        assert!(page.status.success(), "{}", text(&page));
        let events: Vec<Value> = serde_json::from_slice(&page.stdout).expect("json");
        assert!(events.len() <= 2);
        walked.extend(events);
        let note = String::from_utf8_lossy(&page.stderr).to_string();
        let Some(next) = note.split("--starting-after ").nth(1) else {
            break;
        };
        let id = next.split_whitespace().next().expect("an id").to_owned();
        args = vec![
            "audit".into(),
            "--limit".into(),
            "2".into(),
            "--starting-after".into(),
            id,
        ];
    }
    assert_eq!(
        walked, all,
        "the pages are the whole log, newest first, once each"
    );
}

#[tokio::test]
async fn only_owners_read_the_audit_log() {
    let app = spawn_app_with(api_only).await;
    app.add_tenant("acme").await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let (status, body) = app.get_json(AUDIT, &admin).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = app.get_json(AUDIT, "tly_nonsense").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn removing_a_tenant_ends_its_running_work_and_nothing_starts_for_it_after() {
    let app = spawn_app_with(api_only).await;
    let acme = app.add_tenant("acme").await;
    app.store_accounts(
        acme,
        &[crate::helpers::account_object("acct_1Rm", 1, Some("o"))],
    )
    .await;
    // What a request read before the removal, and still holds after it.
    let stale = store::tenants::find_by_id(&app.pool, acme)
        .await
        .expect("query")
        .expect("tenant");
    let scope = store::refreshes::RefreshScope::Tenant;
    let cutoff = chrono::Utc::now();
    let (running, _) =
        store::refreshes::start_or_join(&app.pool, acme, &scope, cutoff, RefreshTrigger::Person, 1)
            .await
            .expect("query")
            .expect("started");
    let options = tally::sync::SyncOptions::from_settings(&app.settings);
    let sync = match tally::sync::claim(&app.pool, acme, &options)
        .await
        .expect("claim")
    {
        store::sync_runs::Claim::Started(run) => run,
        other => panic!("{other:?}"),
    };

    tenant::remove(&app.pool, "acme", false, false, &Actor::cli())
        .await
        .expect("removed");

    // What was running ends, saying why, instead of staying `running` for good.
    let refresh = store::refreshes::get(&app.pool, acme, running.id)
        .await
        .expect("query")
        .expect("the refresh");
    assert_eq!(refresh.status, RefreshStatus::Failed);
    assert!(
        refresh
            .error
            .as_deref()
            .is_some_and(|e| e.contains("removed")),
        "{refresh:?}"
    );
    assert!(refresh.finished_at.is_some());
    let run = store::sync_runs::get(&app.pool, acme, sync.id)
        .await
        .expect("query")
        .expect("the run");
    assert_eq!(run.status, "failed");
    assert!(
        run.error.as_deref().is_some_and(|e| e.contains("removed")),
        "{run:?}"
    );

    // Nothing starts for it, however it is asked: the store, the use cases (with the
    // tenant as read before the removal), the API.
    assert!(store::refreshes::start_or_join(
        &app.pool,
        acme,
        &scope,
        cutoff,
        RefreshTrigger::Poll,
        1
    )
    .await
    .expect("query")
    .is_none());
    assert!(matches!(
        tally::sync::claim(&app.pool, acme, &options).await,
        Err(tally::sync::SyncError::TenantRemoved)
    ));
    let balances = tally::balances::Balances {
        pool: app.pool.clone(),
        stripe: Arc::new(stripe_for(&app)),
        refresher: None,
        interval: Duration::from_secs(300),
        max_silence: Duration::from_secs(300),
    };
    let started = balances
        .start_refresh(&stale, scope.clone(), Duration::ZERO, &Actor::cli())
        .await;
    assert!(
        matches!(started, Err(tally::balances::BalanceError::TenantRemoved)),
        "{started:?}"
    );
    let fresh = tally::balances::Fresh::max_age(Duration::ZERO, Duration::ZERO);
    let polled = balances.aggregate(&stale, None, None, Some(fresh)).await;
    assert!(
        matches!(polled, Err(tally::balances::BalanceError::TenantRemoved)),
        "{polled:?}"
    );
    let owner = app.token(Role::Owner, None).await;
    for path in [
        format!("{REFRESHES}?tenant=acme"),
        "/api/administrator/connect/sync?tenant=acme".to_owned(),
    ] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(&owner)
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("tenant-removed")),
            "{path}"
        );
    }
    let running: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM balance_refreshes WHERE status = 'running')
              + (SELECT count(*) FROM sync_runs WHERE status = 'running')",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(running, 0);
}
