//! tally behind PgBouncer in transaction-pooling mode (issue 16 item 2): replicas
//! sharing a refresh, token revocation and tenant changes reaching every replica
//! within 2 s, the CLI (migrations over a direct URL, or a clear refusal), the
//! idle-in-transaction timeout, and a failing statement leaving its connection usable.
//! The replica, revocation and refresh tests are the direct ones, run through a real
//! PgBouncer (`bouncer.rs`).

use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;
use tally::sim::SimConfig;
use tally::store;

use crate::bouncer::Bouncer;
use crate::helpers::{
    migrated_before, spawn_app_with, spawn_sim, tally_command_with, test_settings, TestDb,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_three_replicas_fetch_each_account_once() {
    let bouncer = Bouncer::start();
    crate::refresh::three_replicas_fetch_each_account_once(&|settings| bouncer.route(settings))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_a_poll_at_another_replica_joins_the_same_refresh() {
    let bouncer = Bouncer::start();
    crate::refresh::a_poll_at_another_replica_joins_the_same_refresh(&|settings| {
        bouncer.route(settings)
    })
    .await;
}

#[tokio::test]
async fn behind_pgbouncer_a_revoked_token_is_refused_by_another_server_within_two_seconds() {
    let bouncer = Bouncer::start();
    crate::tokens::a_token_revoked_with_the_cli_is_refused_by_another_server(&|settings| {
        bouncer.route(settings)
    })
    .await;
}

#[tokio::test]
async fn behind_pgbouncer_a_tenant_update_reaches_another_server_within_two_seconds() {
    let bouncer = Bouncer::start();
    crate::tenant_lifecycle::update_reaches_a_second_running_server(&|settings| {
        bouncer.route(settings)
    })
    .await;
}

fn said(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn output(mut command: std::process::Command, args: &[&str]) -> std::process::Output {
    command.args(args);
    tokio::process::Command::from(command)
        .output()
        .await
        .expect("tally runs")
}

#[tokio::test]
async fn behind_pgbouncer_the_cli_migrates_over_the_direct_url_and_says_what_to_do_without_it() {
    let bouncer = Bouncer::start();
    let db = TestDb::create().await;
    // A database one migration behind this binary: a rollout's moment.
    let latest = store::MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .expect("migrations");
    let (pool, _) = migrated_before(&db, latest).await;
    pool.close().await;
    let mut settings = test_settings();
    settings.database.url = SecretString::from(db.url.clone());
    bouncer.route(&mut settings);
    let master = tally::crypto::MasterKey::generate_base64();
    let mut without_direct = settings.clone();
    without_direct.database.migrate_url = None;

    for args in [&["tenant", "list"][..], &["migrate"]] {
        let refused = output(tally_command_with(&without_direct, &master), args).await;
        assert!(!refused.status.success(), "{args:?}: {}", said(&refused));
        let text = said(&refused);
        assert!(
            text.contains("1 database migration(s) pending")
                && text.contains("run `tally migrate` with TALLY__DATABASE__MIGRATE_URL"),
            "{args:?}: {text}"
        );
    }

    let migrated = output(tally_command_with(&settings, &master), &["migrate"]).await;
    assert!(migrated.status.success(), "{}", said(&migrated));
    assert!(
        store::pending_migrations(&PgPool::connect(&db.url).await.expect("connect"))
            .await
            .expect("pending")
            .is_empty()
    );

    // Nothing pending: every command works through PgBouncer alone.
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let mut add = tally_command_with(&without_direct, &master);
    add.env("K", &sim.keys().platforms[0].key);
    let added = output(
        add,
        &[
            "tenant",
            "add",
            "acme",
            "--key-env",
            "K",
            "--api-base",
            &sim.base_url(),
        ],
    )
    .await;
    assert!(added.status.success(), "{}", said(&added));
    let listed = output(
        tally_command_with(&without_direct, &master),
        &["tenant", "list"],
    )
    .await;
    assert!(listed.status.success(), "{}", said(&listed));
    assert!(said(&listed).contains("acme"), "{}", said(&listed));
}

#[tokio::test]
async fn behind_pgbouncer_a_transaction_left_idle_is_ended_and_its_locks_freed() {
    let bouncer = Bouncer::start();
    let app = spawn_app_with(|settings| bouncer.route(settings)).await;
    let tenant_id = app.add_tenant("acme").await;
    let timeout = app.settings.database.idle_in_transaction_timeout_secs;

    // The session carries no setting (PgBouncer lends it to anyone); each transaction
    // that tally begins does.
    let in_session: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&app.pool)
        .await
        .expect("show");
    assert_eq!(in_session, "0");
    let mut stuck = store::begin(&app.pool).await.expect("begin");
    let in_transaction: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&mut *stuck)
        .await
        .expect("show");
    assert_eq!(in_transaction, format!("{timeout}s"));

    // What a future dropped mid-transaction leaves behind: a lock, and nobody.
    crate::health::a_locking_transaction_left_idle_is_ended(
        &app.pool,
        stuck,
        tenant_id,
        Duration::from_secs(timeout) + Duration::from_millis(1500),
    )
    .await;
}

/// A statement that fails at each step of its one round trip (parsing, executing,
/// midway through its rows), alone and inside a transaction, is followed on the same
/// pooled connection by one that works.
async fn failing_statements_leave_the_connection_usable(pool: &PgPool, behind: &str) {
    let works = || async {
        sqlx::query_scalar::<_, i32>("SELECT $1::int + 1")
            .bind(41)
            .fetch_one(pool)
            .await
    };
    let failing = [
        sqlx::query("SELECT $1::int + no_such_column").bind(1),
        sqlx::query("SELECT 1 / $1::int").bind(0),
        sqlx::query("SELECT 1 / (g - $1::int) FROM generate_series(1, 5) g").bind(3),
    ];
    for statement in failing {
        assert!(statement.fetch_all(pool).await.is_err(), "{behind}");
        assert_eq!(works().await.expect(behind), 42, "{behind}");
    }
    let mut tx = store::begin(pool).await.expect(behind);
    assert!(sqlx::query("SELECT 1 / $1::int")
        .bind(0)
        .execute(&mut *tx)
        .await
        .is_err());
    tx.rollback().await.expect(behind);
    assert_eq!(works().await.expect(behind), 42, "{behind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_statements_of_many_clients_never_mix_and_a_failure_leaves_the_connection_usable(
) {
    let bouncer = Bouncer::start();
    let db = TestDb::create().await;
    let mut settings = test_settings();
    settings.database.url = SecretString::from(db.url.clone());
    // The patched driver's path, directly (no PgBouncer), then through PgBouncer.
    let mut direct = settings.database.clone();
    direct.pgbouncer = true;
    direct.max_connections = 1;
    let mut behind = direct.clone();
    behind.url = SecretString::from(bouncer.url_for(&db.url));
    for (database, name) in [(&direct, "direct"), (&behind, "behind PgBouncer")] {
        let pool = store::pool(database).expect("pool");
        failing_statements_leave_the_connection_usable(&pool, name).await;
    }

    // Eight clients, each its own PgBouncer client connection, run statements with
    // one and with three parameters at once; PgBouncer lends its few server
    // connections to whichever asks. Each answer is its own.
    let clients: Vec<PgPool> = (0..8)
        .map(|_| store::pool(&behind).expect("pool"))
        .collect();
    let runs = clients.iter().enumerate().map(|(client, pool)| async move {
        for i in 0..40_i32 {
            let n = i32::try_from(client).expect("few") * 1000 + i;
            let one: i32 = sqlx::query_scalar("SELECT $1::int")
                .bind(n)
                .fetch_one(pool)
                .await
                .expect("one parameter");
            let three: String = sqlx::query_scalar("SELECT $1::int || '-' || $2::text || $3::text")
                .bind(n)
                .bind("x")
                .bind("y")
                .fetch_one(pool)
                .await
                .expect("three parameters");
            assert_eq!((one, three), (n, format!("{n}-xy")));
        }
    });
    futures::future::join_all(runs).await;
}
