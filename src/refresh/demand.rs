//! How a request that needs fresher data than is stored gets it: by joining (or
//! starting) the scope's refresh, waiting up to `wait`, and otherwise answering with
//! the refresh to poll. What "fresh enough" means is `crate::freshness`'s rule; this
//! module reads what the rule needs (the tenant's mode and event stream) and applies
//! it to a scope.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Refresher;
use crate::domain::{RefreshStatus, RefreshTrigger};
use crate::fanout;
use crate::freshness::{self, Requirement, TenantFreshness};
use crate::store;
use crate::store::refreshes::{Progress, Refresh, RefreshFailure, RefreshScope};
use crate::store::tenants::Tenant;

/// How often a waiting request looks whether its data has arrived.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Retry-After never says more than this (an hour), however large the backlog.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// The oldest snapshot time that is still younger than `max_age`, now.
pub fn cutoff(max_age: Duration) -> DateTime<Utc> {
    freshness::cutoff(Utc::now(), max_age)
}

/// The tenant's side of the freshness rule, read now: its mode and event stream.
pub async fn tenant_freshness(
    pool: &PgPool,
    tenant_id: i64,
    max_silence: Duration,
) -> Result<TenantFreshness, sqlx::Error> {
    let (mode, stream) = store::changes::mode_and_stream(pool, tenant_id).await?;
    Ok(TenantFreshness {
        mode,
        stream,
        max_silence,
    })
}

/// The tenant's side of the freshness rule and its whole kept state (counts, oldest
/// snapshot), read now in one round trip: what a whole-tenant answer starts from.
pub async fn tenant_state(
    pool: &PgPool,
    tenant_id: i64,
    max_silence: Duration,
) -> Result<(TenantFreshness, store::snapshots::TenantFreshness), sqlx::Error> {
    let (mode, stream, counts) = store::snapshots::tenant_look(pool, tenant_id).await?;
    let tenant = TenantFreshness {
        mode,
        stream,
        max_silence,
    };
    Ok((tenant, counts))
}

/// What a refresh still asks for, judged now: its cutoff, and (unless it is a sweep,
/// whose point is to fetch) the live stream's word for unchanged accounts.
pub async fn refresh_requirement(
    pool: &PgPool,
    refresh: &Refresh,
    max_silence: Duration,
) -> Result<Requirement, sqlx::Error> {
    if refresh.trigger == RefreshTrigger::Schedule {
        return Ok(Requirement::fetched_since(refresh.cutoff));
    }
    let tenant = tenant_freshness(pool, refresh.tenant_id, max_silence).await?;
    Ok(freshness::requirement_since(
        &tenant,
        Utc::now(),
        refresh.cutoff,
    ))
}

/// Whether the stored data can answer.
#[derive(Debug, Clone)]
pub enum Freshness {
    /// Every listed account of the scope meets the rule for the demand's cutoff:
    /// answer from what is stored.
    Met(Met),
    /// Not within `wait`: the refresh that will get there, to poll.
    Pending(PendingRefresh),
    /// The refresh failed: it can no longer finish (the tenant's key was rejected or
    /// cannot be opened). The reason.
    Failed(String),
    /// The tenant was removed: no refresh starts for it, and the one it had ended.
    TenantRemoved,
}

/// What the look that found the data fresh enough read, for the answer to reuse.
#[derive(Debug, Clone)]
pub struct Met {
    /// The tenant's mode and stream, as of when the request arrived.
    pub tenant: TenantFreshness,
    /// The whole tenant's kept counts and oldest snapshot (a whole-tenant scope only).
    pub counts: Option<store::snapshots::TenantFreshness>,
}

#[derive(Debug, Clone)]
pub struct PendingRefresh {
    pub refresh: Refresh,
    pub progress: Progress,
    /// Until the refresh should be done, from the work left and the tenant's rate.
    pub retry_after: Duration,
    pub estimated_completion: DateTime<Utc>,
}

impl PendingRefresh {
    pub async fn of(
        pool: &PgPool,
        refresh: Refresh,
        rate_per_second: u32,
        max_silence: Duration,
    ) -> Result<PendingRefresh, sqlx::Error> {
        let requirement = refresh_requirement(pool, &refresh, max_silence).await?;
        let progress =
            store::refreshes::progress(pool, refresh.tenant_id, &refresh.scope, &requirement)
                .await?;
        let pending = u64::try_from(progress.pending()).unwrap_or(0);
        let secs = pending
            .div_ceil(u64::from(rate_per_second.max(1)))
            .clamp(1, MAX_RETRY_AFTER_SECS);
        let retry_after = Duration::from_secs(secs);
        Ok(PendingRefresh {
            estimated_completion: Utc::now()
                + chrono::Duration::from_std(retry_after).unwrap_or_default(),
            refresh,
            progress,
            retry_after,
        })
    }
}

/// A request for data of `scope` tried at or after `cutoff`: `max_age` before the
/// request arrived, or the cutoff of the refresh whose result it asks for.
pub struct Demand<'a> {
    pub tenant: &'a Tenant,
    pub scope: RefreshScope,
    pub cutoff: DateTime<Utc>,
    /// How long the caller will wait for it before being told to poll.
    pub wait: Duration,
    /// `Poll` or `Person`.
    pub trigger: RefreshTrigger,
    /// `webhooks.max_silence_secs`.
    pub max_silence: Duration,
}

