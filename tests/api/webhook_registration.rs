//! `tally tenant webhooks` (issue 15, "Follow what changes"): the tenant's Connect
//! endpoint registered at Stripe (one per platform for an organization key), its signing
//! secret stored sealed and accepted by `/webhooks/stripe/{tenant}`, re-sealed by
//! `tally rekey`, deleted with `--remove`, and never shown.
//!
//! Tests whose name ends in `_at_stripe` talk to the simulator's `/v1/webhook_endpoints`
//! (and its deliveries); the others store endpoints directly.

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tally::audit::Actor;
use tally::commands::tenant::{self, TenantError};
use tally::commands::tenant_webhooks::{self, Outcome, Registration, ReplaceReason, WebhookError};
use tally::sim::{SimConfig, SimHandle};
use tally::store;
use tally::store::tenants::Tenant;

use crate::helpers::{free_port, spawn_app, Captured, TestApp};
use crate::sync::{add_org_tenant, add_platform_tenant, spawn_sim, stripe_tenants, sync_ok};
use crate::tenant_lifecycle::{rekey, run, stop, text};
use crate::webhooks::{assert_refused, event, now, post_event};

const HAND_SET: &str = "whsec_test_hand_set_0123456789abcdef";
const STRANGER: &str = "whsec_test_never_registered_0123456";

fn hook_url(app: &TestApp, slug: &str) -> String {
    format!("{}/webhooks/stripe/{slug}", app.address)
}

async fn register(app: &TestApp, slug: &str) -> Result<Registration, WebhookError> {
    register_at(app, slug, &hook_url(app, slug)).await
}

async fn register_at(app: &TestApp, slug: &str, url: &str) -> Result<Registration, WebhookError> {
    let stripe = stripe_tenants(app, 2);
    tenant_webhooks::register(&app.pool, &stripe, slug, url, &[], &Actor::cli()).await
}

async fn remove(app: &TestApp, slug: &str) -> Registration {
    let stripe = stripe_tenants(app, 2);
    tenant_webhooks::remove(&app.pool, &stripe, slug, &Actor::cli())
        .await
        .expect("removed")
}

async fn stored(app: &TestApp, tenant: &Tenant) -> Vec<store::webhook_endpoints::WebhookEndpoint> {
    store::webhook_endpoints::list(&app.pool, tenant.id)
        .await
        .expect("query")
}

/// The signing secrets of the tenant's registered endpoints, opened, by platform.
async fn registered_secrets(app: &TestApp, tenant: &Tenant) -> Vec<(String, String)> {
    stored(app, tenant)
        .await
        .into_iter()
        .map(|row| {
            let secret = app
                .master
                .open(&tenant.slug, &row.secret_ciphertext)
                .expect("sealed with the master key");
            (row.platform_id, secret.expose_secret().to_owned())
        })
        .collect()
}

/// Stores an endpoint as `tally tenant webhooks` does, without asking Stripe.
async fn store_endpoint(app: &TestApp, tenant: &Tenant, platform: &str, id: &str, secret: &str) {
    let sealed = app.master.seal(&tenant.slug, secret);
    let row = store::webhook_endpoints::NewWebhookEndpoint {
        platform_id: platform,
        endpoint_id: id,
        url: &hook_url(app, &tenant.slug),
        secret_ciphertext: &sealed,
    };
    store::webhook_endpoints::upsert(&app.pool, tenant.id, &row)
        .await
        .expect("stored");
}

