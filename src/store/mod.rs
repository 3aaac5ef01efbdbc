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

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
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
///
/// Behind PgBouncer in transaction-pooling mode (`database.pgbouncer`) a session is
/// shared with other clients between transactions, so nothing may live in it: no
/// prepared statement outlives its round trip (statement cache off, which the
/// vendored driver takes as the sign to parse, bind and execute each statement in
/// one round trip: `vendor/sqlx-postgres/TALLY.md`), and the settings that a direct
/// session gets at connect time are set in each transaction by [`begin`] instead.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    // A future dropped mid-transaction (a cancelled request, a killed task) can leave
    // its connection idle inside the transaction, holding row locks that block the
    // next writer; Postgres ends such a session after this, whatever our code did.
    let idle_timeout = format!("{}s", settings.idle_in_transaction_timeout_secs);
    let options = if settings.pgbouncer {
        set_begin_statement(Some(format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{idle_timeout}'"
        )));
        options.statement_cache_capacity(0)
    } else {
        options.options([("idle_in_transaction_session_timeout", idle_timeout)])
    };
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        // sqlx pings every connection it hands out (and, unless it is patched, every
        // one it takes back): round trips to Postgres beside each statement's own. A
        // connection in steady use has just proven itself; only one idle for a while
        // (Postgres restarted, PgBouncer or a firewall dropped it) is tested first, and
        // a broken one is closed and another taken. The vendored driver's `ping` skips
        // the round trip when nothing is outstanding, so the test is a query.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TEST_IDLE_AFTER {
                    sqlx::Executor::execute(&mut *conn, "SELECT 1").await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// A pooled connection idle longer than this is tested before it is handed out; a
/// broken one is closed and another taken, so the statement does not fail with it.
const TEST_IDLE_AFTER: Duration = Duration::from_secs(1);

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Applies pending migrations over one direct connection to `url` (Postgres itself,
/// not PgBouncer: the migrator holds a session-level lock while it works).
pub async fn migrate_at(url: &SecretString) -> Result<(), sqlx::migrate::MigrateError> {
    let options: PgConnectOptions = url.expose_secret().parse()?;
    let mut conn = PgConnection::connect_with(&options).await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// The migrations this binary has that the database has not applied, oldest first.
pub async fn pending_migrations(
    pool: &PgPool,
) -> Result<Vec<&'static sqlx::migrate::Migration>, sqlx::Error> {
    let migrated =
        sqlx::query_scalar!("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS \"migrated!\"")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if migrated {
        use sqlx::migrate::Migrate;
        let mut conn = pool.acquire().await?;
        conn.list_applied_migrations()
            .await
            .map_err(|error| match error {
                sqlx::migrate::MigrateError::Execute(error) => error,
                other => sqlx::Error::Migrate(Box::new(other)),
            })?
            .into_iter()
            .map(|applied| applied.version)
            .collect()
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .filter(|migration| !applied.contains(&migration.version))
        .collect())
}

/// How every transaction begins behind PgBouncer: `BEGIN` with the session settings
/// made local to the transaction, in the same round trip. Unset (direct to Postgres):
/// a plain `BEGIN`, the session has its settings from connect time. Process-wide
/// because a pool cannot carry it and one process has one database setting.
static BEGIN_STATEMENT: RwLock<Option<String>> = RwLock::new(None);

fn set_begin_statement(statement: Option<String>) {
    *BEGIN_STATEMENT
        .write()
        .unwrap_or_else(PoisonError::into_inner) = statement;
}

fn begin_statement() -> Option<String> {
    BEGIN_STATEMENT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Begins a transaction on the pool. Every transaction in tally begins here or in
/// [`begin_on`], so whatever must hold inside each one has one place to go: behind
/// PgBouncer, the idle-in-transaction timeout.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match begin_statement() {
        Some(statement) => pool.begin_with(statement).await,
        None => pool.begin().await,
    }
}

/// Begins a transaction (or a savepoint, inside one) on a connection the caller holds.
pub async fn begin_on(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    match begin_statement() {
        // A savepoint lives in a transaction that began here already.
        Some(statement) if !conn.is_in_transaction() => conn.begin_with(statement).await,
        _ => conn.begin().await,
    }
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
