//! Closed days (`day_closes`, `account_closes`, `close_reopens`) and the local-day
//! arithmetic of a tenant's zone, which Postgres's time zone database does (so the
//! stored days and the bounds an answer states come from one source).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::domain::StripeAccountId;
use crate::money::{Activity, Split};

/// Whether `zone` is a time zone name Postgres knows (IANA names such as
/// `Europe/Berlin`, and `UTC`).
pub async fn zone_exists(db: impl PgExecutor<'_>, zone: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1) AS "exists!""#,
        zone
    )
    .fetch_one(db)
    .await
}

/// The UTC instants local `day` in `zone` spans: `[start, end)`.
pub async fn day_bounds(
    db: impl PgExecutor<'_>,
    zone: &str,
    day: NaiveDate,
) -> Result<(DateTime<Utc>, DateTime<Utc>), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT ($2::date::timestamp AT TIME ZONE $1) AS "start!",
                  (($2::date + 1)::timestamp AT TIME ZONE $1) AS "end!""#,
        zone,
        day
    )
    .fetch_one(db)
    .await?;
    Ok((row.start, row.end))
}

/// The local day in `zone` that `at` falls on.
pub async fn local_day(
    db: impl PgExecutor<'_>,
    zone: &str,
    at: DateTime<Utc>,
) -> Result<NaiveDate, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT ($2 AT TIME ZONE $1)::date AS "day!""#, zone, at)
        .fetch_one(db)
        .await
}

/// A tenant's day as computed.
#[derive(Debug, Clone)]
pub struct DayClose {
    pub day: NaiveDate,
    pub timezone: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub computed_at: DateTime<Utc>,
    /// Set once the day is `close.settle_secs` past its end; until then it is provisional.
    pub closed_at: Option<DateTime<Utc>>,
    pub reopened: i32,
    /// Per currency totals of the day (`close::DaySummary`).
    pub summary: serde_json::Value,
}

pub async fn day(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    day: NaiveDate,
) -> Result<Option<DayClose>, sqlx::Error> {
    sqlx::query_as!(
        DayClose,
        r#"SELECT day, timezone, starts_at, ends_at, computed_at, closed_at, reopened, summary
           FROM day_closes WHERE tenant_id = $1 AND day = $2"#,
        tenant_id,
        day
    )
    .fetch_optional(db)
    .await
}

/// The tenant's computed days, newest first.
pub async fn days(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    limit: i64,
) -> Result<Vec<DayClose>, sqlx::Error> {
    sqlx::query_as!(
        DayClose,
        r#"SELECT day, timezone, starts_at, ends_at, computed_at, closed_at, reopened, summary
           FROM day_closes WHERE tenant_id = $1 ORDER BY day DESC LIMIT $2"#,
        tenant_id,
        limit
    )
    .fetch_all(db)
    .await
}

/// Takes the day for computing: `None` when another process is computing it now.
/// The row lock lasts the caller's transaction.
pub async fn lock_day(
    conn: &mut PgConnection,
    tenant_id: i64,
    day: NaiveDate,
    zone: &str,
    bounds: (DateTime<Utc>, DateTime<Utc>),
) -> Result<Option<DayClose>, sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO day_closes (tenant_id, day, timezone, starts_at, ends_at, computed_at)
           VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (tenant_id, day) DO NOTHING"#,
        tenant_id,
        day,
        zone,
        bounds.0,
        bounds.1
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_as!(
        DayClose,
        r#"SELECT day, timezone, starts_at, ends_at, computed_at, closed_at, reopened, summary
           FROM day_closes WHERE tenant_id = $1 AND day = $2 FOR UPDATE SKIP LOCKED"#,
        tenant_id,
        day
    )
    .fetch_optional(&mut *conn)
    .await
}

/// A computation of a day: its zone and bounds, totals, whether it is now closed and
/// whether it reopened a closed day.
pub struct Computed<'a> {
    pub zone: &'a str,
    pub bounds: (DateTime<Utc>, DateTime<Utc>),
    pub summary: &'a serde_json::Value,
    pub closed: bool,
    pub reopened: bool,
}

pub async fn mark_computed(
    conn: &mut PgConnection,
    tenant_id: i64,
    day: NaiveDate,
    computed: &Computed<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE day_closes
           SET timezone = $3, starts_at = $4, ends_at = $5, computed_at = now(), summary = $6,
               closed_at = CASE WHEN $7 THEN COALESCE(closed_at, now()) ELSE closed_at END,
               reopened = reopened + CASE WHEN $8 THEN 1 ELSE 0 END
           WHERE tenant_id = $1 AND day = $2"#,
        tenant_id,
        day,
        computed.zone,
        computed.bounds.0,
        computed.bounds.1,
        computed.summary,
        computed.closed,
        computed.reopened
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One account's day in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDay {
    pub day: NaiveDate,
    pub stripeid: String,
    pub currency: String,
    pub opening: Split,
    pub closing: Split,
    pub activity: BTreeMap<String, Activity>,
    pub transactions: i32,
    pub tieout: TieOut,
}