/// The endpoints the simulator holds for `key`, acting as `context` (the org key).
async fn sim_endpoints(
    app: &TestApp,
    sim: &SimHandle,
    key: &str,
    context: Option<&str>,
) -> Vec<Value> {
    let mut request = app
        .client
        .get(format!("{}/v1/webhook_endpoints?limit=100", sim.base_url()))
        .bearer_auth(key)
        .header("Stripe-Version", &app.settings.stripe.api_version);
    if let Some(context) = context {
        request = request.header("Stripe-Context", context);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["data"].as_array().expect("a list").clone()
}

/// Creates an endpoint at the simulator behind tally's back; returns its id.
async fn sim_creates_endpoint(app: &TestApp, sim: &SimHandle, key: &str, url: &str) -> String {
    let response = app
        .client
        .post(format!("{}/v1/webhook_endpoints", sim.base_url()))
        .bearer_auth(key)
        .header("Stripe-Version", &app.settings.stripe.api_version)
        .form(&[("url", url), ("enabled_events[]", "*"), ("connect", "true")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("an id").to_owned()
}

async fn audit_details(app: &TestApp, action: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT details FROM audit_events WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .expect("audit")
}

/// An event about an account the tenant does not list: verified, then ignored.
async fn post_signed(app: &TestApp, slug: &str, secret: &str) -> (u16, Value) {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let payload = event(
        &id,
        "payout.paid",
        "acct_1NotListedHere",
        json!({"id": "po_1"}),
    );
    post_event(app, slug, secret, &payload, now()).await
}

/// `tally tenant update <slug> --freshness events`, which needs an endpoint.
async fn events_mode(app: &TestApp, slug: &str) {
    let change = tenant::TenantUpdate {
        freshness: Some(tally::freshness::FreshnessMode::Events),
        ..Default::default()
    };
    tenant::update(&app.pool, &app.master, slug, change, &Actor::cli())
        .await
        .expect("events mode: an endpoint is registered");
}

fn outcomes(registration: &Registration) -> Vec<(Option<&str>, Outcome)> {
    registration
        .endpoints
        .iter()
        .map(|e| (e.platform.as_deref(), e.outcome))
        .collect()
}

#[tokio::test]
async fn a_platform_tenant_registers_once_and_a_second_run_changes_nothing_at_stripe() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 2, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let key = sim.keys().platforms[0].key.clone();

    let first = register(&app, "acme").await.expect("registered");
    assert_eq!(outcomes(&first), vec![(None, Outcome::Created)]);
    let rows = stored(&app, &tenant).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].platform_id.as_str(), rows[0].endpoint_id.as_str()),
        ("", first.endpoints[0].endpoint_id.as_str())
    );
    assert_eq!(rows[0].url, hook_url(&app, "acme"));
    let at_stripe = sim_endpoints(&app, &sim, &key, None).await;
    assert_eq!(at_stripe.len(), 1, "{at_stripe:?}");
    assert_eq!(at_stripe[0]["id"], rows[0].endpoint_id.as_str());
    assert_eq!(at_stripe[0]["url"], hook_url(&app, "acme"));
    assert_eq!(at_stripe[0]["enabled_events"], json!(["*"]));
    assert_eq!(at_stripe[0]["description"], "tally");
    let secrets = registered_secrets(&app, &tenant).await;
    assert!(secrets[0].1.starts_with("whsec_"));
    assert!(
        !String::from_utf8_lossy(&rows[0].secret_ciphertext).contains("whsec_"),
        "stored sealed"
    );
    let summary = tenant_webhooks::render(&first);
    assert!(
        summary.contains(&rows[0].endpoint_id) && summary.contains("created"),
        "{summary}"
    );
    assert!(
        summary.contains("tally tenant update acme --freshness events"),
        "{summary}"
    );

    let second = register(&app, "acme").await.expect("registered again");
    assert_eq!(outcomes(&second), vec![(None, Outcome::Found)]);
    assert_eq!(second.endpoints[0].endpoint_id, rows[0].endpoint_id);
    assert!(second.endpoints[0].deleted.is_empty());
    assert!(tenant_webhooks::render(&second).contains("already registered; nothing changed"));
    assert_eq!(
        sim_endpoints(&app, &sim, &key, None).await,
        at_stripe,
        "nothing changed at Stripe"
    );
    assert_eq!(
        registered_secrets(&app, &tenant).await,
        secrets,
        "nor in tally"
    );
    let audited = audit_details(&app, "tenant.webhooks").await;
    assert_eq!(audited.len(), 1, "only the change is audited: {audited:?}");
    assert_eq!(audited[0]["url"], hook_url(&app, "acme"));
    assert_eq!(
        audited[0]["endpoints"][0]["endpoint"],
        rows[0].endpoint_id.as_str()
    );
    assert_eq!(audited[0]["endpoints"][0]["outcome"], "created");
    assert!(!audited[0].to_string().contains(&secrets[0].1));

    // The secret Stripe gave is the one events are verified with.
    let (status, body) = post_signed(&app, "acme", &secrets[0].1).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_signed(&app, "acme", STRANGER).await;
    assert_refused(status, &body);
    // With events mode allowed now.
    events_mode(&app, "acme").await;
}

