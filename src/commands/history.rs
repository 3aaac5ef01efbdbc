//! `tally balances <slug> --history day|hour --from … [--to …]`: the totals over time
//! the API's `balances/totals` serves, from stored data only (nothing is fetched from
//! Stripe, so no master key is needed), as a table, CSV or JSON.

use sqlx::PgPool;

use super::balances::OutputFormat;
use crate::money::format_minor;
use crate::store;
use crate::totals::{self, Interval, TotalsSeries};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryInterval {
    Hour,
    Day,
}

impl From<HistoryInterval> for Interval {
    fn from(interval: HistoryInterval) -> Interval {
        match interval {
            HistoryInterval::Hour => Interval::Hour,
            HistoryInterval::Day => Interval::Day,
        }
    }
}

/// The rendered series. `to` defaults to now.
pub async fn run(
    pool: &PgPool,
    slug: &str,
    interval: HistoryInterval,
    from: &str,
    to: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let moment =
        |value: &str| format!("--{value} must be an RFC 3339 timestamp or a date (2026-11-01)");
    let from = totals::parse_from(from).ok_or_else(|| anyhow::anyhow!(moment("from")))?;
    let to = match to {
        Some(to) => totals::parse_to(to).ok_or_else(|| anyhow::anyhow!(moment("to")))?,
        None => chrono::Utc::now(),
    };
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named '{slug}' (see `tally tenant list`)"))?;
    let series = totals::totals_over_time(pool, tenant.id, interval.into(), from, to, None, None)
        .await
        .map_err(|error| anyhow::anyhow!("totals of {slug}: {error}"))?;
    Ok(match format {
        OutputFormat::Table => render_table(&series),
        OutputFormat::Json => serde_json::to_string_pretty(&series.to_json())? + "\n",
        OutputFormat::Csv => String::from_utf8(series.to_csv()?)?,
    })
}

/// One line per bucket and currency, newest first, amounts in each currency's own
/// decimals; a bucket in which no account held anything shows `-`.
pub fn render_table(series: &TotalsSeries) -> String {
    let line = |cells: [&str; 8]| {
        format!(
            "{:<20} {:<8} {:>20} {:>20} {:>20} {:>20} {:>8} {:>8}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let mut out = line([
        "AT",
        "CURRENCY",
        "AVAILABLE",
        "PENDING",
        "CONNECT RESERVED",
        "INSTANT AVAILABLE",
        "ACCOUNTS",
        "MISSING",
    ]);
    for bucket in &series.buckets {
        let at = bucket.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (accounts, missing) = (bucket.accounts.to_string(), bucket.missing.to_string());
        if bucket.totals.is_empty() {
            out.push_str(&line([&at, "-", "-", "-", "-", "-", &accounts, &missing]));
        }
        for row in &bucket.totals {
            out.push_str(&line([
                &at,
                &row.currency.to_uppercase(),
                &format_minor(row.available, &row.currency),
                &format_minor(row.pending, &row.currency),
                &format_minor(row.connect_reserved, &row.currency),
                &format_minor(row.instant_available, &row.currency),
                &accounts,
                &missing,
            ]));
        }
    }
    out
}
