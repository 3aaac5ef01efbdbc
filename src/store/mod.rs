//! Everything that speaks SQL (DESIGN §2: nothing else writes SQL). Functions take
//! an executor so callers choose the transaction.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod changes;
pub mod closes;
pub mod doctor;
pub mod ledger;
pub mod refreshes;
pub mod retention;
pub mod snapshots;
pub mod stripe_budgets;
pub mod sync_runs;
pub mod tenants;
pub mod tokens;
pub mod totals_history;
pub mod webhook_endpoints;
pub mod webhook_events;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::config::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One page of a keyset-paged list: the rows asked for, and whether more follow.
/// Read `fetch_limit(limit)` rows (one more than asked) and build it with
/// `from_fetched`; the HTTP lists render it (`http::paging`).
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// How many rows to read for a page of `limit`: the extra one says more follow.
pub fn fetch_limit(limit: i64) -> i64 {
    limit.saturating_add(1)
}

impl<T> Page<T> {
    pub fn from_fetched(mut rows: Vec<T>, limit: i64) -> Page<T> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            data: rows,
            has_more,
        }
    }
}

/// A pool that connects on first use, so `serve` can start (and report not ready)
/// while the database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    // A future dropped mid-transaction (a cancelled request, a killed task) can leave
    // its connection idle inside the transaction, holding row locks that block the
    // next writer; Postgres ends such a session after this, whatever our code did.
    let options = options.options([(
        "idle_in_transaction_session_timeout",
        format!("{}s", settings.idle_in_transaction_timeout_secs),
    )]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_lazy_with(options))
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Begins a transaction on the pool. Every transaction in tally begins here or in
/// [`begin_on`], so whatever must hold inside each one has one place to go.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin().await
}

/// Begins a transaction (or a savepoint, inside one) on a connection the caller holds.
pub async fn begin_on(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin().await
}

/// `SELECT 1`: the readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT 1 AS \"one!\"")
        .fetch_one(pool)
        .await
        .map(|_| ())
}

/// True when `error` is a violation of the named unique constraint; callers turn
/// it into a 409 or a clear CLI message.
pub fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint().is_some_and(|c| c == constraint)
        }
        _ => false,
    }
}