/// Makes the data of the demand's scope fresh enough, or says where to poll.
/// Joins the scope's running refresh if there is one (on whichever replica it was
/// started), starts one otherwise; the refreshers of every replica do the fetching.
///
/// Only the rule decides: a refresh that finished is no answer by itself. One that
/// started before this request and did not reach its cutoff (joining never moves a
/// refresh's cutoff past its start) is followed by another, within `wait`; after
/// `wait`, the refresh is handed back, and once it succeeded its `result` answers
/// with what it fetched.
pub async fn freshen(
    pool: &PgPool,
    refresher: Option<&Refresher>,
    rate_per_second: u32,
    demand: &Demand<'_>,
) -> Result<Freshness, sqlx::Error> {
    // The stream's word is taken as of when the request arrived: an event that
    // arrives while it waits does not make an account it named fresh.
    let asked_at = Utc::now();
    // A whole-tenant demand's first look reads the tenant's counts with its mode.
    let (tenant_freshness, counts) = match demand.scope {
        RefreshScope::Tenant => {
            let (tenant, counts) = tenant_state(pool, demand.tenant.id, demand.max_silence).await?;
            (tenant, Some(counts))
        }
        _ => (
            tenant_freshness(pool, demand.tenant.id, demand.max_silence).await?,
            None,
        ),
    };
    let requirement = freshness::requirement_since(&tenant_freshness, asked_at, demand.cutoff);
    if let Some(met) = meets(pool, demand, tenant_freshness, &requirement, counts).await? {
        return Ok(Freshness::Met(met));
    }
    let Some(mut refresh) = start_or_join(pool, refresher, demand, &requirement).await? else {
        return Ok(Freshness::TenantRemoved);
    };
    let deadline = tokio::time::Instant::now() + demand.wait;
    loop {
        // Made before looking, so a refresh this process's worker ends while we look
        // still wakes the nap below.
        let ended = refresher.map(Refresher::ended);
        let current = store::refreshes::get(pool, demand.tenant.id, refresh.id)
            .await?
            .unwrap_or_else(|| refresh.clone());
        match current.failure() {
            Some(RefreshFailure::TenantRemoved) => return Ok(Freshness::TenantRemoved),
            Some(RefreshFailure::Reason(reason)) => {
                return Ok(Freshness::Failed(reason.to_owned()))
            }
            None => {}
        }
        if let Some(met) = meets(pool, demand, tenant_freshness, &requirement, None).await? {
            return Ok(Freshness::Met(met));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Freshness::Pending(
                PendingRefresh::of(pool, current, rate_per_second, demand.max_silence).await?,
            ));
        }
        if current.status != RefreshStatus::Running {
            // It ended without reaching this request's cutoff: the next one will.
            match start_or_join(pool, refresher, demand, &requirement).await? {
                Some(next) => refresh = next,
                None => return Ok(Freshness::TenantRemoved),
            }
        }
        // Another replica's work is seen at the next look; this process's worker says
        // at once when it ends a refresh (the CLI's fan-out, a poll on the replica
        // that did the work).
        let nap = tokio::time::sleep(WAIT_POLL.min(deadline - now));
        match ended {
            Some(ended) => {
                tokio::select! {
                    () = nap => {}
                    () = ended => {}
                }
            }
            None => nap.await,
        }
    }
}

/// Starts the demand's refresh or joins the scope's running one, and wakes this
/// process's refresher. `None`: the tenant was removed.
async fn start_or_join(
    pool: &PgPool,
    refresher: Option<&Refresher>,
    demand: &Demand<'_>,
    requirement: &Requirement,
) -> Result<Option<Refresh>, sqlx::Error> {
    let total = store::refreshes::progress(pool, demand.tenant.id, &demand.scope, requirement)
        .await?
        .listed;
    let Some((refresh, started)) = store::refreshes::start_or_join(
        pool,
        demand.tenant.id,
        &demand.scope,
        demand.cutoff,
        demand.trigger,
        total,
    )
    .await?
    else {
        return Ok(None);
    };
    if started {
        tracing::info!(tenant = %demand.tenant.slug, refresh = %refresh.id, trigger = %demand.trigger,
            accounts = total, "balance refresh started");
    }
    if let Some(refresher) = refresher {
        refresher.wake();
    }
    Ok(Some(refresh))
}

/// What the look read, when every listed account of the demand's scope meets the
/// requirement (judged for the whole tenant from its kept counts, which the answer
/// reuses; `counts`: those counts when just read); `None` otherwise.
async fn meets(
    pool: &PgPool,
    demand: &Demand<'_>,
    tenant: TenantFreshness,
    requirement: &Requirement,
    counts: Option<store::snapshots::TenantFreshness>,
) -> Result<Option<Met>, sqlx::Error> {
    let tenant_id = demand.tenant.id;
    Ok(match &demand.scope {
        RefreshScope::Tenant => fanout::tenant_fresh_state(pool, tenant_id, requirement, counts)
            .await?
            .map(|counts| Met {
                tenant,
                counts: Some(counts),
            }),
        scope => {
            let pending = store::refreshes::progress(pool, tenant_id, scope, requirement)
                .await?
                .pending();
            (pending == 0).then_some(Met {
                tenant,
                counts: None,
            })
        }
    })
}
