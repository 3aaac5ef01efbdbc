//! The close as answered: a tenant's day (per currency, differences first), one
//! account's days, and the day as CSV, one row per account and currency.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use futures::{Stream, StreamExt};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use super::compute::{CurrencySummary, DaySummary};
use crate::csv_out::Cell::{Number, Text};
use crate::csv_out::CsvOut;
use crate::domain::{api_timestamp, StripeAccountId};
use crate::money::{Activity, Split};
use crate::store;
use crate::store::closes::{AccountDay, DayClose, TieOut};
use crate::store::tenants::Tenant;

/// Differences listed in a day's answer (all are in its CSV).
const DIFFERENCES_LISTED: usize = 100;

/// Available and pending, and their sum, in minor units.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct SplitView {
    pub available: i64,
    pub pending: i64,
    pub total: i64,
}

impl From<Split> for SplitView {
    fn from(s: Split) -> SplitView {
        SplitView {
            available: s.available,
            pending: s.pending,
            total: s.available.saturating_add(s.pending),
        }
    }
}

/// One reporting category's activity.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryView {
    /// Stripe's `reporting_category` (`charge`, `refund`, `dispute`, `payout`, `fee`, …).
    pub category: String,
    pub count: i64,
    /// Gross, fees and net (net = gross − fees), minor units.
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
}

fn categories(activity: &std::collections::BTreeMap<String, Activity>) -> Vec<CategoryView> {
    activity
        .iter()
        .map(|(category, a)| CategoryView {
            category: category.clone(),
            count: a.count,
            amount: a.amount,
            fee: a.fee,
            net: a.net,
        })
        .collect()
}

/// A currency of a tenant's day.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrencyClose {
    pub currency: String,
    pub opening: SplitView,
    pub activity: Vec<CategoryView>,
    pub closing: SplitView,
    pub transactions: i64,
    /// Account rows in this currency, and how they tie out.
    pub accounts: i64,
    pub matched: i64,
    pub difference: i64,
    pub unverified: i64,
    /// The differences summed: Stripe's balance (rolled back to the day's end) minus the closing.
    pub difference_amount: SplitView,
    /// Exposure: closing available balances below zero, summed as a positive amount.
    pub negative: i64,
    pub negative_accounts: i64,
}

impl CurrencyClose {
    fn new(currency: &str, s: &CurrencySummary) -> CurrencyClose {
        CurrencyClose {
            currency: currency.to_owned(),
            opening: s.opening.into(),
            activity: categories(&s.activity),
            closing: s.closing.into(),
            transactions: s.transactions,
            accounts: s.accounts,
            matched: s.matched,
            difference: s.difference,
            unverified: s.unverified,
            difference_amount: s.difference_amount.into(),
            negative: s.negative,
            negative_accounts: s.negative_accounts,
        }
    }
}

/// A transaction near a difference.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NearTransaction {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub reporting_category: String,
    pub net: i64,
    pub created: String,
    pub available_on: String,
}

/// An account whose closing does not tie out.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DifferenceView {
    pub stripeid: String,
    pub currency: String,
    pub closing: SplitView,
    /// Stripe's balance rolled back to the day's end, minus the closing.
    pub difference: SplitView,
    /// When Stripe answered the balance checked against (Stripe's clock).
    pub checked_at: String,
    /// The stored transactions nearest the day's end in that currency.
    pub nearest: Vec<NearTransaction>,
}

/// A tenant's day.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DayCloseView {
    /// Always `dailyClose`.
    pub object: &'static str,
    pub tenant: String,
    /// The local date, in `timezone`.
    pub date: NaiveDate,
    pub timezone: String,
    /// The UTC instants the local day spans: `[startsAt, endsAt)`.
    pub starts_at: String,
    pub ends_at: String,
    /// `open` until `close.settle_secs` after the day's end (the numbers may still
    /// move), then `closed`.
    pub state: &'static str,
    pub closed_at: Option<String>,
    /// How often a late transaction reopened the closed day.
    pub reopened: i32,
    pub computed_at: String,
    pub currencies: Vec<CurrencyClose>,
    /// Account rows that do not tie out, first 100 (every one is in the CSV).
    pub differences: Vec<DifferenceView>,
}

/// Why a day has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no close for {day} yet: its end has not passed on Stripe's clock as tally last read it, or no account's ledger reaches back to it")]
    NotReady { day: NaiveDate },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

fn summary_of(day: &DayClose) -> DaySummary {
    serde_json::from_value(day.summary.clone()).unwrap_or_default()
}