#[tokio::test]
async fn an_org_tenant_registers_one_endpoint_per_platform_with_stripe_context_at_stripe() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 2, 1).await;
    let tenant = add_org_tenant(&app, &sim, "org", None).await;
    let keys = sim.keys().clone();
    let platforms: Vec<&str> = keys.platforms.iter().map(|p| p.id.as_str()).collect();

    let registration = register(&app, "org").await.expect("registered");
    assert_eq!(
        outcomes(&registration),
        vec![
            (Some(platforms[0]), Outcome::Created),
            (Some(platforms[1]), Outcome::Created)
        ]
    );
    let rows = stored(&app, &tenant).await;
    assert_eq!(rows.len(), 2);
    for (i, platform) in platforms.iter().enumerate() {
        // Each belongs to its platform: the org key sees it with Stripe-Context: acct_P,
        // and so does the platform's own key.
        let via_org = sim_endpoints(&app, &sim, &keys.organization_key, Some(platform)).await;
        let via_platform = sim_endpoints(&app, &sim, &keys.platforms[i].key, None).await;
        assert_eq!(via_org.len(), 1, "{platform}: {via_org:?}");
        assert_eq!(via_org, via_platform);
        let row = rows
            .iter()
            .find(|r| r.platform_id == *platform)
            .expect("stored");
        assert_eq!(via_org[0]["id"], row.endpoint_id.as_str());
        assert_eq!(registration.endpoints[i].endpoint_id, row.endpoint_id);
    }
    let stats = sim.stats();
    assert_eq!(stats.header_violations, 0, "{stats:?}");
    assert_eq!(
        stats.by_path.get("POST /v1/webhook_endpoints"),
        Some(&2),
        "{stats:?}"
    );
    let secrets = registered_secrets(&app, &tenant).await;
    assert_ne!(secrets[0].1, secrets[1].1, "one secret per endpoint");
    for (_, secret) in &secrets {
        let (status, body) = post_signed(&app, "org", secret).await;
        assert_eq!(status, 200, "{body}");
    }
    let audited = audit_details(&app, "tenant.webhooks").await;
    assert_eq!(audited[0]["endpoints"][1]["platform"], platforms[1]);

    // A platform dropped from the tenant's list loses its endpoint on the next run.
    let change = tenant::TenantUpdate {
        platforms: Some(vec![platforms[0].to_owned()]),
        ..Default::default()
    };
    tenant::update(&app.pool, &app.master, "org", change, &Actor::cli())
        .await
        .expect("updated");
    let again = register(&app, "org").await.expect("registered again");
    assert_eq!(
        outcomes(&again),
        vec![
            (Some(platforms[0]), Outcome::Found),
            (Some(platforms[1]), Outcome::Removed)
        ]
    );
    assert!(
        sim_endpoints(&app, &sim, &keys.organization_key, Some(platforms[1]))
            .await
            .is_empty()
    );
    assert_eq!(stored(&app, &tenant).await.len(), 1);
}

