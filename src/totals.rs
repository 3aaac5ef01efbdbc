//! Totals over time (issue 10, item 1), outside any HTTP handler: for each bucket end,
//! per currency, the totals of the tenant's (or one owner's) listed accounts as of
//! that moment, with how many accounts contributed and how many had no balance yet.
//! The endpoint, `tally balances --history` and the admin pages all call
//! [`totals_over_time`]; it reads stored data only and asks nothing of Stripe.
//!
//! What a moment holds: every account listed then adds its latest balance fetched at
//! or before it (a failing account keeps its last good balance; after a relisting only
//! balances fetched since count); one without counts as `missing`. The exact rules are
//! in the `balance_totals_history` migration. The whole tenant is read from the
//! history the database keeps beside each snapshot (`store::totals_history`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use sqlx::PgPool;

use crate::domain::{api_timestamp, Currency, OwnerId};
use crate::store;

/// The most buckets one request may ask for (a year of days fits; 41 days of hours).
pub const MAX_BUCKETS: i64 = 1000;

/// Bucket width; buckets are UTC hours or UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    Hour,
    Day,
}

impl Interval {
    pub fn parse(value: &str) -> Option<Interval> {
        match value {
            "hour" => Some(Interval::Hour),
            "day" => Some(Interval::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Hour => "hour",
            Interval::Day => "day",
        }
    }

    fn step(self) -> Duration {
        match self {
            Interval::Hour => Duration::hours(1),
            Interval::Day => Duration::days(1),
        }
    }

    /// The start of the bucket holding `at`.
    fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let hour = at
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_minute(0))
            .expect("zero minutes, seconds and nanoseconds exist in every UTC hour");
        match self {
            Interval::Hour => hour,
            Interval::Day => hour.with_hour(0).expect("midnight exists in every UTC day"),
        }
    }
}

impl crate::domain::FromText for Interval {
    fn from_text(text: &str) -> Option<Self> {
        Interval::parse(text)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hour or day")
    }
}

impl utoipa::PartialSchema for Interval {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(["hour", "day"]))
            .build()
            .into()
    }
}
impl utoipa::ToSchema for Interval {}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::deserialize_from_text!(Interval);

/// A date (`2026-11-01`, YYYY-MM-DD) or an RFC 3339 timestamp.
fn parse_moment(value: &str) -> Option<Moment> {
    if value.len() == 10 {
        let date = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
        return Some(Moment::Date(date));
    }
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| Moment::Time(t.with_timezone(&Utc)))
}

enum Moment {
    Date(NaiveDate),
    Time(DateTime<Utc>),
}

fn start_of(date: NaiveDate) -> Option<DateTime<Utc>> {
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
}

/// `from`: an RFC 3339 timestamp, or a date meaning the start of that UTC day.
pub fn parse_from(value: &str) -> Option<DateTime<Utc>> {
    match parse_moment(value)? {
        Moment::Date(date) => start_of(date),
        Moment::Time(at) => Some(at),
    }
}

/// `to`: an RFC 3339 timestamp, or a date meaning the end of that UTC day (so
/// `from=2026-11-01&to=2026-11-30` is the whole of November).
pub fn parse_to(value: &str) -> Option<DateTime<Utc>> {
    match parse_moment(value)? {
        Moment::Date(date) => start_of(date.succ_opt()?),
        Moment::Time(at) => Some(at),
    }
}

