//! Everything that speaks SQL (DESIGN §2: nothing else writes SQL). Functions take
//! an executor so callers choose the transaction.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod budget;
pub mod doctor;
pub mod refreshes;
pub mod snapshots;
pub mod sync_runs;
pub mod tenants;
pub mod tokens;
pub mod totals_history;
pub mod webhook_events;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