#[tokio::test]
async fn an_endpoint_at_the_url_whose_secret_tally_lacks_is_replaced_at_stripe() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 1, 0).await;
    add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let key = sim.keys().platforms[0].key.clone();
    let by_hand = sim_creates_endpoint(&app, &sim, &key, &hook_url(&app, "acme")).await;
    let elsewhere = sim_creates_endpoint(&app, &sim, &key, "https://other.example/hooks").await;

    let registration = register(&app, "acme").await.expect("registered");
    assert_eq!(outcomes(&registration), vec![(None, Outcome::Created)]);
    let report = &registration.endpoints[0];
    assert_ne!(report.endpoint_id, by_hand);
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(report.deleted[0].endpoint_id, by_hand);
    assert_eq!(report.deleted[0].reason, ReplaceReason::SecretUnknown);
    let summary = tenant_webhooks::render(&registration);
    assert!(
        summary.contains(&format!("deleted {by_hand} at Stripe")),
        "{summary}"
    );
    let mut left: Vec<String> = sim_endpoints(&app, &sim, &key, None)
        .await
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    left.sort();
    let mut expected = vec![report.endpoint_id.clone(), elsewhere];
    expected.sort();
    assert_eq!(left, expected, "only the one at this URL went");

    // Moving to another URL replaces tally's own endpoint.
    let moved = "http://127.0.0.1:9/webhooks/stripe/acme";
    let registration = register_at(&app, "acme", moved).await.expect("moved");
    let report = &registration.endpoints[0];
    assert_eq!(report.outcome, Outcome::Created);
    assert!(
        matches!(&report.deleted[0].reason, ReplaceReason::Moved { from } if *from == hook_url(&app, "acme"))
    );
}

