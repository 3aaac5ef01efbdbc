//! What the CLI's subcommands do, as library functions the demo and tests call too.

pub mod serve;
pub mod sync;
pub mod tenant;
pub mod token;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Settings;
use crate::store;

/// Connects and applies pending migrations.
pub async fn connect_and_migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = store::pool(&settings.database).context("invalid database.url / DATABASE_URL")?;
    store::migrate(&pool)
        .await
        .context("applying database migrations (is Postgres reachable at DATABASE_URL?)")?;
    Ok(pool)
}
