//! The closer: brings a tenant's closed days up to date. Every server runs it every
//! `close.tick_secs`; each day is computed in one transaction that holds the day's
//! row (`FOR UPDATE SKIP LOCKED`), so replicas never compute the same day at once.
//!
//! A day is computed once Stripe's clock, as the tenant's ledger reads last saw it, has
//! passed its end; it is recomputed on every pass until `close.settle_secs` later,
//! when it closes. After that only a late transaction (stored after the day was
//! computed, created within it) recomputes it and the days after, for the accounts
//! it touched, and records `close.reopen` in the audit log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::ledger::{self, Balances, DayMoves};
use super::CloseError;
use crate::money::{add_into, Activity, MoneyOverflow, Split};
use crate::store;
use crate::store::closes::{AccountDay, Computed, TieOut};
use crate::store::ledger::Movement;
use crate::store::tenants::Tenant;

/// What the closer needs from the settings.
#[derive(Debug, Clone, Copy)]
pub struct CloseRules {
    pub settle: TimeDelta,
    pub settlement_days: u32,
    /// Days more than this before the last ended day are final (their transactions are
    /// pruned, `retention.ledger_days`): never computed or reopened again. `None`: no
    /// day is final.
    pub final_after_days: Option<u32>,
}

impl CloseRules {
    pub fn from_settings(settings: &crate::config::Settings) -> CloseRules {
        CloseRules {
            settle: TimeDelta::seconds(
                i64::try_from(settings.close.settle_secs).unwrap_or(i64::MAX),
            ),
            settlement_days: settings.close.settlement_days,
            final_after_days: (settings.retention.ledger_days > 0)
                .then_some(settings.retention.ledger_days),
        }
    }

    /// The first day that is not final when `last` is the last day that ended: earlier
    /// ones keep what they were closed with, and a late transaction for one shows as a
    /// difference on this day instead.
    pub fn first_open_day(&self, last: NaiveDate) -> Option<NaiveDate> {
        let days = self.final_after_days?;
        Some(
            last.checked_sub_days(chrono::Days::new(u64::from(days)))
                .unwrap_or(NaiveDate::MIN),
        )
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub computed: Vec<NaiveDate>,
    pub closed: Vec<NaiveDate>,
    pub reopened: Vec<NaiveDate>,
}

/// A day's totals per currency, kept with the day so an answer reads one row.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencySummary {
    pub opening: Split,
    pub activity: BTreeMap<String, Activity>,
    pub closing: Split,
    pub transactions: i64,
    pub accounts: i64,
    pub matched: i64,
    pub difference: i64,
    pub unverified: i64,
    /// The sum of the differences found (Stripe's answer minus the closing).
    pub difference_amount: Split,
    /// Money owed by accounts whose closing available balance is below zero, as a
    /// positive amount, and how many they are.
    pub negative: i64,
    pub negative_accounts: i64,
}

pub type DaySummary = BTreeMap<String, CurrencySummary>;

/// Brings the tenant's days up to date: reopenings first, then every day Stripe's
/// clock has passed the end of and that is not closed.
pub async fn bring_up_to_date(
    pool: &PgPool,
    tenant: &Tenant,
    rules: CloseRules,
) -> Result<Pass, CloseError> {
    let mut pass = Pass::default();
    let reads = store::ledger::tenant_ledger(pool, tenant.id).await?;
    let (Some(earliest), Some(clock)) = (reads.earliest, reads.latest) else {
        return Ok(pass);
    };
    let zone = tenant.close_timezone.as_str();
    let first_read = store::closes::local_day(pool, zone, earliest).await?
        + TimeDelta::days(i64::from(rules.settlement_days));
    // The last day that ended by Stripe's clock.
    let Some(last) = store::closes::local_day(pool, zone, clock)
        .await?
        .pred_opt()
    else {
        return Ok(pass);
    };
    // Final days' transactions are pruned: computing one again would lose them.
    let first = rules
        .first_open_day(last)
        .map_or(first_read, |open| open.max(first_read));
    let known: HashMap<NaiveDate, store::closes::DayClose> =
        store::closes::days(pool, tenant.id, 400)
            .await?
            .into_iter()
            .map(|d| (d.day, d))
            .collect();

    // Late transactions: recompute from the earliest day they touched, for all
    // accounts (the openings chain), and say so for days already closed. The marks
    // read here are a hint; each day takes them in its own transaction.
    let reopen_from = store::closes::reopens(pool, tenant.id)
        .await?
        .iter()
        .map(|r| r.from_day)
        .min();
    // Closed days whose unverified accounts a newer balance may check now.
    let verifiable = store::closes::verifiable_days(pool, tenant.id).await?;
    let mut next = Some(first);
    while let Some(day) = next.filter(|day| *day <= last) {
        next = day.succ_opt();
        let existing = known.get(&day);
        let settled = existing.is_some_and(|d| d.closed_at.is_some());
        let task = DayTask {
            day,
            last,
            clock,
            reopening: reopen_from.is_some_and(|from| day >= from) && existing.is_some(),
            settled,
            recheck: verifiable.contains(&day),
            seen: existing.map(|d| d.computed_at),
        };
        if settled && !task.reopening && !task.recheck {
            continue;
        }
        // `None`: another server is on it, or did it.
        if let Some(done) = compute_day(pool, tenant, rules, &task).await? {
            pass.computed.push(day);
            if done.closed && !settled {
                pass.closed.push(day);
            }
            if done.reopened {
                pass.reopened.push(day);
            }
        }
    }
    Ok(pass)
}

