//! What the admin pages (`/admin`) show, gathered outside any handler from the same
//! use cases and store reads the API uses: the balance aggregate
//! ([`crate::balances::Balances`]), tenant health (the metrics' freshness query), sync
//! runs, the account listing, the accounts below zero, and the totals over time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::balances::{Answer, BalanceError, Balances};
use crate::domain::OwnerId;
use crate::fanout::Aggregate;
use crate::freshness::{self, AccountState, Confirmation, TenantFreshness};
use crate::money::{CurrencyAmounts, Exposure};
use crate::refresh;
use crate::store;
use crate::store::admin::{BelowZero, LastSync};
use crate::store::tenants::Tenant;
use crate::totals::{totals_over_time, Interval, TotalsBucket, TotalsError};

/// Why a page's data could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(transparent)]
    Balances(#[from] BalanceError),
    #[error(transparent)]
    Totals(#[from] TotalsError),
    #[error("the aggregate answered with a refresh no one asked for")]
    UnaskedRefresh,
}

impl From<sqlx::Error> for DashboardError {
    fn from(error: sqlx::Error) -> DashboardError {
        DashboardError::Balances(BalanceError::from(error))
    }
}

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
    /// Per currency in which some account is below zero: what they owe, and how many.
    pub exposure: Vec<(String, Exposure)>,
    pub last_sync: Option<LastSync>,
}

