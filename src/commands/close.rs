//! `tally close show <slug> --date D` and `tally close backfill <slug> --since D`: the
//! daily close from the command line. `show` first brings the tenant's days up to date
//! (as a server's closer would), so it answers without a server running.

use chrono::NaiveDate;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use super::balances::OutputFormat;
use crate::close::compute::{self, CloseRules};
use crate::close::ingest;
use crate::close::report::{self, DayCloseView};
use crate::config::Settings;
use crate::money::format_minor;
use crate::store;
use crate::store::tenants::Tenant;
use crate::stripe::Priority;
use crate::tenants::StripeTenants;

async fn tenant(pool: &PgPool, slug: &str) -> anyhow::Result<Tenant> {
    store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named '{slug}' (see `tally tenant list`)"))
}

/// The day, rendered.
pub async fn show(
    pool: &PgPool,
    settings: &Settings,
    slug: &str,
    date: NaiveDate,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let tenant = tenant(pool, slug).await?;
    compute::bring_up_to_date(pool, &tenant, CloseRules::from_settings(settings)).await?;
    Ok(match format {
        OutputFormat::Table => render_table(&report::day(pool, &tenant, date).await?),
        OutputFormat::Json => {
            serde_json::to_string_pretty(&report::day(pool, &tenant, date).await?)? + "\n"
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            // Read to the end right here, so a tracker of its own is enough.
            let tasks = tokio_util::task::TaskTracker::new();
            let mut rows = Box::pin(report::day_csv(pool.clone(), &tasks, &tenant, date).await?);
            while let Some(chunk) = rows.next().await {
                out.extend(chunk?);
            }
            String::from_utf8(out)?
        }
    })
}

fn render_table(day: &DayCloseView) -> String {
    let mut out = format!(
        "{} {} ({}; {} .. {}), {}{}\n",
        day.tenant,
        day.date,
        day.timezone,
        day.starts_at,
        day.ends_at,
        day.state,
        if day.reopened > 0 {
            format!(", reopened {} times", day.reopened)
        } else {
            String::new()
        }
    );
    for c in &day.currencies {
        let m = |amount: i64| format_minor(amount, &c.currency);
        out.push_str(&format!(
            "\n{}  opening {} (available {}, pending {})\n",
            c.currency.to_ascii_uppercase(),
            m(c.opening.total),
            m(c.opening.available),
            m(c.opening.pending)
        ));
        for a in &c.activity {
            out.push_str(&format!(
                "  {:<24} {:>6} × {:>16} fees {:>12} net {:>16}\n",
                a.category,
                a.count,
                m(a.amount),
                m(a.fee),
                m(a.net)
            ));
        }
        out.push_str(&format!(
            "  closing {} (available {}, pending {})\n  accounts {}: {} matched, {} difference, {} unverified; negative {} in {} accounts\n",
            m(c.closing.total),
            m(c.closing.available),
            m(c.closing.pending),
            c.accounts,
            c.matched,
            c.difference,
            c.unverified,
            m(c.negative),
            c.negative_accounts
        ));
    }
    if !day.differences.is_empty() {
        out.push_str("\nDIFFERENCES (Stripe's balance minus the closing)\n");
        for d in &day.differences {
            out.push_str(&format!(
                "  {} {} available {} pending {} (checked against Stripe at {})\n",
                d.stripeid,
                d.currency.to_ascii_uppercase(),
                format_minor(d.difference.available, &d.currency),
                format_minor(d.difference.pending, &d.currency),
                d.checked_at
            ));
        }
    }
    out
}

/// What a backfill did.
#[derive(Debug, Default)]
pub struct Backfilled {
    pub accounts: usize,
    pub failed: usize,
    pub requests: u64,
    pub stored: u64,
}

/// Loads every listed account's transactions back to the start of local day `since`,
/// at the tenant's background pace; resumable (each page moves the stored history's
/// start back), one account after another, with a progress bar on stderr.
pub async fn backfill(
    pool: &PgPool,
    stripe: &StripeTenants,
    settings: &Settings,
    slug: &str,
    since: NaiveDate,
) -> anyhow::Result<Backfilled> {
    let tenant = tenant(pool, slug).await?;
    anyhow::ensure!(
        tenant.disabled_at.is_none(),
        "tenant '{slug}' was removed (tally tenant remove)"
    );
    let client = stripe
        .client_for(&tenant)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_priority(Priority::Background);
    let (from, _) = store::closes::day_bounds(pool, &tenant.close_timezone, since).await?;
    let accounts = store::ledger::listed_accounts(pool, tenant.id).await?;
    let bar = ProgressBar::new(accounts.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} accounts {msg} ({eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut done = Backfilled::default();
    for account in &accounts {
        match ingest::backfill_account(
            pool,
            &client,
            &tenant,
            account,
            from,
            settings.close.settlement_days,
        )
        .await
        {
            Ok(read) => {
                done.requests += u64::from(read.requests);
                done.stored += read.stored;
            }
            Err(error) => {
                done.failed += 1;
                bar.println(format!("{}: {error}", account.stripeid));
            }
        }
        done.accounts += 1;
        bar.set_message(format!("{} transactions stored", done.stored));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(done)
}
