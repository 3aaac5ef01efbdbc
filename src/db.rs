//! The database a process opens: its pool, with the schema brought up to date (or,
//! behind PgBouncer without a direct connection, checked to be). The composition root
//! (`app.rs`) and every command start here.

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Settings;
use crate::store;

/// Connects and applies pending migrations: over `database.migrate_url` when set (a
/// direct connection), else over the pool's own URL; behind PgBouncer without a
/// direct URL it only checks that none is pending, since the migrator needs a session.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    let database = &settings.database;
    let pool = store::pool(database).context("invalid database.url / DATABASE_URL")?;
    if let Some(migrate_url) = &database.migrate_url {
        store::migrate_at(migrate_url).await.context(
            "applying database migrations over database.migrate_url \
             (TALLY__DATABASE__MIGRATE_URL; is Postgres reachable there?)",
        )?;
    } else if database.pgbouncer {
        let pending = store::pending_migrations(&pool)
            .await
            .context("checking for pending database migrations (is DATABASE_URL reachable?)")?;
        if let Some(latest) = pending.last() {
            anyhow::bail!(
                "{} database migration(s) pending (up to {} {}), and behind PgBouncer \
                 (database.pgbouncer) they cannot run over DATABASE_URL: run `tally migrate` \
                 with TALLY__DATABASE__MIGRATE_URL set to a direct connection to Postgres \
                 (not PgBouncer), or set database.migrate_url",
                pending.len(),
                latest.version,
                latest.description
            );
        }
    } else {
        store::migrate(&pool)
            .await
            .context("applying database migrations (is Postgres reachable at DATABASE_URL?)")?;
    }
    Ok(pool)
}