/// Every tenant with its totals, freshness and last sync, by slug.
pub async fn overview(
    pool: &PgPool,
    interval: Duration,
) -> Result<Vec<TenantOverview>, sqlx::Error> {
    let health = store::refreshes::tenant_health(pool, refresh::cutoff(interval)).await?;
    // A removed tenant is not in `health` (its page answers 404 `tenant-removed`).
    let mut out = Vec::with_capacity(health.len());
    for tenant in health {
        let never_read = (tenant.listed - tenant.ok - tenant.failed).max(0);
        let (totals, exposure): (Vec<_>, Vec<_>) =
            store::snapshots::tenant_totals(pool, tenant.tenant_id)
                .await?
                .into_iter()
                .map(|(amounts, exposure)| {
                    let currency = amounts.currency.clone();
                    (amounts, (currency, exposure))
                })
                .unzip();
        out.push(TenantOverview {
            totals,
            exposure: exposure
                .into_iter()
                .filter(|(_, exposure)| exposure.accounts > 0)
                .collect(),
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
    /// Up to when the balance is known to be the account's, and how.
    pub confirmation: Option<Confirmation>,
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
    /// The accounts below zero (one row per account and currency), most owed first, at
    /// most [`BELOW_ZERO_SHOWN`]; the aggregate's `negativeAccounts` count them all.
    pub below_zero: Vec<BelowZero>,
    pub last_sync: Option<LastSync>,
    pub history: Vec<Series>,
    pub accounts: AccountsPage,
}

/// How many days the chart covers.
pub const HISTORY_DAYS: i64 = 30;

/// How many accounts below zero the tenant's page lists.
pub const BELOW_ZERO_SHOWN: i64 = 100;

/// The tenant's page: the aggregate as stored (no fetch), the last sync, 30 days of
/// totals, and one page of accounts (of one owner, if given).
pub async fn tenant_view(
    balances: &Balances,
    tenant: &Tenant,
    owner: Option<&OwnerId>,
    page: i64,
    per_page: i64,
) -> Result<TenantView, DashboardError> {
    let aggregate = match balances.aggregate(tenant, None, None, None).await? {
        Answer::Ready(aggregate) => aggregate,
        // Without a freshness requirement the aggregate answers from what is stored.
        Answer::Pending(_) => return Err(DashboardError::UnaskedRefresh),
    };
    let pool = &balances.pool;
    let last_sync = store::admin::last_sync(pool, tenant.id).await?;
    let below_zero = store::admin::below_zero(pool, tenant.id, BELOW_ZERO_SHOWN).await?;
    let history = history(pool, tenant).await?;
    let tenant_freshness =
        refresh::demand::tenant_freshness(pool, tenant.id, balances.max_silence).await?;
    let accounts = accounts_page(pool, tenant.id, &tenant_freshness, owner, page, per_page).await?;
    Ok(TenantView {
        aggregate,
        below_zero,
        last_sync,
        history,
        accounts,
    })
}

async fn accounts_page(
    pool: &PgPool,
    tenant_id: i64,
    tenant_freshness: &TenantFreshness,
    owner: Option<&OwnerId>,
    page: i64,
    per_page: i64,
) -> Result<AccountsPage, sqlx::Error> {
    let offset = (page - 1).saturating_mul(per_page);
    let listed = store::accounts::page_with_total(pool, tenant_id, owner, offset, per_page).await?;
    let ids: Vec<String> = listed.rows.iter().map(|r| r.stripeid.clone()).collect();
    let now = Utc::now();
    let mut balances: std::collections::HashMap<String, AccountBalance> =
        store::admin::balances_of(pool, tenant_id, &ids)
            .await?
            .into_iter()
            .map(|row| {
                let amounts = serde_json::from_value(row.amounts).unwrap_or_default();
                let state = AccountState {
                    fetched_at: Some(row.fetched_at),
                    changed_at: row.changed_at,
                };
                (
                    row.stripeid,
                    AccountBalance {
                        ok: row.ok,
                        fetched_at: row.fetched_at,
                        amounts,
                        good_at: row.good_at,
                        confirmation: freshness::confirm(tenant_freshness, state, now),
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
        owner: owner.map(OwnerId::to_string),
        rows,
    })
}

/// One currency's totals over time: `(bucket end, minor units)`, as the pages draw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub currency: String,
    pub points: Vec<(DateTime<Utc>, i64)>,
}

/// Available totals per currency at the end of each of the last [`HISTORY_DAYS`]
/// UTC days (today's bucket holds what is stored so far), from the totals-over-time
/// use case: stored data only, nothing asked of Stripe. A currency no account held
/// at a bucket end has no point there.
async fn history(pool: &PgPool, tenant: &Tenant) -> Result<Vec<Series>, TotalsError> {
    let to = Utc::now();
    let from = to - chrono::Duration::days(HISTORY_DAYS - 1);
    let series = totals_over_time(pool, tenant.id, Interval::Day, from, to, None, None).await?;
    Ok(series_per_currency(&series.buckets))
}

/// Buckets (any order) → one series per currency, oldest point first.
pub fn series_per_currency(buckets: &[TotalsBucket]) -> Vec<Series> {
    let mut by_currency: BTreeMap<&str, Vec<(DateTime<Utc>, i64)>> = BTreeMap::new();
    for bucket in buckets {
        for row in &bucket.totals {
            by_currency
                .entry(row.currency.as_str())
                .or_default()
                .push((bucket.at, row.available));
        }
    }
    by_currency
        .into_iter()
        .map(|(currency, mut points)| {
            points.sort_by_key(|(at, _)| *at);
            Series {
                currency: currency.to_owned(),
                points,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::totals::TotalsAtRow;
    use chrono::TimeZone;

    fn row(currency: &str, available: i64) -> TotalsAtRow {
        TotalsAtRow {
            currency: currency.into(),
            available,
            pending: 0,
            connect_reserved: 0,
            instant_available: 0,
            negative: None,
            negative_accounts: None,
        }
    }

    #[test]
    fn buckets_become_one_series_per_currency_in_time_order() {
        let day = |d| {
            Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0)
                .single()
                .expect("date")
        };
        let buckets = vec![
            TotalsBucket {
                at: day(3),
                accounts: 2,
                missing: 0,
                totals: vec![row("eur", 5), row("usd", 30)],
            },
            TotalsBucket {
                at: day(2),
                accounts: 1,
                missing: 1,
                totals: vec![row("usd", 20)],
            },
            TotalsBucket {
                at: day(1),
                accounts: 0,
                missing: 2,
                totals: vec![],
            },
        ];
        let series = series_per_currency(&buckets);
        assert_eq!(
            series,
            vec![
                Series {
                    currency: "eur".into(),
                    points: vec![(day(3), 5)]
                },
                Series {
                    currency: "usd".into(),
                    points: vec![(day(2), 20), (day(3), 30)]
                },
            ]
        );
    }
}
