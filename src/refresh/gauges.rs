//! Per-tenant gauges for `/metrics` (DESIGN §5), read from Postgres by each worker
//! every few seconds, so any replica's `/metrics` shows the whole fleet's state:
//! how old the oldest snapshot is, how many accounts are stale (older than the
//! interval) or failing, the refresher's backlog (accounts its running refreshes
//! still need), accounts leased right now, the shared rate in force, and per currency
//! the negative-balance exposure (from the kept totals, no account scanned).

use chrono::Utc;
use sqlx::PgPool;

use super::demand;
use super::RefresherOptions;
use crate::freshness::{self, FreshnessMode};
use crate::store;
use crate::store::refreshes::RefreshScope;

pub async fn update(pool: &PgPool, options: &RefresherOptions) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    for tenant in store::refreshes::tenant_health(pool, demand::cutoff(options.interval)).await? {
        let labels = [("tenant", tenant.slug.clone())];
        let oldest_age = tenant.oldest.map_or(0.0, |oldest| {
            (now - oldest).num_milliseconds() as f64 / 1000.0
        });
        metrics::gauge!("tally_oldest_snapshot_age_seconds", &labels).set(oldest_age);
        metrics::gauge!("tally_accounts_listed", &labels).set(tenant.listed as f64);
        // Not confirmed within the interval, by the one freshness rule: in `events` mode
        // an account a live stream vouches for is not stale however old its fetch.
        let tenant_freshness =
            demand::tenant_freshness(pool, tenant.tenant_id, options.max_silence).await?;
        let stale = if tenant_freshness.mode == FreshnessMode::Poll {
            let never_tried = tenant.listed - tenant.ok - tenant.failed;
            never_tried + tenant.older
        } else {
            let requirement = freshness::requirement(&tenant_freshness, now, options.interval);
            store::refreshes::progress(pool, tenant.tenant_id, &RefreshScope::Tenant, &requirement)
                .await?
                .pending()
        };
        metrics::gauge!("tally_accounts_stale", &labels).set(stale.max(0) as f64);
        metrics::gauge!("tally_accounts_failing", &labels).set(tenant.failed as f64);
        metrics::gauge!("tally_accounts_leased", &labels).set(tenant.leased as f64);
        if let Some(rate) = tenant.rate {
            metrics::gauge!("tally_stripe_rate_per_second", &labels).set(f64::from(rate));
        }
        let mut backlog = 0;
        for refresh in store::refreshes::running(pool, tenant.tenant_id).await? {
            let requirement =
                demand::refresh_requirement(pool, &refresh, options.max_silence).await?;
            backlog +=
                store::refreshes::progress(pool, tenant.tenant_id, &refresh.scope, &requirement)
                    .await?
                    .pending();
        }
        metrics::gauge!("tally_refresh_backlog_accounts", &labels).set(backlog as f64);
        let waiting = store::changes::waiting(pool, tenant.tenant_id).await?;
        metrics::gauge!("tally_changed_accounts_waiting", &labels).set(waiting.accounts as f64);
        for (currency, exposure) in
            store::snapshots::tenant_exposure(pool, tenant.tenant_id).await?
        {
            let labels = [("tenant", tenant.slug.clone()), ("currency", currency)];
            metrics::gauge!("tally_negative_balance_minor", &labels).set(exposure.negative as f64);
            metrics::gauge!("tally_negative_accounts", &labels).set(exposure.accounts as f64);
        }
    }
    Ok(())
}
