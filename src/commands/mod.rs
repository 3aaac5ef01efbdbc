//! What the CLI's subcommands do, as library functions the demo and tests call too.

pub mod balances;
pub mod close;
pub mod demo;
pub mod doctor;
pub mod history;
pub mod pgcluster;
pub mod rekey;
pub mod serve;
pub mod sync;
pub mod tenant;
pub mod tenant_webhooks;
pub mod token;

use sqlx::PgPool;

use crate::config::Settings;

/// What commands that talk to Stripe need: the database, and Stripe access opened
/// with the master key (checked first, so a missing key fails before any I/O),
/// paced by the budget every process shares through the database.
pub async fn stripe_context(
    settings: &Settings,
) -> anyhow::Result<(PgPool, std::sync::Arc<crate::tenants::StripeTenants>)> {
    let master = std::sync::Arc::new(crate::crypto::MasterKey::from_env()?);
    let stripe = crate::tenants::StripeTenants::new(&settings.stripe, master)?;
    let pool = crate::db::connect_and_migrate(settings).await?;
    Ok((
        pool.clone(),
        std::sync::Arc::new(stripe.with_shared_budget(pool)),
    ))
}
