//! What the admin pages (`/admin`) show, gathered outside any handler from the same
//! use cases and store reads the API uses: the balance aggregate
//! ([`crate::balances::Balances`]), tenant health (the metrics' freshness query), sync
//! runs, the account listing, and the totals over time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::balances::{Answer, BalanceError, Balances};
use crate::fanout::aggregate::TotalRow;
use crate::fanout::Aggregate;
use crate::http::admin::chart::Series;
use crate::money::CurrencyAmounts;
use crate::refresh;
use crate::store;
use crate::store::admin::LastSync;
use crate::store::tenants::Tenant;

/// One tenant's line on the owner's overview.
#[derive(Debug, Clone)]
pub struct TenantOverview {
    pub slug: String,
    pub listed: i64,
    pub ok: i64,
    /// Accounts whose latest try failed.
    pub failing: i64,
    /// Accounts not read within the refresh interval, never-read ones included.
    pub stale: i64,
    pub oldest: Option<DateTime<Utc>>,
    pub totals: Vec<CurrencyAmounts>,
    pub last_sync: Option<LastSync>,
}

/// Every tenant with its totals, freshness and last sync, by slug.
pub async fn overview(pool: &PgPool, interval: Duration) -> Result<Vec<TenantOverview>, sqlx::Error> {
    let health = store::refreshes::tenant_health(pool, refresh::cutoff(interval)).await?;
    let mut out = Vec::with_capacity(health.len());
    for tenant in health {
        let never_read = (tenant.listed - tenant.ok - tenant.failed).max(0);
        out.push(TenantOverview {
            totals: store::snapshots::tenant_totals(pool, tenant.tenant_id).await?,
            last_sync: store::admin::last_sync(pool, tenant.tenant_id).await?,
            slug: tenant.slug,
            listed: tenant.listed,
            ok: tenant.ok,
            failing: tenant.failed,
            stale: tenant.older + never_read,
            oldest: tenant.oldest,
        });
    }
    out.sort_by(|a, b| a.slug.cmp(&b.slug));
    Ok(out)
}

/// One listed account on a page of the tenant's table, with its latest balance.
#[derive(Debug, Clone)]
pub struct AccountLine {
    pub stripeid: String,
    pub accountid: Option<String>,
    pub platform_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `None`: never read.
    pub balance: Option<AccountBalance>,
}

#[derive(Debug, Clone)]
pub struct AccountBalance {
    /// Whether the latest try returned a balance.
    pub ok: bool,
    pub fetched_at: DateTime<Utc>,
    /// The last good amounts (what the account adds to the totals).
    pub amounts: Vec<CurrencyAmounts>,
    pub good_at: Option<DateTime<Utc>>,
}

/// A page of the account table.
#[derive(Debug, Clone)]
pub struct AccountsPage {
    /// Listed accounts matching the filter.
    pub total: i64,
    /// 1-based.
    pub page: i64,
    pub per_page: i64,
    pub owner: Option<String>,
    pub rows: Vec<AccountLine>,
}

impl AccountsPage {
    pub fn pages(&self) -> i64 {
        ((self.total + self.per_page - 1) / self.per_page).max(1)
    }
}

/// Everything on a tenant's page.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub aggregate: Aggregate,
    pub last_sync: Option<LastSync>,
    pub history: Vec<Series>,
    pub accounts: AccountsPage,
}

/// How many days the chart covers.
pub const HISTORY_DAYS: i64 = 30;

/// The tenant's page: the aggregate as stored (no fetch), the last sync, 30 days of
/// totals, and one page of accounts (of one owner, if given).
pub async fn tenant_view(
    balances: &Balances,
    tenant: &Tenant,
    owner: Option<&str>,
    page: i64,
    per_page: i64,
) -> Result<TenantView, BalanceError> {
    let aggregate = match balances.aggregate(tenant, None, None, None).await? {
        Answer::Ready(aggregate) => aggregate,
        // Without a freshness requirement the aggregate answers from what is stored.
        Answer::Pending(_) => {
            return Err(BalanceError::Credential(
                "the aggregate asked for a refresh it was not given".into(),
            ))
        }
    };
    let pool = &balances.pool;
    let last_sync = store::admin::last_sync(pool, tenant.id).await?;
    let history = history(pool, tenant, &aggregate).await?;
    let accounts = accounts_page(pool, tenant.id, owner, page, per_page).await?;
    Ok(TenantView {
        aggregate,
        last_sync,
        history,
        accounts,
    })
}

async fn accounts_page(
    pool: &PgPool,
    tenant_id: i64,
    owner: Option<&str>,
    page: i64,
    per_page: i64,
) -> Result<AccountsPage, sqlx::Error> {
    let offset = (page - 1).saturating_mul(per_page);
    let listed = store::accounts::page_with_total(pool, tenant_id, owner, offset, per_page).await?;
    let ids: Vec<String> = listed.rows.iter().map(|r| r.stripeid.clone()).collect();
    let mut balances: std::collections::HashMap<String, AccountBalance> =
        store::admin::balances_of(pool, tenant_id, &ids)
            .await?
            .into_iter()
            .map(|row| {
                let amounts = serde_json::from_value(row.amounts).unwrap_or_default();
                (
                    row.stripeid,
                    AccountBalance {
                        ok: row.ok,
                        fetched_at: row.fetched_at,
                        amounts,
                        good_at: row.good_at,
                    },
                )
            })
            .collect();
    let rows = listed
        .rows
        .into_iter()
        .map(|row| AccountLine {
            balance: balances.remove(&row.stripeid),
            stripeid: row.stripeid,
            accountid: row.accountid,
            platform_id: row.platform_id,
            created_at: row.created_at,
        })
        .collect();
    Ok(AccountsPage {
        total: listed.total,
        page,
        per_page,
        owner: owner.map(str::to_owned),
        rows,
    })
}

/// Available totals per currency over the last [`HISTORY_DAYS`] days.
// STAND-IN until the totals-over-time use case lands: the current totals as one point.
async fn history(
    _pool: &PgPool,
    _tenant: &Tenant,
    aggregate: &Aggregate,
) -> Result<Vec<Series>, sqlx::Error> {
    Ok(aggregate
        .totals
        .iter()
        .map(|row: &TotalRow| Series {
            currency: row.currency.clone(),
            points: vec![(aggregate.as_of, row.available)],
        })
        .collect())
}