/// One day to compute, and what the pass knew of it.
struct DayTask {
    day: NaiveDate,
    /// The last day Stripe's clock has passed the end of.
    last: NaiveDate,
    clock: DateTime<Utc>,
    /// Late transactions may have reached it.
    reopening: bool,
    /// It was closed when the pass looked.
    settled: bool,
    /// Unverified accounts of it may be checked now.
    recheck: bool,
    /// Its `computed_at` when the pass looked.
    seen: Option<DateTime<Utc>>,
}

struct DayDone {
    closed: bool,
    reopened: bool,
}

/// The audit entry of a closed day that late transactions reopened.
fn reopen_details(day: NaiveDate, taken: &[store::closes::Reopen]) -> serde_json::Value {
    let accounts: Vec<&str> = taken.iter().map(|r| r.stripeid.as_str()).collect();
    let transactions: i64 = taken.iter().map(|r| i64::from(r.transactions)).sum();
    serde_json::json!({
        "date": day,
        "accounts": accounts,
        "lateTransactions": transactions,
    })
}

/// Computes one day for every account that can have it, in one transaction holding
/// the day; takes the day's reopen marks in it and passes them on to the next day
/// (whose opening moved too), so a crash between days loses nothing. `None`: another
/// server holds the day, or did this work since the pass looked.
async fn compute_day(
    pool: &PgPool,
    tenant: &Tenant,
    rules: CloseRules,
    task: &DayTask,
) -> Result<Option<DayDone>, CloseError> {
    let day = task.day;
    let zone = tenant.close_timezone.as_str();
    let mut tx = store::begin(pool).await?;
    let (start, end) = store::closes::day_bounds(&mut *tx, zone, day).await?;
    match store::closes::lock_day(&mut tx, tenant.id, day, zone, (start, end)).await? {
        None => return Ok(None),
        Some(locked) if task.seen.is_some_and(|seen| locked.computed_at > seen) => return Ok(None),
        Some(_) => {}
    }
    let taken = if task.reopening {
        store::closes::take_reopens(&mut tx, tenant.id, day).await?
    } else {
        Vec::new()
    };
    if task.settled && taken.is_empty() && !task.recheck {
        return Ok(None); // the marks were taken by another server
    }
    // Openings: yesterday's closings, or for an account's first day its first balance
    // answered after the day's start, rolled back to it.
    let mut openings: BTreeMap<String, Balances> = BTreeMap::new();
    if let Some(previous) = day.pred_opt() {
        for (stripeid, currency, closing) in
            store::closes::closings(&mut *tx, tenant.id, previous).await?
        {
            openings
                .entry(stripeid)
                .or_default()
                .insert(currency, closing);
        }
    }
    let first_day_reads_from = store::closes::day_bounds(
        &mut *tx,
        zone,
        day - TimeDelta::days(i64::from(rules.settlement_days)),
    )
    .await?
    .0;
    let newcomers: BTreeSet<String> =
        store::ledger::read_from_by(&mut *tx, tenant.id, first_day_reads_from)
            .await?
            .into_iter()
            .filter(|id| !openings.contains_key(id))
            .collect();
    if !newcomers.is_empty() {
        let anchors = balances_at(&mut tx, tenant.id, start, Some(&newcomers)).await?;
        for (stripeid, (balance, _, _)) in anchors {
            openings.insert(stripeid, balance);
        }
    }

    let movements = store::ledger::movements(&mut *tx, tenant.id, start, end).await?;
    let mut by_account: HashMap<&str, Vec<&Movement>> = HashMap::new();
    for m in &movements {
        by_account.entry(m.stripeid.as_str()).or_default().push(m);
    }
    let expected = balances_at(&mut tx, tenant.id, end, None).await?;

    let mut rows = Vec::new();
    for (stripeid, opening) in &openings {
        let moves = ledger::day_moves(
            start,
            end,
            by_account
                .get(stripeid.as_str())
                .into_iter()
                .flatten()
                .copied(),
        )?;
        let checked = expected.get(stripeid);
        rows.extend(account_rows(day, stripeid, opening, &moves, checked)?);
    }
    let summary = summarize(&rows)?;
    store::closes::replace_day(&mut tx, tenant.id, day, &rows).await?;
    let closed = task.clock >= end + rules.settle;
    let reopened = task.settled && !taken.is_empty();
    let summary = serde_json::to_value(&summary).unwrap_or_default();
    store::closes::mark_computed(
        &mut tx,
        tenant.id,
        day,
        &Computed {
            zone,
            bounds: (start, end),
            summary: &summary,
            closed,
            reopened,
        },
    )
    .await?;
    if let (false, Some(next)) = (taken.is_empty(), day.succ_opt().filter(|d| *d <= task.last)) {
        store::closes::put_back_reopens(&mut *tx, tenant.id, next, &taken).await?;
    }
    if reopened {
        tracing::info!(tenant = %tenant.slug, %day, accounts = taken.len(), "a late transaction reopened a closed day");
        crate::audit::record_system(
            &mut *tx,
            "close.reopen",
            &tenant.slug,
            &reopen_details(day, &taken),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(DayDone { closed, reopened }))
}

/// Per account (of `only`, or every account with a ledger read): its balance at
/// instant `at`, from the first balance Stripe answered at or after it whose
/// transactions are all stored, rolled back to `at`; with that snapshot's id and time.
async fn balances_at(
    conn: &mut sqlx::PgConnection,
    tenant_id: i64,
    at: DateTime<Utc>,
    only: Option<&BTreeSet<String>>,
) -> Result<BTreeMap<String, (Balances, i64, DateTime<Utc>)>, CloseError> {
    // A balance answered within the second before `at` holds exactly what precedes it.
    let answered_from = at - TimeDelta::seconds(1);
    let checkpoints: Vec<_> =
        store::ledger::first_checkpoints(&mut *conn, tenant_id, answered_from)
            .await?
            .into_iter()
            .filter(|c| only.is_none_or(|only| only.contains(&c.stripeid)))
            .collect();
    let untils: Vec<(String, DateTime<Utc>)> = checkpoints
        .iter()
        .map(|c| (c.stripeid.clone(), c.stripe_at + TimeDelta::seconds(1)))
        .collect();
    let between = store::ledger::movements_until(&mut *conn, tenant_id, at, &untils).await?;
    let mut by_account: HashMap<&str, Vec<&Movement>> = HashMap::new();
    for m in &between {
        by_account.entry(m.stripeid.as_str()).or_default().push(m);
    }
    let mut out = BTreeMap::new();
    for c in &checkpoints {
        let answered = ledger::answered(&c.balance).map_err(CloseError::Balance)?;
        let back = ledger::rolled_back(
            answered,
            c.stripe_at,
            at,
            by_account
                .get(c.stripeid.as_str())
                .into_iter()
                .flatten()
                .copied(),
        )?;
        out.insert(c.stripeid.clone(), (back, c.snapshot_id, c.stripe_at));
    }
    Ok(out)
}

/// One account's rows for the day: one per currency it has a balance, activity or
/// an answered balance in.
fn account_rows(
    day: NaiveDate,
    stripeid: &str,
    opening: &Balances,
    moves: &DayMoves,
    expected: Option<&(Balances, i64, DateTime<Utc>)>,
) -> Result<Vec<AccountDay>, MoneyOverflow> {
    let mut currencies: BTreeSet<&String> = opening.keys().collect();
    currencies.extend(moves.change.keys());
    if let Some((balances, _, _)) = expected {
        currencies.extend(
            balances
                .iter()
                .filter(|(_, s)| **s != Split::default())
                .map(|(c, _)| c),
        );
    }
    let mut rows = Vec::new();
    for currency in currencies {
        let open = opening.get(currency).copied().unwrap_or_default();
        let closing = open.checked_add(moves.change.get(currency).copied().unwrap_or_default())?;
        let check = expected.map(|(balances, snapshot_id, stripe_at)| {
            (
                balances.get(currency).copied().unwrap_or_default(),
                *snapshot_id,
                *stripe_at,
            )
        });
        rows.push(AccountDay {
            day,
            stripeid: stripeid.to_owned(),
            currency: currency.clone(),
            opening: open,
            closing,
            activity: moves.activity.get(currency).cloned().unwrap_or_default(),
            transactions: moves.transactions.get(currency).copied().unwrap_or(0),
            tieout: ledger::tie_out(closing, check),
        });
    }
    Ok(rows)
}

/// The day's totals per currency.
pub fn summarize(rows: &[AccountDay]) -> Result<DaySummary, MoneyOverflow> {
    let mut summary = DaySummary::new();
    for row in rows {
        let s = summary.entry(row.currency.clone()).or_default();
        s.opening = s.opening.checked_add(row.opening)?;
        s.closing = s.closing.checked_add(row.closing)?;
        for (category, activity) in &row.activity {
            add_into(
                &mut s.activity,
                category.clone(),
                *activity,
                Activity::checked_add,
            )?;
        }
        s.transactions += i64::from(row.transactions);
        s.accounts += 1;
        match row.tieout {
            TieOut::Matched { .. } => s.matched += 1,
            TieOut::Difference { difference, .. } => {
                s.difference += 1;
                s.difference_amount = s.difference_amount.checked_add(difference)?;
            }
            TieOut::Unverified => s.unverified += 1,
        }
        if row.closing.available < 0 {
            s.negative = s
                .negative
                .checked_sub(row.closing.available)
                .ok_or(MoneyOverflow("negative"))?;
            s.negative_accounts += 1;
        }
    }
    Ok(summary)
}
