//! Keeping stored accounts true to Stripe (DESIGN §1, §4): importing a tenant's
//! connected accounts page by page, and applying signed Connect webhook events.
//!
//! A sync walks scopes: a platform tenant's own list; for an organization tenant each
//! configured platform's list (`Stripe-Context: P`, stored with `platform_id` P), then
//! the accounts directly in the org, retrieved one by one (`platform_id` NULL). Each
//! page is committed as it arrives, so an interrupted sync keeps what it wrote and a
//! rerun finishes the job. Accounts a scope no longer returns are marked removed only
//! once that scope's listing completed.

pub mod events;
mod scope;
pub mod signature;

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;
use crate::store;
use crate::store::accounts::InvalidAccountObject;
use crate::store::snapshots::SnapshotError;
use crate::store::sync_runs::{Claim, RunCounts, SyncRun};
use crate::store::tenants::Tenant;
use crate::stripe::{CredentialKind, StripeError, TenantClient};
use crate::tasks::Tasks;

pub use scope::Scope;

/// How many times per lease a running sync renews it: a few renewals may be late
/// (a slow database) before the lease runs out.
const RENEWALS_PER_LEASE: u32 = 6;
/// Stripe's largest page.
const PAGE_LIMIT: u8 = 100;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Metadata key naming the owner (config `accounts.owner_metadata_key`).
    pub owner_key: String,
    /// The run's lease (config `sync.lease_secs`), renewed on a timer while it runs;
    /// when it runs out (the process died) the next sync takes over.
    pub lease: Duration,
    /// Accounts per list request, 1..=100.
    pub page_limit: u8,
}

impl SyncOptions {
    pub fn from_settings(settings: &Settings) -> SyncOptions {
        SyncOptions {
            owner_key: settings.accounts.owner_metadata_key.clone(),
            lease: Duration::from_secs(settings.sync.lease_secs),
            page_limit: PAGE_LIMIT,
        }
    }
}

/// Told after every committed page, so a CLI can draw a progress bar.
pub trait Progress: Send + Sync {
    /// A scope's listing begins.
    fn scope_started(&self, _scope: &Scope) {}
    /// A page is committed; `counts` are the run's totals so far, and `elapsed` is
    /// the time since the run started (accounts / elapsed is the rate).
    fn page_committed(&self, _counts: &RunCounts, _elapsed: Duration) {}
}

/// Reports nothing (background runs: the run record is the progress).
pub struct Quiet;

impl Progress for Quiet {}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("a sync of this tenant is already running (run {0})")]
    AlreadyRunning(Uuid),
    /// Nothing starts for a removed tenant (`tally tenant remove`).
    #[error("that tenant was removed (tally tenant remove); nothing is synced for it")]
    TenantRemoved,
    #[error("{scope}: {source}")]
    Stripe {
        scope: String,
        #[source]
        source: StripeError,
    },
    #[error("{scope}: Stripe said more accounts follow but sent an empty page")]
    EmptyPage { scope: String },
    #[error(transparent)]
    InvalidObject(#[from] InvalidAccountObject),
    #[error("the run's lease expired (no heartbeat) and another sync took over")]
    Superseded,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("balance totals: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct SyncSummary {
    pub run: SyncRun,
    pub elapsed: Duration,
}

impl SyncSummary {
    pub fn accounts_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.run.accounts_seen as f64 / secs
        } else {
            0.0
        }
    }
}

/// Claims a run for the tenant, or returns the one running. A removed tenant gets
/// neither: [`SyncError::TenantRemoved`].
pub async fn claim(
    pool: &PgPool,
    tenant_id: i64,
    options: &SyncOptions,
) -> Result<Claim, SyncError> {
    store::sync_runs::claim(pool, tenant_id, options.lease)
        .await?
        .ok_or(SyncError::TenantRemoved)
}

