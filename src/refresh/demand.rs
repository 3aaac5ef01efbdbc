//! The balance use cases' freshness rule, in one place: what "younger than max_age"
//! means, and how a request that needs fresher data than is stored gets it — by
//! joining (or starting) the scope's refresh, waiting up to `wait`, and otherwise
//! answering with the refresh to poll.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Refresher;
use crate::fanout;
use crate::store;
use crate::store::refreshes::{Progress, Refresh, RefreshScope};
use crate::store::tenants::Tenant;

/// How often a waiting request looks whether its data has arrived.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Retry-After never says more than this (an hour), however large the backlog.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// The oldest snapshot time that is still younger than `max_age`: the one cutoff
/// every freshness decision uses.
pub fn cutoff(max_age: Duration) -> DateTime<Utc> {
    let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether the stored data can answer.
#[derive(Debug, Clone)]
pub enum Freshness {
    /// Every listed account of the scope was tried within `max_age` (or the scope's
    /// latest refresh finished within it): answer from what is stored.
    Met,
    /// Not within `wait`: the refresh that will get there, to poll.
    Pending(PendingRefresh),
    /// The refresh failed (the tenant's credential cannot be used).
    Failed(Refresh),
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
    ) -> Result<PendingRefresh, sqlx::Error> {
        let progress =
            store::refreshes::progress(pool, refresh.tenant_id, &refresh.scope, refresh.cutoff)
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

/// A request for data of `scope` no older than `max_age`.
pub struct Demand<'a> {
    pub tenant: &'a Tenant,
    pub scope: RefreshScope,
    pub max_age: Duration,
    /// How long the caller will wait for it before being told to poll.
    pub wait: Duration,
    /// `poll` or `person`.
    pub trigger: &'static str,
}

/// Makes the data of the demand's scope fresh enough, or says where to poll.
/// Joins the scope's running refresh if there is one (on whichever replica it was
/// started), starts one otherwise; the refreshers of every replica do the fetching.
pub async fn freshen(
    pool: &PgPool,
    refresher: Option<&Refresher>,
    rate_per_second: u32,
    demand: &Demand<'_>,
) -> Result<Freshness, sqlx::Error> {
    let cutoff = cutoff(demand.max_age);
    if is_met(pool, demand, cutoff).await? {
        return Ok(Freshness::Met);
    }
    let total = store::refreshes::progress(pool, demand.tenant.id, &demand.scope, cutoff)
        .await?
        .listed;
    let (refresh, started) = store::refreshes::start_or_join(
        pool,
        demand.tenant.id,
        &demand.scope,
        cutoff,
        demand.trigger,
        total,
    )
    .await?;
    if started {
        tracing::info!(tenant = %demand.tenant.slug, refresh = %refresh.id, trigger = demand.trigger,
            accounts = total, "balance refresh started");
    }
    if let Some(refresher) = refresher {
        refresher.wake();
    }
    let deadline = tokio::time::Instant::now() + demand.wait;
    loop {
        let current = store::refreshes::get(pool, demand.tenant.id, refresh.id)
            .await?
            .unwrap_or_else(|| refresh.clone());
        match current.status.as_str() {
            "succeeded" => return Ok(Freshness::Met),
            "failed" => return Ok(Freshness::Failed(current)),
            _ => {}
        }
        if is_met(pool, demand, cutoff).await? {
            return Ok(Freshness::Met);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || current.status != "running" {
            return Ok(Freshness::Pending(
                PendingRefresh::of(pool, current, rate_per_second).await?,
            ));
        }
        tokio::time::sleep(WAIT_POLL.min(deadline - now)).await;
    }
}

/// Every listed account of the scope tried at or after `cutoff`, or at or after the
/// cutoff of the scope's latest refresh that asked for data this fresh and finished
/// within `max_age`.
async fn is_met(
    pool: &PgPool,
    demand: &Demand<'_>,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let tenant_id = demand.tenant.id;
    if tried_since(pool, tenant_id, &demand.scope, cutoff).await? {
        return Ok(true);
    }
    let recent = store::refreshes::recent_success_cutoff(
        pool,
        tenant_id,
        &demand.scope,
        demand.max_age.as_secs_f64(),
    )
    .await?;
    match recent {
        Some(recent) if recent < cutoff => {
            tried_since(pool, tenant_id, &demand.scope, recent).await
        }
        _ => Ok(false),
    }
}

async fn tried_since(
    pool: &PgPool,
    tenant_id: i64,
    scope: &RefreshScope,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(match scope {
        RefreshScope::Tenant => fanout::tenant_is_fresh(pool, tenant_id, cutoff).await?,
        scope => {
            store::refreshes::progress(pool, tenant_id, scope, cutoff)
                .await?
                .pending()
                == 0
        }
    })
}