/// The bucket ends of `[from, to)`, oldest first: one per bucket that overlaps the
/// range, each reported at its end (the current bucket's end may be later than now;
/// it then holds what is stored so far).
pub fn bucket_ends(
    interval: Interval,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, TotalsError> {
    if to <= from {
        return Err(TotalsError::InvalidRange);
    }
    let start = interval.floor(from);
    let step = interval.step();
    let (span, step_secs) = (to - start, step.num_seconds());
    let count = span.num_seconds() / step_secs
        + i64::from(span.num_seconds() % step_secs != 0 || span.subsec_nanos() > 0);
    if count > MAX_BUCKETS {
        return Err(TotalsError::TooManyBuckets { buckets: count });
    }
    let mut ends = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut end = start + step;
    loop {
        ends.push(end);
        if end >= to {
            break;
        }
        end += step;
    }
    Ok(ends)
}

/// One bucket: the totals as of `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsBucket {
    pub at: DateTime<Utc>,
    /// Listed accounts whose balance is in the totals.
    pub accounts: i64,
    /// Listed accounts with no balance yet (never read, or every try failed).
    pub missing: i64,
    /// Per currency, in currency order; a currency no account held then is absent.
    pub totals: Vec<TotalsAtRow>,
}

/// One currency's totals at one bucket end: the aggregate's row as it was then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotalsAtRow {
    pub currency: String,
    /// The net sum of the accounts' available balances (those below zero included).
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
    /// The platform's exposure then: what the accounts whose available balance in this
    /// currency was below zero owed, as a positive amount. Null in a bucket of the whole
    /// tenant kept before tally kept the exposure (unknown, not 0).
    #[schema(minimum = 0)]
    pub negative: Option<i64>,
    /// How many accounts were below zero in this currency then; null when `negative` is.
    #[schema(minimum = 0)]
    pub negative_accounts: Option<i64>,
}

/// The series, newest bucket first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsSeries {
    pub interval: Interval,
    pub buckets: Vec<TotalsBucket>,
}

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error("to must be later than from")]
    InvalidRange,
    #[error("the range holds {buckets} buckets; at most {MAX_BUCKETS} may be asked at once")]
    TooManyBuckets { buckets: i64 },
    #[error("no stored account has that owner")]
    UnknownOwner,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A kept row's per-currency totals (`{"usd": [available, pending, connect_reserved,
/// instant_available, holders], …}`) with its exposure (`{"usd": [negative, accounts],
/// …}`, a currency with none absent; `None`: not kept then), in currency order,
/// currencies no account held left out.
fn kept_totals(
    totals: &serde_json::Value,
    exposure: Option<&serde_json::Value>,
    only: Option<&Currency>,
) -> Result<Vec<TotalsAtRow>, TotalsError> {
    // A row the migration did not write is a decoding failure, like any bad column.
    let decode = |error: serde_json::Error| sqlx::Error::Decode(Box::new(error));
    let rows: BTreeMap<String, [i64; 5]> =
        serde_json::from_value(totals.clone()).map_err(decode)?;
    let exposure: Option<BTreeMap<String, [i64; 2]>> = exposure
        .map(|value| serde_json::from_value(value.clone()))
        .transpose()
        .map_err(decode)?;
    Ok(rows
        .into_iter()
        .filter(|(currency, amounts)| {
            amounts[4] > 0 && only.is_none_or(|only| only.as_str() == currency)
        })
        .map(
            |(currency, [available, pending, connect_reserved, instant_available, _])| {
                let [negative, negative_accounts] = match &exposure {
                    Some(exposure) => exposure.get(&currency).copied().unwrap_or([0, 0]).map(Some),
                    None => [None, None],
                };
                TotalsAtRow {
                    currency,
                    available,
                    pending,
                    connect_reserved,
                    instant_available,
                    negative,
                    negative_accounts,
                }
            },
        )
        .collect())
}