/// The tenant's day, as computed.
pub async fn day(
    pool: &PgPool,
    tenant: &Tenant,
    date: NaiveDate,
) -> Result<DayCloseView, ReportError> {
    let stored = store::closes::day(pool, tenant.id, date)
        .await?
        .ok_or(ReportError::NotReady { day: date })?;
    let summary = summary_of(&stored);
    let mut differences = Vec::new();
    if summary.values().any(|s| s.difference > 0) {
        let mut rows = store::closes::day_rows(pool, tenant.id, date);
        while let Some(row) = rows.next().await {
            let row = row?;
            let TieOut::Difference {
                stripe_at,
                difference,
                ..
            } = row.tieout
            else {
                break; // differences come first
            };
            let nearest = store::ledger::nearest(
                pool,
                tenant.id,
                &row.stripeid,
                &row.currency,
                stored.ends_at,
                3,
            )
            .await?
            .into_iter()
            .map(|t| NearTransaction {
                id: t.id,
                kind: t.kind,
                reporting_category: t.reporting_category,
                net: t.net,
                created: api_timestamp(&t.created),
                available_on: api_timestamp(&t.available_on),
            })
            .collect();
            differences.push(DifferenceView {
                stripeid: row.stripeid,
                currency: row.currency,
                closing: row.closing.into(),
                difference: difference.into(),
                checked_at: api_timestamp(&stripe_at),
                nearest,
            });
            if differences.len() >= DIFFERENCES_LISTED {
                break;
            }
        }
    }
    Ok(DayCloseView {
        object: "dailyClose",
        tenant: tenant.slug.clone(),
        date,
        timezone: stored.timezone.clone(),
        starts_at: api_timestamp(&stored.starts_at),
        ends_at: api_timestamp(&stored.ends_at),
        state: if stored.closed_at.is_some() {
            "closed"
        } else {
            "open"
        },
        closed_at: stored.closed_at.as_ref().map(api_timestamp),
        reopened: stored.reopened,
        computed_at: api_timestamp(&stored.computed_at),
        currencies: summary
            .iter()
            .map(|(c, s)| CurrencyClose::new(c, s))
            .collect(),
        differences,
    })
}

/// One account's day in one currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountDayView {
    pub date: NaiveDate,
    pub currency: String,
    pub opening: SplitView,
    pub activity: Vec<CategoryView>,
    pub closing: SplitView,
    pub transactions: i32,
    /// `matched`, `difference` or `unverified`.
    pub tieout: &'static str,
    pub difference: Option<SplitView>,
    /// When Stripe answered the balance checked against (Stripe's clock).
    pub checked_at: Option<String>,
}

impl From<&AccountDay> for AccountDayView {
    fn from(row: &AccountDay) -> AccountDayView {
        let (difference, checked_at) = match row.tieout {
            TieOut::Matched { stripe_at, .. } => (None, Some(api_timestamp(&stripe_at))),
            TieOut::Difference {
                stripe_at,
                difference,
                ..
            } => (Some(difference.into()), Some(api_timestamp(&stripe_at))),
            TieOut::Unverified => (None, None),
        };
        AccountDayView {
            date: row.day,
            currency: row.currency.clone(),
            opening: row.opening.into(),
            activity: categories(&row.activity),
            closing: row.closing.into(),
            transactions: row.transactions,
            tieout: row.tieout.as_str(),
            difference,
            checked_at,
        }
    }
}

/// One account's days.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountCloseView {
    /// Always `list`.
    pub object: &'static str,
    pub stripeid: String,
    pub timezone: String,
    pub from_date: NaiveDate,
    pub to_date: NaiveDate,
    /// Oldest first, one per day and currency the account has a close for.
    pub data: Vec<AccountDayView>,
}

