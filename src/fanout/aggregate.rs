//! Reading the per-currency aggregate from the latest snapshots. The whole tenant is
//! read from the kept totals (no scan); one owner's accounts are summed here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::FanoutError;
use crate::csv_out::Cell::{Number, Text};
use crate::csv_out::CsvOut;
use crate::domain::{Currency, FetchFailure, OwnerId};
use crate::freshness::{self, AccountState, FreshnessMode, Requirement, TenantFreshness};
use crate::money::{CurrencyAmounts, Exposure, Exposures, Totals};
use crate::store;
use crate::store::refreshes::RefreshScope;

/// The balances endpoint's body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BalanceAggregate)]
pub struct Aggregate {
    #[schema(schema_with = aggregate_kind)]
    pub object: &'static str,
    pub tenant: String,
    pub accountid: Option<String>,
    pub as_of: DateTime<Utc>,
    /// The oldest snapshot that contributed: how stale the totals can be.
    pub oldest_fetched_at: Option<DateTime<Utc>>,
    /// How the tenant's balances are kept current: `poll` or `events`.
    pub freshness_mode: FreshnessMode,
    /// Whether the tenant's event stream is live (`events` mode, an event within
    /// `webhooks.max_silence_secs`, nothing refused since), so it vouches for the
    /// accounts no event named since their fetch.
    pub stream_live: bool,
    /// The oldest `confirmedAt` of the accounts that contributed: `oldestFetchedAt`,
    /// or later where the live stream vouches for the oldest accounts.
    pub oldest_confirmed_at: Option<DateTime<Utc>>,
    pub accounts: AccountCounts,
    /// True only if every listed account contributed a balance.
    pub complete: bool,
    pub totals: Vec<TotalRow>,
    pub failures: Vec<Failure>,
}

fn aggregate_kind() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["balance_aggregate"]))
        .build()
        .into()
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, ToSchema)]
pub struct AccountCounts {
    pub total: i64,
    pub ok: i64,
    pub failed: i64,
    /// Accounts not tried within `refresh.interval_secs` (the refresher's backlog).
    pub stale: i64,
}

/// One currency's totals, in its minor unit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotalRow {
    pub currency: String,
    /// The net sum of the accounts' available balances (those below zero included).
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
    /// The platform's exposure: what the accounts whose available balance in this
    /// currency is below zero owe, as a positive amount (0 when none is).
    #[schema(minimum = 0)]
    pub negative: i64,
    /// How many accounts have an available balance below zero in this currency.
    #[schema(minimum = 0)]
    pub negative_accounts: i64,
}

impl TotalRow {
    pub fn new(row: CurrencyAmounts, exposure: Exposure) -> TotalRow {
        TotalRow {
            currency: row.currency,
            available: row.amounts.available,
            pending: row.amounts.pending,
            connect_reserved: row.amounts.connect_reserved,
            instant_available: row.amounts.instant_available,
            negative: exposure.negative,
            negative_accounts: exposure.accounts,
        }
    }
}

/// An account that did not contribute a fresh balance, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AccountFailure)]
pub struct Failure {
    pub stripeid: String,
    #[serde(flatten)]
    pub failure: FetchFailure,
    /// When the failing try was made (`None`: never tried).
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the account's last good balance was fetched: the totals still hold it
    /// (`None`: never read, so it adds nothing).
    pub last_good_at: Option<DateTime<Utc>>,
}

impl Failure {
    fn never_fetched(stripeid: String) -> Failure {
        Failure {
            stripeid,
            failure: FetchFailure {
                error_type: Some("tally_error".into()),
                code: Some("not-fetched".into()),
                message: Some("no balance has been fetched for this account yet".into()),
                hint: Some(
                    "The refresher has not reached it yet; ask with max_age to wait for it.".into(),
                ),
                ..FetchFailure::default()
            },
            fetched_at: None,
            last_good_at: None,
        }
    }
}

