//! `tally serve` as an operator runs it: PAGE_SIZE from the environment,
//! migrations at start, graceful stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tally::domain::Role;

use crate::helpers::{account_object, ids, spawn_app};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

#[tokio::test]
async fn serve_honours_page_size_and_stops_on_sigterm() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let objects: Vec<Value> = (0..5)
        .map(|i| account_object(&format!("acct_1Page{i}"), 1_700_000_000 + i, None))
        .collect();
    app.store_accounts(tenant_id, &objects).await;
    let token = app.token(Role::Reader, Some("acme")).await;

    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &app.db.url)
        .env("PAGE_SIZE", "3")
        .env("TALLY_MASTER_KEY", &app.master_base64)
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let url = format!("http://127.0.0.1:{port}/api/administrator/connect/stripe-accounts");
    let mut body = None;
    for _ in 0..100 {
        if let Ok(response) = app.client.get(&url).bearer_auth(&token).send().await {
            body = Some(response.json::<Value>().await.expect("json"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = body.expect("tally serve answered");
    assert_eq!(ids(&body), ["acct_1Page4", "acct_1Page3", "acct_1Page2"]);

    let pid = server.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = server.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("tally serve stopped within 10 s of SIGTERM");
    assert!(status.success(), "graceful stop exits 0: {status}");
}

#[tokio::test]
async fn tally_balances_prints_totals_and_exits_non_zero_when_an_account_failed() {
    let sim = crate::helpers::spawn_sim(tally::sim::SimConfig {
        platforms: 1,
        accounts_per_platform: 6,
        ..tally::sim::SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    let tenant = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant, &sim, &ids, None).await;
    // Run off the test's runtime thread: the in-process simulator must keep serving.
    let run = |format: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["balances", "acme", "--max-age", "0", "--format", format])
            .env("DATABASE_URL", &app.db.url)
            .env("TALLY_MASTER_KEY", &app.master_base64)
            .env(
                "TALLY_CONFIG_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
            );
        async move {
            tokio::task::spawn_blocking(move || command.output().expect("tally balances runs"))
                .await
                .expect("joined")
        }
    };
    let table = run("table").await;
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("CURRENCY") && text.contains("USD"), "{text}");
    assert!(text.contains("6 total, 6 ok, 0 failed"), "{text}");

    sim.revoke(&ids[0]);
    let json = run("json").await;
    assert!(
        !json.status.success(),
        "a failed account makes the exit non-zero"
    );
    assert!(String::from_utf8_lossy(&json.stderr).contains("1 of 6 accounts could not be read"));
    let body: Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!(body["failures"][0]["stripeid"], ids[0].as_str());
    assert_eq!(body["failures"][0]["code"], "account_invalid");
}

/// `tally tenant add` as a person runs it with Stripe unreachable.
async fn add_with_stripe_unreachable(app: &crate::helpers::TestApp, extra: &[&str]) -> String {
    let mut command = app.tally_command();
    command
        .args(extra)
        .args([
            "tenant",
            "add",
            "acme",
            "--key-env",
            "K",
            // Nothing listens on the discard port: every attempt is refused.
            "--api-base",
            "http://127.0.0.1:9",
        ])
        .env("K", "sk_test_51CliQuietKeyValue0000000001")
        .env_remove("RUST_LOG");
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .expect("tally runs");
    assert!(!output.status.success(), "the key could not be checked");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn one_shot_commands_speak_plainly_and_log_only_when_asked() {
    let app = spawn_app().await;

    let quiet = add_with_stripe_unreachable(&app, &[]).await;
    assert!(
        quiet.starts_with("acme: checking the key with Stripe…\n"),
        "{quiet}"
    );
    assert!(
        quiet.contains("tally: could not check the key with Stripe"),
        "{quiet}"
    );
    assert!(
        !quiet.contains("WARN") && !quiet.contains("attempt="),
        "{quiet}"
    );
    assert_eq!(
        quiet.lines().count(),
        2,
        "progress, then the reason: {quiet}"
    );

    // Asked for, the log shows each retry once, in plain text (stderr is a pipe here).
    let verbose = add_with_stripe_unreachable(&app, &["--verbose"]).await;
    let retries: Vec<&str> = verbose
        .lines()
        .filter(|line| line.contains("retrying Stripe request"))
        .collect();
    assert!(!retries.is_empty(), "{verbose}");
    for line in &retries {
        assert_eq!(line.matches("attempt=").count(), 1, "{line}");
    }
    assert!(
        !verbose.contains('\u{1b}'),
        "no colour into a pipe: {verbose}"
    );
}
