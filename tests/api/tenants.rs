//! Tenants and their secrets: sealed at rest, never echoed, never logged.

use std::process::{Command, Output};

use secrecy::{ExposeSecret, SecretString};
use tally::commands::tenant::{TenantError, TenantSpec};

use crate::helpers::{spawn_app, TestApp, PLATFORM_KEY};

const ORG_KEY: &str = "sk_org_test_51OrgSecretKeyValue0002";

fn spec(slug: &str, key: &str) -> TenantSpec {
    TenantSpec::new(slug, SecretString::from(key.to_owned()))
}

async fn add(
    app: &TestApp,
    spec: TenantSpec,
) -> Result<tally::commands::tenant::TenantView, TenantError> {
    tally::commands::tenant::add(&app.pool, &app.master, &app.settings, spec).await
}

#[tokio::test]
async fn the_stored_key_is_sealed_and_opens_with_the_master_key() {
    let app = spawn_app().await;
    let view = add(&app, spec("acme", PLATFORM_KEY)).await.expect("added");
    assert_eq!(view.kind, "platform");
    assert_eq!(view.key_last4, &PLATFORM_KEY[PLATFORM_KEY.len() - 4..]);
    let tenant = tally::store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("stored");
    let raw = &tenant.key_ciphertext;
    assert!(!raw
        .windows(PLATFORM_KEY.len())
        .any(|w| w == PLATFORM_KEY.as_bytes()));
    let dump: String = sqlx::query_scalar("SELECT row_to_json(t)::text FROM tenants t")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert!(
        !dump.contains(PLATFORM_KEY),
        "no column holds the plaintext key"
    );
    let opened = app.master.open("acme", raw).expect("opens");
    assert_eq!(opened.expose_secret(), PLATFORM_KEY);
}

#[tokio::test]
async fn the_kind_is_inferred_and_unknown_prefixes_are_refused() {
    let app = spawn_app().await;
    let mut org = spec("org", ORG_KEY);
    org.platforms = vec!["acct_1PlatformA".into()];
    org.accounts = vec!["acct_1Standalone".into()];
    let view = add(&app, org).await.expect("org tenant");
    assert_eq!(view.kind, "organization");
    assert_eq!(view.platforms, ["acct_1PlatformA"]);
    assert_eq!(view.org_accounts, ["acct_1Standalone"]);
    assert_eq!(
        add(&app, spec("rk", "rk_live_example_not_a_key"))
            .await
            .expect("rk")
            .kind,
        "platform"
    );

    for key in [
        "pk_test_51Publishable",
        "rk_org_51NoSuchThing",
        "whsec_123",
        "",
    ] {
        let error = add(&app, spec("bad", key)).await.expect_err(key);
        let message = error.to_string();
        assert!(
            message.contains("sk_org_"),
            "names accepted prefixes: {message}"
        );
        assert!(
            key.is_empty() || !message.contains(key),
            "never echoes the key"
        );
    }
}

#[tokio::test]
async fn bad_tenant_input_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let mut platform_with_platforms = spec("acme", PLATFORM_KEY);
    platform_with_platforms.platforms = vec!["acct_1P".into()];
    assert!(matches!(
        add(&app, platform_with_platforms).await,
        Err(TenantError::OrgOptionsWithPlatformKey)
    ));
    let mut bad_platform = spec("org", ORG_KEY);
    bad_platform.platforms = vec!["platform-a".into()];
    assert!(matches!(
        add(&app, bad_platform).await,
        Err(TenantError::InvalidAccountId(_))
    ));
    let mut bad_base = spec("acme", PLATFORM_KEY);
    bad_base.api_base = Some("not a url".into());
    assert!(matches!(
        add(&app, bad_base).await,
        Err(TenantError::InvalidApiBase(_))
    ));
    assert!(matches!(
        add(&app, spec("Bad Slug", PLATFORM_KEY)).await,
        Err(TenantError::InvalidSlug(_))
    ));
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(tenants, 0);

    add(&app, spec("acme", PLATFORM_KEY)).await.expect("first");
    assert!(matches!(
        add(&app, spec("acme", PLATFORM_KEY)).await,
        Err(TenantError::Exists(_))
    ));
}

fn tally(app: &TestApp, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "trace")
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .envs(envs.iter().copied())
        .output()
        .expect("tally runs")
}

#[tokio::test]
async fn the_cli_adds_and_lists_tenants_without_ever_printing_the_key() {
    let app = spawn_app().await;
    let master = tally::crypto::MasterKey::generate_base64();
    let env = [
        ("TALLY_MASTER_KEY", master.as_str()),
        ("ACME_KEY", PLATFORM_KEY),
    ];
    let added = tally(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "ACME_KEY",
            "--no-verify",
        ],
        &env,
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let stdout = String::from_utf8_lossy(&added.stdout);
    assert!(
        stdout.contains("tenant acme added: platform key …0001"),
        "{stdout}"
    );

    let listed = tally(&app, &["tenant", "list", "--format", "json"], &env);
    assert!(listed.status.success());
    let tenants: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json list");
    assert_eq!(tenants[0]["slug"], "acme");
    assert_eq!(tenants[0]["key_last4"], "0001");

    let token = tally(
        &app,
        &["token", "create", "--role", "reader", "--tenant", "acme"],
        &env,
    );
    assert!(token.status.success());
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    assert!(
        token.starts_with("tly_") && !token.contains(' '),
        "prints only the token"
    );

    for output in [&added, &listed] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains(PLATFORM_KEY), "the CLI printed the key");
    }
}

#[tokio::test]
async fn the_cli_explains_a_missing_or_malformed_master_key() {
    let app = spawn_app().await;
    let missing = tally(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "ACME_KEY",
            "--no-verify",
        ],
        &[("ACME_KEY", PLATFORM_KEY)],
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("TALLY_MASTER_KEY is not set"), "{stderr}");

    let malformed = tally(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "ACME_KEY",
            "--no-verify",
        ],
        &[("ACME_KEY", PLATFORM_KEY), ("TALLY_MASTER_KEY", "c2hvcnQ=")],
    );
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("32 bytes"));

    let master = tally::crypto::MasterKey::generate_base64();
    let bad_prefix = tally(
        &app,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "ACME_KEY",
            "--no-verify",
        ],
        &[
            ("ACME_KEY", "pk_test_123"),
            ("TALLY_MASTER_KEY", master.as_str()),
        ],
    );
    assert!(!bad_prefix.status.success());
    assert!(String::from_utf8_lossy(&bad_prefix.stderr).contains("unrecognised Stripe key prefix"));
}