/// The totals of the tenant (or of one owner's accounts) at each bucket end of
/// `[from, to)`, newest first. The whole tenant costs an index lookup per bucket and
/// currency; one owner is computed from that owner's snapshots.
#[tracing::instrument(skip_all, fields(tenant = tenant_id, interval = %interval))]
pub async fn totals_over_time(
    pool: &PgPool,
    tenant_id: i64,
    interval: Interval,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    currency: Option<&Currency>,
    owner: Option<&OwnerId>,
) -> Result<TotalsSeries, TotalsError> {
    let ends = bucket_ends(interval, from, to)?;
    let mut buckets: BTreeMap<DateTime<Utc>, TotalsBucket> = ends
        .iter()
        .map(|at| {
            let bucket = TotalsBucket {
                at: *at,
                accounts: 0,
                missing: 0,
                totals: Vec::new(),
            };
            (*at, bucket)
        })
        .collect();
    match owner {
        None => {
            for row in store::totals_history::tenant_series(pool, tenant_id, &ends).await? {
                if let Some(bucket) = buckets.get_mut(&row.at) {
                    bucket.accounts = row.accounts;
                    bucket.missing = row.missing;
                    bucket.totals = kept_totals(&row.totals, row.exposure.as_ref(), currency)?;
                }
            }
        }
        Some(owner) => {
            if !store::totals_history::owner_known(pool, tenant_id, owner).await? {
                return Err(TotalsError::UnknownOwner);
            }
            let counts = store::totals_history::owner_counts(pool, tenant_id, owner, &ends);
            for count in counts.await? {
                if let Some(bucket) = buckets.get_mut(&count.at) {
                    bucket.accounts = count.accounts;
                    bucket.missing = count.missing;
                }
            }
            let totals =
                store::totals_history::owner_totals(pool, tenant_id, owner, &ends, currency);
            // Rows come in (at, currency) order, so each bucket's currencies stay sorted.
            for row in totals.await? {
                if let Some(bucket) = buckets.get_mut(&row.at) {
                    bucket.totals.push(TotalsAtRow {
                        currency: row.currency,
                        available: row.available,
                        pending: row.pending,
                        connect_reserved: row.connect_reserved,
                        instant_available: row.instant_available,
                        // Computed from the owner's snapshots: known for every bucket.
                        negative: Some(row.negative),
                        negative_accounts: Some(row.negative_accounts),
                    });
                }
            }
        }
    }
    Ok(TotalsSeries {
        interval,
        buckets: buckets.into_values().rev().collect(),
    })
}

/// The CSV columns of totals over time, in order (also the document's description).
pub const CSV_COLUMNS: [&str; 10] = [
    "at",
    "currency",
    "available",
    "pending",
    "connect_reserved",
    "instant_available",
    "accounts",
    "missing",
    "negative",
    "negative_accounts",
];

/// Totals over time, newest bucket first: the endpoint's body, serialized straight
/// from the series (no intermediate JSON tree).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TotalsList<'a> {
    #[schema(schema_with = list_kind)]
    object: &'static str,
    #[schema(value_type = Interval)]
    interval: &'static str,
    data: Vec<TotalsAt<'a>>,
}

/// The totals as of one bucket end.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TotalsAt<'a> {
    #[schema(format = DateTime)]
    at: String,
    /// Listed accounts whose balance is in the totals.
    accounts: i64,
    /// Listed accounts with no balance read yet (they add nothing).
    missing: i64,
    #[schema(value_type = Vec<TotalsAtRow>)]
    totals: &'a [TotalsAtRow],
}

fn list_kind() -> utoipa::openapi::schema::Schema {
    crate::schema::kind("list")
}

impl serde::Serialize for TotalsSeries {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.body().serialize(serializer)
    }
}