#[tokio::test]
async fn events_the_simulator_delivers_to_the_registered_endpoints_are_accepted_at_stripe() {
    let sim = tally::sim::spawn(SimConfig {
        platforms: 2,
        accounts_per_platform: 2,
        org_accounts: 0,
        // A ledger, so changes reach the endpoints, with next to no random activity.
        activity_per_hour: 0.000_1,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let app = spawn_app().await;
    let tenant = add_org_tenant(&app, &sim, "org", None).await;
    sync_ok(&app, &tenant).await;
    register(&app, "org").await.expect("registered");

    // One change under each platform: each arrives through that platform's endpoint,
    // signed with its own secret.
    for platform in &sim.keys().platforms {
        sim.move_money(&platform.accounts[0]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let received: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE tenant_id = $1")
                .bind(tenant.id)
                .fetch_one(&app.pool)
                .await
                .expect("count");
        if received >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{received} events accepted; the simulator's deliveries: {:?}",
            sim.stats()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn remove_deletes_the_endpoints_in_tally_and_at_stripe() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 1, 0).await;
    let tenant = add_org_tenant(&app, &sim, "org", Some(HAND_SET)).await;
    let keys = sim.keys().clone();
    register(&app, "org").await.expect("registered");
    let secrets = registered_secrets(&app, &tenant).await;

    let removed = remove(&app, "org").await;
    let mut outcomes = outcomes(&removed);
    outcomes.sort();
    let mut expected: Vec<(Option<&str>, Outcome)> = keys
        .platforms
        .iter()
        .map(|p| (Some(p.id.as_str()), Outcome::Removed))
        .collect();
    expected.sort();
    assert_eq!(outcomes, expected);
    assert!(stored(&app, &tenant).await.is_empty());
    for platform in &keys.platforms {
        assert!(
            sim_endpoints(&app, &sim, &keys.organization_key, Some(&platform.id))
                .await
                .is_empty()
        );
    }
    for (_, secret) in &secrets {
        let (status, body) = post_signed(&app, "org", secret).await;
        assert_refused(status, &body);
    }
    let (status, body) = post_signed(&app, "org", HAND_SET).await;
    assert_eq!(status, 200, "the hand-set secret stays: {body}");
    let audited = audit_details(&app, "tenant.webhooks").await;
    assert_eq!(audited.len(), 2);
    assert_eq!(audited[1]["removed"], true);
    assert_eq!(audited[1]["endpoints"][0]["outcome"], "removed");

    let again = remove(&app, "org").await;
    assert!(again.endpoints.is_empty());
    assert!(tenant_webhooks::render(&again).contains("nothing removed"));
}

/// The current-thread runtime of `#[tokio::test]` runs the server, the simulator and
/// the test on this thread, so a thread-local subscriber sees all their logs.
#[tokio::test]
async fn the_secret_never_appears_in_the_clis_output_nor_in_a_log_line_at_stripe() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let sim = spawn_sim(2, 1, 0).await;
    let org = add_org_tenant(&app, &sim, "org", None).await;
    let acme = add_platform_tenant(&app, &sim, "acme", 0, None).await;

    let env = [("RUST_LOG", "trace")];
    let url = hook_url(&app, "org");
    let first = run(&app, &["tenant", "webhooks", "org", "--url", &url], &env).await;
    assert!(first.status.success(), "{}", text(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    let rows = stored(&app, &org).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(
            stdout.contains(&format!(
                "platform {}: {} created",
                row.platform_id, row.endpoint_id
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("tally tenant update org --freshness events"),
        "{stdout}"
    );
    let second = run(&app, &["tenant", "webhooks", "org", "--url", &url], &env).await;
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        text(&second).contains("already registered; nothing changed"),
        "{}",
        text(&second)
    );
    // In process too: the library call logs nothing secret.
    register(&app, "acme").await.expect("registered");
    let (status, _) = post_signed(&app, "acme", &registered_secrets(&app, &acme).await[0].1).await;
    assert_eq!(status, 200);

    let listed = run(&app, &["tenant", "list", "--format", "json"], &env).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let tenants: Value = serde_json::from_slice(&listed.stdout).expect("json");
    let org_view = tenants
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["slug"] == "org")
        .expect("org");
    assert_eq!(
        (
            org_view["webhooks"].as_i64(),
            org_view["freshness"].as_str()
        ),
        (Some(2), Some("poll"))
    );
    let removed = run(&app, &["tenant", "webhooks", "org", "--remove"], &env).await;
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(
        text(&removed).contains("deleted at Stripe and in tally"),
        "{}",
        text(&removed)
    );

    let logs = captured.text();
    assert!(
        logs.contains("webhook"),
        "the capture works: {} bytes",
        logs.len()
    );
    let mut secrets: Vec<String> = registered_secrets(&app, &acme)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    for row in &rows {
        // Removed from tally now; opened from the copy read before.
        let secret = app
            .master
            .open("org", &row.secret_ciphertext)
            .expect("opens");
        secrets.push(secret.expose_secret().to_owned());
    }
    for secret in &secrets {
        for (what, output) in [
            ("first", &first),
            ("second", &second),
            ("list", &listed),
            ("remove", &removed),
        ] {
            assert!(
                !text(output).contains(secret.as_str()),
                "the CLI's {what} run printed a secret"
            );
        }
        assert!(
            !logs.contains(secret.as_str()),
            "a log line holds a signing secret"
        );
        // Nor any part long enough to matter.
        assert!(
            !logs.contains(&secret["whsec_".len()..]),
            "a log line holds a signing secret"
        );
    }
}

#[tokio::test]
async fn any_registered_secret_or_the_hand_set_one_verifies_and_nothing_else() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 1, 0).await;
    let org = add_org_tenant(&app, &sim, "org", Some(HAND_SET)).await;
    let bare = add_platform_tenant(&app, &sim, "bare", 0, None).await;
    let platforms: Vec<String> = sim.keys().platforms.iter().map(|p| p.id.clone()).collect();
    store_endpoint(
        &app,
        &org,
        &platforms[0],
        "we_test_one",
        "whsec_test_registered_one_000000",
    )
    .await;
    store_endpoint(
        &app,
        &org,
        &platforms[1],
        "we_test_two",
        "whsec_test_registered_two_000000",
    )
    .await;
    store_endpoint(
        &app,
        &bare,
        "",
        "we_test_bare",
        "whsec_test_registered_bare_00000",
    )
    .await;

    for secret in [
        HAND_SET,
        "whsec_test_registered_one_000000",
        "whsec_test_registered_two_000000",
    ] {
        let (status, body) = post_signed(&app, "org", secret).await;
        assert_eq!(
            (status, body["outcome"].as_str()),
            (200, Some("ignored")),
            "{secret}: {body}"
        );
    }
    // Only registered secrets, no hand-set one.
    let (status, body) = post_signed(&app, "bare", "whsec_test_registered_bare_00000").await;
    assert_eq!(status, 200, "{body}");
    // Another tenant's secret, or none of them: the one refusal.
    for (slug, secret) in [
        ("org", STRANGER),
        ("org", "whsec_test_registered_bare_00000"),
        ("bare", HAND_SET),
    ] {
        let (status, body) = post_signed(&app, slug, secret).await;
        assert_refused(status, &body);
    }
    // A removed tenant takes no events, whichever secret signed them.
    tenant::remove(&app.pool, "org", false, false, &Actor::cli())
        .await
        .expect("removed");
    for secret in [HAND_SET, "whsec_test_registered_one_000000"] {
        let (status, body) = post_signed(&app, "org", secret).await;
        assert_refused(status, &body);
    }
}

#[tokio::test]
async fn rekey_reseals_registered_secrets_and_a_server_with_only_the_new_key_accepts_them() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 1, 0).await;
    let acme = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let registered = "whsec_test_registered_rekey_0000";
    store_endpoint(&app, &acme, "", "we_test_rekey", registered).await;
    let old = app.master_base64.clone();
    let new = tally::crypto::MasterKey::generate_base64();

    let rekeyed = rekey(&app, &new, &old).await;
    assert!(rekeyed.status.success(), "{}", text(&rekeyed));
    assert!(
        text(&rekeyed).contains("re-sealed 2 secrets of 1 tenants"),
        "the key and the endpoint's secret: {}",
        text(&rekeyed)
    );
    let sealed = stored(&app, &acme).await.remove(0).secret_ciphertext;
    let new_only = tally::crypto::MasterKey::from_base64(&new).expect("key");
    assert_eq!(
        new_only
            .open("acme", &sealed)
            .expect("opens")
            .expose_secret(),
        registered
    );
    assert!(
        app.master.open("acme", &sealed).is_err(),
        "no longer under the old key"
    );

    let port = free_port();
    let server = app.serve_process(port, &[("TALLY_MASTER_KEY", &new)]);
    let base = format!("http://127.0.0.1:{port}");
    app.wait_until_serving(&base).await;
    let payload = event(
        "evt_rekeyed",
        "payout.paid",
        "acct_1NotListedHere",
        json!({"id": "po_1"}),
    )
    .to_string();
    let response = app
        .client
        .post(format!("{base}/webhooks/stripe/acme"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            tally::sim::sign_webhook(registered, now(), &payload),
        )
        .body(payload)
        .send()
        .await
        .expect("sent");
    let status = response.status();
    stop(server);
    assert_eq!(status, 200, "the re-sealed secret opens with the new key");

    // A secret that opens with neither key stops the run; nothing changes.
    let stranger = tally::crypto::MasterKey::generate_base64();
    let failed = run(&app, &["rekey"], &[("TALLY_MASTER_KEY", &stranger)]).await;
    assert!(!failed.status.success());
    assert_eq!(stored(&app, &acme).await[0].secret_ciphertext, sealed);
}

#[tokio::test]
async fn registration_refuses_bad_input_before_asking_stripe() {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 1, 0).await;
    add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let org = add_org_tenant(&app, &sim, "org", None).await;
    let change = tenant::TenantUpdate {
        platforms: Some(vec![]),
        ..Default::default()
    };
    tenant::update(&app.pool, &app.master, &org.slug, change, &Actor::cli())
        .await
        .expect("no platforms");

    let globex = hook_url(&app, "globex");
    assert!(matches!(
        register_at(&app, "acme", &globex).await,
        Err(WebhookError::NotTheTenantsPath { .. })
    ));
    assert!(matches!(
        register_at(&app, "acme", "/webhooks/stripe/acme").await,
        Err(WebhookError::InvalidUrl(_))
    ));
    assert!(matches!(
        register(&app, "org").await,
        Err(WebhookError::NoPlatforms(_))
    ));
    assert!(matches!(
        register(&app, "nobody").await,
        Err(WebhookError::Tenant(TenantError::UnknownTenant(_)))
    ));
    let stripe = stripe_tenants(&app, 1);
    let bad_event = tenant_webhooks::register(
        &app.pool,
        &stripe,
        "acme",
        &hook_url(&app, "acme"),
        &["Charge".to_owned()],
        &Actor::cli(),
    )
    .await;
    assert!(matches!(bad_event, Err(WebhookError::InvalidEvent(_))));
    tenant::remove(&app.pool, "acme", false, false, &Actor::cli())
        .await
        .expect("removed");
    assert!(matches!(
        register(&app, "acme").await,
        Err(WebhookError::Tenant(TenantError::Removed(_)))
    ));
    assert_eq!(sim.stats().total_requests, 0, "Stripe was never asked");
    assert!(audit_details(&app, "tenant.webhooks").await.is_empty());

    // The CLI says why in one line and exits non-zero; --url or --remove is required.
    let refused = run(
        &app,
        &["tenant", "webhooks", "org", "--url", &hook_url(&app, "org")],
        &[],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("lists no platforms"),
        "{}",
        text(&refused)
    );
    let neither = run(&app, &["tenant", "webhooks", "org"], &[]).await;
    assert!(!neither.status.success());
    assert!(text(&neither).contains("--url"), "{}", text(&neither));
}

