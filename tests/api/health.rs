//! Probes, request ids and the fallback.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::Value;
use tally::http::AppState;

use crate::helpers::{spawn_app, test_settings};

#[tokio::test]
async fn healthz_and_readyz_answer_when_the_database_is_up() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_unreachable() {
    let mut settings = test_settings();
    // Nothing listens on port 1: the pool can never connect.
    settings.database.url = SecretString::from("postgres://postgres@127.0.0.1:1/none".to_owned());
    settings.database.acquire_timeout_secs = 1;
    let pool = tally::store::pool(&settings.database).expect("lazy pool");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let master =
        tally::crypto::MasterKey::from_base64(&tally::crypto::MasterKey::generate_base64())
            .expect("master key");
    let stripe = Arc::new(
        tally::tenants::StripeTenants::new(&settings.stripe, Arc::new(master)).expect("stripe"),
    );
    let state = AppState::new(pool, Arc::new(settings), stripe, tally::tasks::Tasks::new());
    tokio::spawn(tally::http::serve(listener, state, std::future::pending()));

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], "database-unavailable");
    let response = client
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        200,
        "liveness does not depend on the database"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("sent");
    let generated = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let response = app
        .client
        .get(format!("{}/nope", app.address))
        .header("x-request-id", "ops-trace-42")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "ops-trace-42");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "error");
    assert_eq!(body["code"], "not-found");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = spawn_app().await;
    let owner = app.token(tally::domain::Role::Owner, None).await;
    app.client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("sent");
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(text.contains("tally_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
}

#[tokio::test]
async fn a_session_left_idle_inside_a_transaction_is_ended_and_its_locks_freed() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let mut database = app.settings.database.clone();
    database.idle_in_transaction_timeout_secs = 1;
    let pool = tally::store::pool(&database).expect("pool");
    // What a future dropped mid-transaction leaves behind: a lock, and nobody.
    let stuck = pool.begin().await.expect("begin");
    a_locking_transaction_left_idle_is_ended(
        &app.pool,
        stuck,
        tenant_id,
        std::time::Duration::from_millis(1500),
    )
    .await;
}

/// Locks the tenant's row in `stuck` and leaves it idle for `idle` (past the timeout):
/// another writer on `pool` then gets the row at once, and `stuck`'s session is gone.
pub(crate) async fn a_locking_transaction_left_idle_is_ended(
    pool: &sqlx::PgPool,
    mut stuck: sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: i64,
    idle: std::time::Duration,
) {
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(tenant_id)
        .execute(&mut *stuck)
        .await
        .expect("lock");
    tokio::time::sleep(idle).await;
    let updated = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::query("UPDATE tenants SET rate_limit = 7 WHERE id = $1")
            .bind(tenant_id)
            .execute(pool),
    )
    .await
    .expect("the lock was released")
    .expect("update");
    assert_eq!(updated.rows_affected(), 1);
    assert!(sqlx::query("SELECT 1").execute(&mut *stuck).await.is_err());
}

/// Postgres restarted, or a proxy dropped idle connections: every pooled connection is
/// dead. The statements that come next must still run; the pool tests a connection that
/// sat idle before handing it out (not one in steady use: that round trip per statement
/// cost a busy listing a fifth of its rate). The server's own pool, without the server,
/// so no background task meets the dead connections first.
#[tokio::test]
async fn statements_after_postgres_dropped_the_pools_connections_run() {
    let db = crate::helpers::TestDb::create().await;
    let mut settings = test_settings();
    settings.database.url = SecretString::from(db.url.clone());
    let pool = tally::store::pool(&settings.database).expect("pool");
    let statements =
        || {
            futures::future::join_all((0..6).map(|_| {
                sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(0.05)").fetch_one(&pool)
            }))
        };
    // Several at once, so the pool holds several connections.
    for answer in statements().await {
        answer.expect("runs");
    }
    // Dropped connections go back to the pool in tasks of their own.
    for _ in 0..200 {
        if pool.num_idle() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(pool.num_idle() >= 2, "the pool keeps its connections");

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&crate::helpers::admin_url())
        .await
        .expect("connect");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(ended.len() >= 2, "the pool's connections were ended");
    // Idle past the pool's test threshold, as connections are after a restart.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    for answer in statements().await {
        answer.expect("runs over a fresh connection");
    }
    pool.close().await;
}

/// A `BEGIN` whose answer was never read by a `Transaction` (its future dropped in
/// that window) leaves the session inside a transaction no one owns. Put back in the
/// pool, the next borrower's statements would run inside it, and be lost with it; the
/// pool closes such a connection instead.
#[tokio::test]
async fn a_connection_left_inside_a_transaction_no_one_owns_is_not_reused() {
    let db = crate::helpers::TestDb::create().await;
    let mut settings = test_settings();
    settings.database.url = SecretString::from(db.url.clone());
    settings.database.max_connections = 1;
    let pool = tally::store::pool(&settings.database).expect("pool");
    let mut conn = pool.acquire().await.expect("connection");
    // What the dropped `BEGIN` leaves: the session in a transaction, no owner.
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    let orphaned: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .expect("pid");
    drop(conn);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let next = || async {
        sqlx::query_as::<_, (i64, i32)>("SELECT txid_current(), pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("the next statement runs")
    };
    let (first, pid) = next().await;
    let (second, _) = next().await;
    assert_ne!(
        first, second,
        "each statement runs in a transaction of its own"
    );
    assert_ne!(pid, orphaned, "the orphaned session was closed, not reused");
    pool.close().await;
}