impl TotalsSeries {
    /// The endpoint's body: `{"object":"list","interval","data":[{"at","accounts",
    /// "missing","totals":[…]}]}`, newest bucket first.
    pub fn body(&self) -> TotalsList<'_> {
        TotalsList {
            object: "list",
            interval: self.interval.as_str(),
            data: self
                .buckets
                .iter()
                .map(|bucket| TotalsAt {
                    at: api_timestamp(&bucket.at),
                    accounts: bucket.accounts,
                    missing: bucket.missing,
                    totals: &bucket.totals,
                })
                .collect(),
        }
    }

    /// The endpoint's body: `{"object":"list","interval","data":[{"at","accounts",
    /// "missing","totals":[…]}]}`, newest bucket first.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a series serializes: strings and integers only")
    }

    /// One row per bucket and currency, newest bucket first; a bucket in which no
    /// account held any currency still gets one row (empty currency and amounts), so
    /// its counts are not lost. The exposure comes last (empty where it is unknown).
    pub fn to_csv(&self) -> Result<Vec<u8>, csv::Error> {
        use crate::csv_out::Cell::{Number, Text};
        let mut out = crate::csv_out::CsvOut::new();
        out.header(&CSV_COLUMNS)?;
        for bucket in &self.buckets {
            let at = api_timestamp(&bucket.at);
            let (accounts, missing) = (Number(bucket.accounts), Number(bucket.missing));
            if bucket.totals.is_empty() {
                let empty = Text("");
                out.row(&[
                    Text(&at),
                    empty,
                    empty,
                    empty,
                    empty,
                    empty,
                    accounts,
                    missing,
                    empty,
                    empty,
                ])?;
            }
            for row in &bucket.totals {
                let known = |value: Option<i64>| value.map_or(Text(""), Number);
                out.row(&[
                    Text(&at),
                    Text(&row.currency),
                    Number(row.available),
                    Number(row.pending),
                    Number(row.connect_reserved),
                    Number(row.instant_available),
                    accounts,
                    missing,
                    known(row.negative),
                    known(row.negative_accounts),
                ])?;
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(value: &str) -> DateTime<Utc> {
        parse_from(value).expect("a valid moment")
    }

    #[test]
    fn dates_cover_whole_utc_days() {
        assert_eq!(parse_from("2026-11-01"), Some(at("2026-11-01T00:00:00Z")));
        assert_eq!(parse_to("2026-11-30"), Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(
            parse_to("2026-11-30T12:00:00+01:00"),
            Some(at("2026-11-30T11:00:00Z"))
        );
        for bad in [
            "2026-13-01",
            "2026-11-31",
            "yesterday",
            "2026-11-01T25:00:00Z",
            "1",
        ] {
            assert_eq!(parse_from(bad), None, "{bad}");
        }
    }

    #[test]
    fn buckets_are_the_ends_of_every_interval_the_range_touches() {
        let ends = bucket_ends(Interval::Day, at("2026-11-01"), at("2026-11-04")).expect("ok");
        assert_eq!(
            ends,
            vec![at("2026-11-02"), at("2026-11-03"), at("2026-11-04")]
        );
        let ends = bucket_ends(
            Interval::Hour,
            at("2026-11-01T10:30:00Z"),
            at("2026-11-01T12:00:01Z"),
        )
        .expect("ok");
        assert_eq!(
            ends,
            vec![
                at("2026-11-01T11:00:00Z"),
                at("2026-11-01T12:00:00Z"),
                at("2026-11-01T13:00:00Z")
            ]
        );
        let year = bucket_ends(Interval::Day, at("2025-11-01"), at("2026-11-01")).expect("ok");
        assert_eq!(year.len(), 365);
    }

    #[test]
    fn reversed_ranges_and_too_many_buckets_are_refused() {
        assert!(matches!(
            bucket_ends(Interval::Day, at("2026-11-02"), at("2026-11-01")),
            Err(TotalsError::InvalidRange)
        ));
        assert!(matches!(
            bucket_ends(Interval::Hour, at("2026-11-01"), at("2026-11-01")),
            Err(TotalsError::InvalidRange)
        ));
        let thousand = at("2026-11-01") + Duration::hours(1000);
        assert_eq!(
            bucket_ends(Interval::Hour, at("2026-11-01"), thousand)
                .expect("exactly the limit")
                .len(),
            1000
        );
        assert!(matches!(
            bucket_ends(
                Interval::Hour,
                at("2026-11-01"),
                thousand + Duration::nanoseconds(1)
            ),
            Err(TotalsError::TooManyBuckets { buckets: 1001 })
        ));
        assert!(matches!(
            bucket_ends(Interval::Day, at("0001-01-01"), at("9999-12-31")),
            Err(TotalsError::TooManyBuckets { .. })
        ));
    }
}