/// Whether a closing balance agrees with what Stripe answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TieOut {
    Matched {
        snapshot_id: i64,
        stripe_at: DateTime<Utc>,
    },
    /// Stripe's balance (rolled back to the day's end) minus the closing.
    Difference {
        snapshot_id: i64,
        stripe_at: DateTime<Utc>,
        difference: Split,
    },
    /// No balance answered after the day's end to check against.
    Unverified,
}

impl TieOut {
    pub fn as_str(&self) -> &'static str {
        match self {
            TieOut::Matched { .. } => "matched",
            TieOut::Difference { .. } => "difference",
            TieOut::Unverified => "unverified",
        }
    }
}

struct AccountDayRow {
    day: NaiveDate,
    stripeid: String,
    currency: String,
    opening_available: i64,
    opening_pending: i64,
    closing_available: i64,
    closing_pending: i64,
    activity: Json<BTreeMap<String, Activity>>,
    transactions: i32,
    tieout: String,
    difference_available: Option<i64>,
    difference_pending: Option<i64>,
    checked_snapshot_id: Option<i64>,
    checked_stripe_at: Option<DateTime<Utc>>,
}

impl From<AccountDayRow> for AccountDay {
    fn from(r: AccountDayRow) -> AccountDay {
        let checked = r.checked_snapshot_id.zip(r.checked_stripe_at);
        let tieout = match (r.tieout.as_str(), checked) {
            ("matched", Some((snapshot_id, stripe_at))) => TieOut::Matched {
                snapshot_id,
                stripe_at,
            },
            ("difference", Some((snapshot_id, stripe_at))) => TieOut::Difference {
                snapshot_id,
                stripe_at,
                difference: Split {
                    available: r.difference_available.unwrap_or(0),
                    pending: r.difference_pending.unwrap_or(0),
                },
            },
            _ => TieOut::Unverified,
        };
        AccountDay {
            day: r.day,
            stripeid: r.stripeid,
            currency: r.currency,
            opening: Split {
                available: r.opening_available,
                pending: r.opening_pending,
            },
            closing: Split {
                available: r.closing_available,
                pending: r.closing_pending,
            },
            activity: r.activity.0,
            transactions: r.transactions,
            tieout,
        }
    }
}

/// Replaces the day's rows with `rows`.
pub async fn replace_day(
    conn: &mut PgConnection,
    tenant_id: i64,
    day: NaiveDate,
    rows: &[AccountDay],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM account_closes WHERE tenant_id = $1 AND day = $2",
        tenant_id,
        day
    )
    .execute(&mut *conn)
    .await?;
    // In chunks, so one statement's arrays stay small.
    for chunk in rows.chunks(5_000) {
        let col = |f: fn(&AccountDay) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
        let ids: Vec<String> = chunk.iter().map(|r| r.stripeid.clone()).collect();
        let currencies: Vec<String> = chunk.iter().map(|r| r.currency.clone()).collect();
        let activity: Vec<serde_json::Value> = chunk
            .iter()
            .map(|r| serde_json::to_value(&r.activity).unwrap_or_default())
            .collect();
        let transactions: Vec<i32> = chunk.iter().map(|r| r.transactions).collect();
        let tieouts: Vec<String> = chunk.iter().map(|r| r.tieout.as_str().to_owned()).collect();
        let (mut diff_a, mut diff_p, mut snap, mut at) = (vec![], vec![], vec![], vec![]);
        for r in chunk {
            let (d, s, t) = match r.tieout {
                TieOut::Matched {
                    snapshot_id,
                    stripe_at,
                } => (None, Some(snapshot_id), Some(stripe_at)),
                TieOut::Difference {
                    snapshot_id,
                    stripe_at,
                    difference,
                } => (Some(difference), Some(snapshot_id), Some(stripe_at)),
                TieOut::Unverified => (None, None, None),
            };
            diff_a.push(d.map(|d| d.available));
            diff_p.push(d.map(|d| d.pending));
            snap.push(s);
            at.push(t);
        }
        sqlx::query!(
            r#"INSERT INTO account_closes
                   (tenant_id, day, stripeid, currency, opening_available, opening_pending,
                    closing_available, closing_pending, activity, transactions, tieout,
                    difference_available, difference_pending, checked_snapshot_id,
                    checked_stripe_at)
               SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::bigint[],
                      $7::bigint[], $8::bigint[], $9::jsonb[], $10::int[], $11::text[],
                      $12::bigint[], $13::bigint[], $14::bigint[], $15::timestamptz[])"#,
            tenant_id,
            day,
            &ids,
            &currencies,
            &col(|r| r.opening.available),
            &col(|r| r.opening.pending),
            &col(|r| r.closing.available),
            &col(|r| r.closing.pending),
            &activity,
            &transactions,
            &tieouts,
            &diff_a as &[Option<i64>],
            &diff_p as &[Option<i64>],
            &snap as &[Option<i64>],
            &at as &[Option<DateTime<Utc>>],
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The day's rows: differences first, then by account and currency.
pub fn day_rows<'a>(
    db: impl PgExecutor<'a> + 'a,
    tenant_id: i64,
    day: NaiveDate,
) -> BoxStream<'a, Result<AccountDay, sqlx::Error>> {
    sqlx::query_as!(
        AccountDayRow,
        r#"SELECT day, stripeid, currency, opening_available, opening_pending,
                  closing_available, closing_pending,
                  activity AS "activity: Json<BTreeMap<String, Activity>>", transactions,
                  tieout, difference_available, difference_pending, checked_snapshot_id,
                  checked_stripe_at
           FROM account_closes WHERE tenant_id = $1 AND day = $2
           ORDER BY tieout <> 'difference', stripeid, currency"#,
        tenant_id,
        day
    )
    .fetch(db)
    .map(|row| row.map(AccountDay::from))
    .boxed()
}