/// Claims a run and syncs in the foreground (the CLI, tests, benchmarks). A run
/// already going is an error.
pub async fn run(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncSummary, SyncError> {
    match claim(pool, tenant.id, options).await? {
        Claim::Started(run) => execute(pool, client, tenant, run, options, progress).await,
        Claim::Running(running) => Err(SyncError::AlreadyRunning(running.id)),
    }
}

/// Claims a run and syncs in a background task (the API). Returns the claim at once:
/// the new run, or the one already running.
pub async fn start_in_background(
    pool: PgPool,
    client: TenantClient,
    tenant: Tenant,
    options: SyncOptions,
    tasks: Tasks,
) -> Result<Claim, SyncError> {
    let claim = claim(&pool, tenant.id, &options).await?;
    if let Claim::Started(run) = &claim {
        spawn_claimed(pool, client, tenant, run.clone(), options, tasks);
    }
    Ok(claim)
}

/// Runs a claimed sync as one of the process's tasks. When the process stops first,
/// the run is marked `interrupted` (what it committed stays) so the next sync can
/// start at once instead of waiting for the lease to run out.
pub fn spawn_claimed(
    pool: PgPool,
    client: TenantClient,
    tenant: Tenant,
    run: SyncRun,
    options: SyncOptions,
    tasks: Tasks,
) {
    let cancel = tasks.cancel.clone();
    tasks.tracker.spawn(async move {
        // The outcome is in the run record; the log gets a line for operators.
        let slug = tenant.slug.clone();
        let run_id = run.id;
        tokio::select! {
            outcome = execute(&pool, &client, &tenant, run, &options, &Quiet) => match outcome {
                Ok(summary) => tracing::info!(tenant = %slug, run = %summary.run.id,
                    accounts = summary.run.accounts_seen, "sync finished"),
                Err(error) => tracing::warn!(tenant = %slug, error = %error, "sync failed"),
            },
            () = cancel.cancelled() => {
                match store::sync_runs::interrupt(&pool, run_id, "interrupted: the process stopped").await {
                    Ok(_) => tracing::info!(tenant = %slug, run = %run_id, "sync interrupted by shutdown"),
                    Err(error) => tracing::warn!(tenant = %slug, error = %error, "could not mark the sync interrupted"),
                }
            }
        }
    });
}

/// Syncs every scope of the tenant under a claimed run, and records how it ended.
#[tracing::instrument(name = "sync", skip_all, fields(tenant = %tenant.slug, run = %run.id))]
pub async fn execute(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    run: SyncRun,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncSummary, SyncError> {
    let started = Instant::now();
    let mut sync = scope::Sync {
        pool,
        client,
        tenant,
        run: &run,
        options,
        progress,
        started,
        counts: RunCounts::default(),
    };
    // The lease is renewed beside the work, in the same task: it lives exactly as long
    // as the run (a dropped or killed run stops renewing), however slow its pages are.
    let outcome = tokio::select! {
        outcome = sync_scopes(&mut sync) => outcome,
        lost = keep_lease(pool, run.id, options.lease) => Err(lost),
    };
    let counts = sync.counts;
    let error = outcome.as_ref().err().map(ToString::to_string);
    let finished = store::sync_runs::finish(pool, run.id, &counts, error.as_deref()).await;
    outcome?;
    let run = finished?.ok_or(SyncError::Superseded)?;
    Ok(SyncSummary {
        run,
        elapsed: started.elapsed(),
    })
}

/// Renews the run's lease every `lease / RENEWALS_PER_LEASE` until another sync took
/// the run over; a renewal that fails (the database is away) is tried again at the next
/// tick, and if the outage outlasts the lease, the next sync takes over.
async fn keep_lease(pool: &PgPool, run_id: Uuid, lease: Duration) -> SyncError {
    let every = (lease / RENEWALS_PER_LEASE).max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The claim just set the lease.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match store::sync_runs::renew(pool, run_id, lease).await {
            Ok(true) => {}
            Ok(false) => return SyncError::Superseded,
            Err(error) => {
                tracing::warn!(run = %run_id, error = %error, "could not renew the sync's lease")
            }
        }
    }
}

async fn sync_scopes(sync: &mut scope::Sync<'_>) -> Result<(), SyncError> {
    for scope in scopes(sync.tenant)? {
        sync.progress.scope_started(&scope);
        sync.sync_scope(&scope).await?;
    }
    Ok(())
}

/// What a tenant's sync walks, in order.
fn scopes(tenant: &Tenant) -> Result<Vec<Scope>, SyncError> {
    Ok(match tenant.credential_kind {
        CredentialKind::Platform => vec![Scope::OwnAccounts],
        CredentialKind::Organization => {
            let mut scopes: Vec<Scope> = tenant
                .platform_ids
                .iter()
                .map(|p| Scope::Platform(p.clone()))
                .collect();
            scopes.push(Scope::OrgAccounts(tenant.org_account_ids.clone()));
            scopes
        }
    })
}