pub async fn account(
    pool: &PgPool,
    tenant: &Tenant,
    stripeid: &StripeAccountId,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<AccountCloseView, sqlx::Error> {
    let rows = store::closes::account_days(pool, tenant.id, stripeid, from, to).await?;
    Ok(AccountCloseView {
        object: "list",
        stripeid: stripeid.to_string(),
        timezone: tenant.close_timezone.clone(),
        from_date: from,
        to_date: to,
        data: rows.iter().map(AccountDayView::from).collect(),
    })
}

/// The day as CSV: a header naming every reporting category the day has, then one
/// row per account and currency, differences first, produced as the rows are read
/// (memory stays flat however many accounts the tenant has). Amounts in minor units,
/// text cells neutralised (`csv_out`). The rows are read on a task of `tasks` (the
/// process's), so a shutdown waits for the answers being sent.
pub async fn day_csv(
    pool: PgPool,
    tasks: &TaskTracker,
    tenant: &Tenant,
    date: NaiveDate,
) -> Result<impl Stream<Item = Result<Vec<u8>, std::io::Error>>, ReportError> {
    let stored = store::closes::day(&pool, tenant.id, date)
        .await?
        .ok_or(ReportError::NotReady { day: date })?;
    let summary = summary_of(&stored);
    let categories: Vec<String> = summary
        .values()
        .flat_map(|s| s.activity.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut first = CsvOut::new();
    let names = csv_header(&categories);
    first.header(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let tenant_id = tenant.id;
    let context = RowContext {
        date: date.to_string(),
        timezone: stored.timezone.clone(),
        starts_at: api_timestamp(&stored.starts_at),
        ends_at: api_timestamp(&stored.ends_at),
        categories,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tasks.spawn(async move {
        let mut rows = store::closes::day_rows(&pool, tenant_id, date);
        let mut chunk = first;
        let mut in_chunk = 0;
        let failed = |what: &str| {
            Err(std::io::Error::other(format!(
                "the close could not be {what}"
            )))
        };
        while let Some(row) = rows.next().await {
            let written = match row {
                Ok(row) => context.write(&mut chunk, &row),
                Err(error) => {
                    tracing::error!(error = %error, "reading a day's close for CSV failed");
                    let _ = sender.send(failed("read")).await;
                    return;
                }
            };
            if written.is_err() {
                let _ = sender.send(failed("written")).await;
                return;
            }
            in_chunk += 1;
            if in_chunk >= 500 {
                in_chunk = 0;
                let bytes = std::mem::take(&mut chunk)
                    .finish()
                    .map_err(std::io::Error::other);
                if sender.send(bytes).await.is_err() {
                    return; // the client went away
                }
            }
        }
        let _ = sender
            .send(chunk.finish().map_err(std::io::Error::other))
            .await;
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

struct RowContext {
    date: String,
    timezone: String,
    starts_at: String,
    ends_at: String,
    categories: Vec<String>,
}

/// The day's CSV columns before the activity: who, when, and the opening balance.
pub const CSV_LEADING: [&str; 9] = [
    "date",
    "timezone",
    "starts_at",
    "ends_at",
    "stripeid",
    "currency",
    "opening_available",
    "opening_pending",
    "opening_balance",
];

/// The four columns of each reporting category the day has, after its name
/// (`charge_count`, `charge_gross`, …).
pub const CSV_PER_CATEGORY: [&str; 4] = ["count", "gross", "fee", "net"];

/// The day's CSV columns after the activity: totals, the closing balance, the tie-out.
pub const CSV_TRAILING: [&str; 10] = [
    "activity_net",
    "fees",
    "transactions",
    "closing_available",
    "closing_pending",
    "closing_balance",
    "tieout",
    "difference_available",
    "difference_pending",
    "checked_at",
];

fn csv_header(categories: &[String]) -> Vec<String> {
    let per_category = categories.iter().flat_map(|c| {
        CSV_PER_CATEGORY
            .iter()
            .map(move |part| format!("{c}_{part}"))
    });
    CSV_LEADING
        .iter()
        .map(|s| (*s).to_owned())
        .chain(per_category)
        .chain(CSV_TRAILING.iter().map(|s| (*s).to_owned()))
        .collect()
}

impl RowContext {
    fn write(&self, out: &mut CsvOut, row: &AccountDay) -> Result<(), csv::Error> {
        let currency = row.currency.to_ascii_uppercase();
        let mut cells = vec![
            Text(&self.date),
            Text(&self.timezone),
            Text(&self.starts_at),
            Text(&self.ends_at),
            Text(&row.stripeid),
            Text(&currency),
            Number(row.opening.available),
            Number(row.opening.pending),
            Number(row.opening.available.saturating_add(row.opening.pending)),
        ];
        let (mut net, mut fees) = (0i64, 0i64);
        for c in &self.categories {
            let a = row.activity.get(c).copied().unwrap_or_default();
            net = net.saturating_add(a.net);
            fees = fees.saturating_add(a.fee);
            cells.extend([
                Number(a.count),
                Number(a.amount),
                Number(a.fee),
                Number(a.net),
            ]);
        }
        let (difference, checked_at) = match row.tieout {
            TieOut::Matched { stripe_at, .. } => (None, Some(api_timestamp(&stripe_at))),
            TieOut::Difference {
                stripe_at,
                difference,
                ..
            } => (Some(difference), Some(api_timestamp(&stripe_at))),
            TieOut::Unverified => (None, None),
        };
        let optional = |amount: Option<i64>| amount.map_or(Text(""), Number);
        cells.extend([
            Number(net),
            Number(fees),
            Number(i64::from(row.transactions)),
            Number(row.closing.available),
            Number(row.closing.pending),
            Number(row.closing.available.saturating_add(row.closing.pending)),
            Text(row.tieout.as_str()),
            optional(difference.map(|d| d.available)),
            optional(difference.map(|d| d.pending)),
            Text(checked_at.as_deref().unwrap_or("")),
        ]);
        out.row(&cells)
    }
}