/// One account's days within `[from, to]`, oldest first.
pub async fn account_days(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<AccountDay>, sqlx::Error> {
    let rows = sqlx::query_as!(
        AccountDayRow,
        r#"SELECT day, stripeid, currency, opening_available, opening_pending,
                  closing_available, closing_pending,
                  activity AS "activity: Json<BTreeMap<String, Activity>>", transactions,
                  tieout, difference_available, difference_pending, checked_snapshot_id,
                  checked_stripe_at
           FROM account_closes WHERE tenant_id = $1 AND stripeid = $2 AND day BETWEEN $3 AND $4
           ORDER BY day, currency"#,
        tenant_id,
        stripeid.as_str(),
        from,
        to
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(AccountDay::from).collect())
}

/// The accounts late transactions touched, and from which day.
pub struct Reopen {
    pub stripeid: String,
    pub from_day: NaiveDate,
    pub transactions: i32,
}

pub async fn reopens(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<Vec<Reopen>, sqlx::Error> {
    sqlx::query_as!(
        Reopen,
        "SELECT stripeid, from_day, transactions FROM close_reopens WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// Takes (deletes) the marks of late transactions created on or before `through`, in
/// the caller's transaction, which recomputes the day.
pub async fn take_reopens(
    conn: &mut PgConnection,
    tenant_id: i64,
    through: NaiveDate,
) -> Result<Vec<Reopen>, sqlx::Error> {
    sqlx::query_as!(
        Reopen,
        r#"DELETE FROM close_reopens WHERE tenant_id = $1 AND from_day <= $2
           RETURNING stripeid, from_day, transactions"#,
        tenant_id,
        through
    )
    .fetch_all(conn)
    .await
}

/// Marks `reopens`' accounts for recomputing from `from_day` (the day after one just
/// recomputed: its opening moved).
pub async fn put_back_reopens(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    from_day: NaiveDate,
    reopens: &[Reopen],
) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = reopens.iter().map(|r| r.stripeid.clone()).collect();
    let days: Vec<NaiveDate> = reopens.iter().map(|_| from_day).collect();
    let counts: Vec<i32> = reopens.iter().map(|r| r.transactions).collect();
    sqlx::query!(
        r#"INSERT INTO close_reopens (tenant_id, stripeid, from_day, transactions)
           SELECT $1, * FROM UNNEST($2::text[], $3::date[], $4::int[])
           ON CONFLICT (tenant_id, stripeid) DO UPDATE
           SET from_day = LEAST(close_reopens.from_day, EXCLUDED.from_day),
               transactions = close_reopens.transactions + EXCLUDED.transactions"#,
        tenant_id,
        &ids,
        &days,
        &counts
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Closed days with an `unverified` account whose ledger has since been read past the
/// day's end (after the day was computed): a balance Stripe answered may now check it.
pub async fn verifiable_days(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<NaiveDate>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT d.day AS "day!"
           FROM day_closes d
           JOIN account_closes a ON a.tenant_id = d.tenant_id AND a.day = d.day
           JOIN ledger_reads r ON r.tenant_id = a.tenant_id AND r.stripeid = a.stripeid
           WHERE d.tenant_id = $1 AND d.closed_at IS NOT NULL AND a.tieout = 'unverified'
             AND r.complete_to >= d.ends_at AND r.read_at > d.computed_at"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// The closings of `day` (the openings of the day after), per account and currency.
pub async fn closings(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    day: NaiveDate,
) -> Result<Vec<(String, String, Split)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT stripeid, currency, closing_available, closing_pending
           FROM account_closes WHERE tenant_id = $1 AND day = $2"#,
        tenant_id,
        day
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.stripeid,
                r.currency,
                Split {
                    available: r.closing_available,
                    pending: r.closing_pending,
                },
            )
        })
        .collect())
}
