//! Reading balance transactions from Stripe into `balance_transactions`.
//!
//! After each refresher fetch, an account's transactions created since the last read
//! (`created[gte]` the instant that read reached, newest first, 100 a page): one
//! request when nothing is new, one per 100 new transactions otherwise. The first read
//! of an account reaches back `close.settlement_days` before the previous local day.
//! `tally close backfill` reads older history, page by page, resumably.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use super::CloseError;
use crate::store;
use crate::store::ledger::Transaction;
use crate::store::refreshes::Claimed;
use crate::store::tenants::Tenant;
use crate::stripe::{BalanceTransaction, CreatedRange, TenantClient};

const PAGE: u8 = 100;

/// What a read did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub requests: u32,
    pub listed: u64,
    pub stored: u64,
}

impl Read {
    fn add(&mut self, other: Read) {
        self.requests += other.requests;
        self.listed += other.listed;
        self.stored += other.stored;
    }
}

/// Reads the account's transactions created since its last read (or, the first time,
/// since `settlement_days` before the previous local day of `stripe_now`, Stripe's
/// clock as the balance fetch just saw it) and stores them.
pub async fn read_new(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    account: &Claimed,
    stripe_now: Option<DateTime<Utc>>,
    settlement_days: u32,
) -> Result<Read, CloseError> {
    let stored = store::ledger::read_of(pool, tenant.id, &account.stripeid).await?;
    let from = match stored {
        Some(read) => read.complete_to,
        None => {
            let now = stripe_now.unwrap_or_else(Utc::now);
            let today = store::closes::local_day(pool, &tenant.close_timezone, now).await?;
            let first = today - TimeDelta::days(i64::from(settlement_days) + 1);
            store::closes::day_bounds(pool, &tenant.close_timezone, first)
                .await?
                .0
        }
    };
    let range = CreatedRange {
        from: Some(from.timestamp()),
        before: None,
    };
    let (read, answered_at) =
        read_range(pool, client, tenant, account, range, |_| async { Ok(()) }).await?;
    // Everything created up to the first page's answer is stored now.
    let to = answered_at.unwrap_or(from).max(from);
    store::ledger::extend_to(pool, tenant.id, &account.stripeid, from, to).await?;
    Ok(read)
}

/// Reads `range` page by page, newest first, storing each page; `after_page` runs after
/// each stored page with the oldest `created` on it. Returns what was read and when
/// Stripe answered the first page.
async fn read_range<F, Fut>(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    account: &Claimed,
    range: CreatedRange,
    mut after_page: F,
) -> Result<(Read, Option<DateTime<Utc>>), CloseError>
where
    F: FnMut(Option<DateTime<Utc>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), CloseError>>,
{
    let mut read = Read::default();
    let mut first_answer = None;
    let mut starting_after: Option<String> = None;
    loop {
        let page = client
            .list_balance_transactions_page(
                &account.stripeid,
                account.platform_id.as_ref(),
                range,
                starting_after.as_deref(),
                PAGE,
            )
            .await?;
        read.requests += 1;
        if read.requests == 1 {
            first_answer = page.stripe_date;
        }
        let txns: Vec<Transaction> = page.value.data.iter().filter_map(kept).collect();
        read.listed += page.value.data.len() as u64;
        let mut conn = pool.acquire().await?;
        read.stored += store::ledger::store(&mut conn, tenant.id, &account.stripeid, &txns).await?;
        drop(conn);
        after_page(txns.iter().map(|t| t.created).min()).await?;
        match page.value.data.last() {
            Some(last) if page.value.has_more => starting_after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok((read, first_answer))
}

/// A transaction as kept; `None` for one whose times are not valid instants.
fn kept(t: &BalanceTransaction) -> Option<Transaction> {
    let created = DateTime::from_timestamp(t.created, 0)?;
    let available_on = DateTime::from_timestamp(t.available_on, 0)?;
    let payout = t
        .kind
        .starts_with("payout")
        .then(|| t.source.clone())
        .flatten();
    Some(Transaction {
        id: t.id.clone(),
        kind: t.kind.clone(),
        reporting_category: t.reporting_category.clone(),
        amount: t.amount,
        fee: t.fee,
        net: t.net,
        currency: t.currency.clone(),
        created,
        available_on,
        status: t.status.clone(),
        source: t.source.clone(),
        payout,
    })
}

/// Loads one account's history back to `since`: first what is new (as after a fetch),
/// then everything older than its stored history, a page at a time. After each page the
/// stored history reaches back to that page's oldest second, so a backfill that stops
/// resumes where it was.
pub async fn backfill_account(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    account: &Claimed,
    since: DateTime<Utc>,
    settlement_days: u32,
) -> Result<Read, CloseError> {
    let mut total = read_new(pool, client, tenant, account, None, settlement_days).await?;
    let Some(stored) = store::ledger::read_of(pool, tenant.id, &account.stripeid).await? else {
        return Ok(total);
    };
    if stored.complete_from <= since {
        return Ok(total);
    }
    let range = CreatedRange {
        from: Some(since.timestamp()),
        before: Some(stored.complete_from.timestamp()),
    };
    let stripeid = account.stripeid.clone();
    let (read, _) = read_range(pool, client, tenant, account, range, |oldest| {
        let stripeid = stripeid.clone();
        async move {
            // Transactions of the oldest second may continue on the next page.
            if let Some(oldest) = oldest {
                let from = (oldest + TimeDelta::seconds(1)).max(since);
                store::ledger::extend_from(pool, tenant.id, &stripeid, from).await?;
            }
            Ok(())
        }
    })
    .await?;
    store::ledger::extend_from(pool, tenant.id, &account.stripeid, since).await?;
    total.add(read);
    Ok(total)
}