#[tokio::test]
async fn tenant_list_shows_registered_webhooks_and_freshness() {
    let app = spawn_app().await;
    let sim = spawn_sim(2, 1, 0).await;
    let org = add_org_tenant(&app, &sim, "org", None).await;
    add_platform_tenant(&app, &sim, "acme", 0, None).await;
    let platforms: Vec<String> = sim.keys().platforms.iter().map(|p| p.id.clone()).collect();
    store_endpoint(&app, &org, &platforms[0], "we_test_1", "whsec_test_list_1").await;
    store_endpoint(&app, &org, &platforms[1], "we_test_2", "whsec_test_list_2").await;
    events_mode(&app, "org").await;

    let listed = run(&app, &["tenant", "list", "--format", "json"], &[]).await;
    assert!(listed.status.success(), "{}", text(&listed));
    let tenants: Value = serde_json::from_slice(&listed.stdout).expect("json");
    let summary: Vec<(&str, i64, &str)> = tenants
        .as_array()
        .expect("array")
        .iter()
        .map(|t| {
            (
                t["slug"].as_str().expect("slug"),
                t["webhooks"].as_i64().expect("webhooks"),
                t["freshness"].as_str().expect("freshness"),
            )
        })
        .collect();
    assert_eq!(summary, vec![("acme", 0, "poll"), ("org", 2, "events")]);
    let table = run(&app, &["tenant", "list"], &[]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert!(
        header.contains(&"WEBHOOKS") && header.contains(&"FRESHNESS"),
        "{table}"
    );
    let org_line = table
        .lines()
        .find(|l| l.starts_with("org "))
        .expect("org row");
    assert!(
        org_line.contains(" events ") && org_line.contains(" 2 "),
        "{table}"
    );
}