/// Reads the aggregate of the whole tenant, or of one owner's accounts, optionally
/// only one currency. `tenant_state`: the whole tenant's kept state when the caller
/// just read it (the freshness look did), so it is not read twice. `backlog`: the
/// refresh interval's requirement; the accounts that do not meet it are counted
/// `stale`.
pub async fn read(
    pool: &PgPool,
    tenant_id: i64,
    slug: &str,
    owner: Option<&OwnerId>,
    currency: Option<&Currency>,
    tenant_state: Option<store::snapshots::TenantFreshness>,
    backlog: &Requirement,
) -> Result<Aggregate, FanoutError> {
    let (counts, oldest, totals, failures) = match owner {
        None => {
            let freshness = match tenant_state {
                Some(state) => state,
                None => store::snapshots::tenant_freshness(pool, tenant_id).await?,
            };
            let listed = freshness.listed;
            // The stale count needs no count of its own when even the oldest snapshot
            // was fetched since the interval's cutoff: every fetched account meets the
            // rule by its fetch, whatever the stream says, so only the accounts never
            // fetched are stale. Otherwise it is counted with the totals, in the same
            // round trip.
            let every_fetched_meets = freshness
                .oldest
                .is_none_or(|oldest| oldest >= backlog.fetched_since);
            let (totals, progress) = store::snapshots::tenant_totals_and_progress(
                pool,
                tenant_id,
                (!every_fetched_meets).then_some(backlog),
            )
            .await?;
            let stale = match progress {
                Some(progress) => progress.pending(),
                None => (listed - freshness.ok - freshness.failed).max(0),
            };
            // The kept counts say whether any account failed: a healthy tenant's
            // poll does not look for failures.
            let failed = match freshness.failed {
                0 => Vec::new(),
                _ => store::snapshots::tenant_failures(pool, tenant_id).await?,
            };
            let mut failures: Vec<Failure> = failed
                .into_iter()
                .map(|failed| Failure {
                    stripeid: failed.stripeid,
                    failure: failed.error.0,
                    fetched_at: Some(failed.fetched_at),
                    last_good_at: failed.good_at,
                })
                .collect();
            // Accounts with no snapshot at all did not contribute either: list them
            // rather than let them hide in the count.
            if freshness.ok + freshness.failed < freshness.listed {
                failures.extend(
                    store::snapshots::never_fetched(pool, tenant_id)
                        .await?
                        .into_iter()
                        .map(Failure::never_fetched),
                );
            }
            let counts = AccountCounts {
                total: listed,
                ok: freshness.ok,
                failed: listed - freshness.ok,
                stale,
            };
            (counts, freshness.oldest, totals, failures)
        }
        Some(owner) => {
            let rows = store::snapshots::scope_latest(pool, tenant_id, Some(owner)).await?;
            let mut totals = Totals::default();
            let mut exposures = Exposures::default();
            let mut failures = Vec::new();
            let mut ok = 0;
            let mut oldest: Option<DateTime<Utc>> = None;
            for row in &rows {
                if let Some(at) = row.fetched_at {
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
                // Every account adds its last good amounts, failing or not.
                let amounts = row.totals()?;
                totals
                    .add(&amounts)
                    .map_err(store::snapshots::SnapshotError::from)?;
                exposures
                    .add_account(&amounts)
                    .map_err(store::snapshots::SnapshotError::from)?;
                match (row.ok, &row.error) {
                    (Some(true), _) => ok += 1,
                    (Some(false), Some(error)) => failures.push(Failure {
                        stripeid: row.stripeid.clone(),
                        failure: error.0.clone(),
                        fetched_at: row.fetched_at,
                        last_good_at: row.good_at,
                    }),
                    _ => failures.push(Failure::never_fetched(row.stripeid.clone())),
                }
            }
            let total = rows.len() as i64;
            let scope = RefreshScope::Owner(owner.to_owned());
            let counts = AccountCounts {
                total,
                ok,
                failed: total - ok,
                stale: store::refreshes::progress(pool, tenant_id, &scope, backlog)
                    .await?
                    .pending(),
            };
            let rows = totals
                .rows()
                .into_iter()
                .map(|row| {
                    let exposure = exposures.get(&row.currency);
                    (row, exposure)
                })
                .collect();
            (counts, oldest, rows, failures)
        }
    };
    let totals = totals
        .into_iter()
        .filter(|(row, _)| currency.is_none_or(|c| row.currency == c.as_str()))
        .map(|(row, exposure)| TotalRow::new(row, exposure))
        .collect();
    Ok(Aggregate {
        object: "balance_aggregate",
        tenant: slug.to_owned(),
        accountid: owner.map(OwnerId::to_string),
        as_of: Utc::now(),
        oldest_fetched_at: oldest,
        // What the stored data alone says; the use case adds the stream's word.
        freshness_mode: FreshnessMode::Poll,
        stream_live: false,
        oldest_confirmed_at: oldest,
        complete: counts.ok == counts.total,
        accounts: counts,
        totals,
        failures,
    })
}

/// The aggregate's detail as CSV: one row per account and currency. An account whose
/// latest try failed has its last good amounts' rows with status `failed` and the
/// error code (what the totals hold for it); one never read is one row with its error
/// The aggregate's CSV columns, in order (also the document's description of it).
pub const CSV_COLUMNS: [&str; 14] = [
    "stripeid",
    "accountid",
    "platformid",
    "currency",
    "available",
    "pending",
    "connect_reserved",
    "instant_available",
    "fetched_at",
    "status",
    "error_code",
    "last_good_at",
    "confirmed_at",
    "freshness_by",
];

/// code and no amounts. `last_good_at` says when the amounts were fetched.
pub async fn csv(
    pool: &PgPool,
    tenant_id: i64,
    owner: Option<&OwnerId>,
    currency: Option<&Currency>,
    tenant_freshness: &TenantFreshness,
) -> Result<Vec<u8>, FanoutError> {
    let rows = store::snapshots::scope_latest(pool, tenant_id, owner).await?;
    let now = Utc::now();
    let mut out = CsvOut::new();
    out.header(&CSV_COLUMNS)?;
    for row in rows {
        let timestamp = |at: Option<DateTime<Utc>>| {
            at.map(|at| crate::domain::api_timestamp(&at))
                .unwrap_or_default()
        };
        let fetched_at = timestamp(row.fetched_at);
        let last_good_at = timestamp(row.good_at);
        let account = AccountState {
            fetched_at: row.fetched_at,
            changed_at: row.changed_at,
        };
        let confirmation = freshness::confirm(tenant_freshness, account, now);
        let confirmed_at = timestamp(confirmation.map(|c| c.confirmed_at));
        let freshness_by = confirmation.map_or("", |c| c.by.as_str());
        let accountid = row.accountid.clone().unwrap_or_default();
        let platform = row.platform_id.clone().unwrap_or_default();
        let (status, code) = if row.ok == Some(true) {
            ("ok", String::new())
        } else {
            let code = row
                .error
                .as_ref()
                .and_then(|e| e.code_or_type())
                .unwrap_or("not-fetched")
                .to_owned();
            ("failed", code)
        };
        if row.good_at.is_none() {
            // Never read: nothing in the totals, one row saying why.
            out.row(&[
                Text(&row.stripeid),
                Text(&accountid),
                Text(&platform),
                Text(""),
                Text(""),
                Text(""),
                Text(""),
                Text(""),
                Text(&fetched_at),
                Text(status),
                Text(&code),
                Text(""),
                Text(&confirmed_at),
                Text(freshness_by),
            ])?;
            continue;
        }
        for total in row.totals()?.rows() {
            if currency.is_some_and(|c| c.as_str() != total.currency) {
                continue;
            }
            let a = total.amounts;
            out.row(&[
                Text(&row.stripeid),
                Text(&accountid),
                Text(&platform),
                Text(&total.currency),
                Number(a.available),
                Number(a.pending),
                Number(a.connect_reserved),
                Number(a.instant_available),
                Text(&fetched_at),
                Text(status),
                Text(&code),
                Text(&last_good_at),
                Text(&confirmed_at),
                Text(freshness_by),
            ])?;
        }
    }
    Ok(out.finish()?)
}
