//! The admin page's "Daily close" view: `/admin/tenants/{slug}/close?date=…` (default:
//! the latest computed day). Accounts that do not tie out come first.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use maud::{html, Markup};

use super::pages;
use super::session::TenantPage;
use super::AdminError;
use crate::close::report::{self, DayCloseView, ReportError};
use crate::http::error::Code;
use crate::http::query;
use crate::http::AppState;
use crate::money::format_minor;
use crate::store;

pub async fn close_page(
    TenantPage { session, tenant }: TenantPage,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = query::pairs(raw.as_deref()).map_err(AdminError::Api)?;
    let asked =
        match query::first(&pairs, "date").map(str::trim) {
            None | Some("") => None,
            Some(value) => Some(NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
                AdminError::Invalid {
                    code: Code::InvalidDate,
                    message: "A date looks like 2026-11-30. Pick one with the date field.".into(),
                }
            })?),
        };
    let date = match asked {
        Some(date) => Some(date),
        None => store::closes::days(&state.pool, tenant.id, 1)
            .await?
            .first()
            .map(|d| d.day),
    };
    let day = match date {
        Some(date) => match report::day(&state.pool, &tenant, date).await {
            Ok(day) => Some(day),
            Err(ReportError::NotReady { .. }) => None,
            Err(ReportError::Database(error)) => return Err(error.into()),
            Err(ReportError::Csv(_)) => None,
        },
        None => None,
    };
    let body = page(&tenant.slug, &tenant.close_timezone, date, day.as_ref());
    Ok(pages::layout(
        &format!("Daily close {}", tenant.slug),
        Some(&session),
        body,
    )
    .into_response())
}

fn page(slug: &str, zone: &str, date: Option<NaiveDate>, day: Option<&DayCloseView>) -> Markup {
    html! {
        h1 { "Daily close of " (slug) }
        p { a href=(format!("/admin/tenants/{slug}")) { "← Tenant " (slug) } }
        form.filter method="get" action=(format!("/admin/tenants/{slug}/close")) {
            div {
                label for="close-date" { "Day (" (zone) ")" }
                input #close-date type="date" name="date" value=(date.map(|d| d.to_string()).unwrap_or_default());
            }
            button type="submit" { "Show" }
        }
        @match day {
            None => {
                p.empty { @match date {
                    Some(date) => { "No close for " (date) " yet: a day closes once Stripe's clock, as tally last read this tenant's ledger, has passed its end." }
                    None => { "No day is closed yet: days close once the accounts' balance transactions have been read past their end." }
                } }
            }
            Some(day) => { (day_view(day)) }
        }
    }
}

fn day_view(day: &DayCloseView) -> Markup {
    let differences: i64 = day.currencies.iter().map(|c| c.difference).sum();
    html! {
        p.summary {
            (day.date) " in " (day.timezone) ": " (day.starts_at) " to " (day.ends_at) " (UTC). "
            @if day.state == "closed" { "Closed." } @else { "Open: the numbers may still move." }
            @if day.reopened > 0 { " Reopened " (day.reopened) " times by late transactions." }
        }
        section aria-labelledby="differences-title" {
            h2 #differences-title { "Differences (" (differences) ")" }
            @if day.differences.is_empty() {
                p.empty { "Every checked closing ties out to the balance Stripe answered." }
            } @else {
                div.table-wrap { table {
                    caption { "Stripe's balance at the day's end minus the closing from the ledger" }
                    thead { tr {
                        th scope="col" { "Account" } th scope="col" { "Currency" }
                        th.num scope="col" { "Closing" } th.num scope="col" { "Difference (available)" }
                        th.num scope="col" { "Difference (pending)" } th scope="col" { "Checked against" }
                        th scope="col" { "Nearest transactions" }
                    } }
                    tbody { @for d in &day.differences { tr {
                        td { (d.stripeid) } td { (d.currency.to_ascii_uppercase()) }
                        td.num { (format_minor(d.closing.total, &d.currency)) }
                        td.num { (format_minor(d.difference.available, &d.currency)) }
                        td.num { (format_minor(d.difference.pending, &d.currency)) }
                        td { (d.checked_at) }
                        td.wrap { @for t in &d.nearest { (t.id) " " (t.reporting_category) " " (format_minor(t.net, &d.currency)) br; } }
                    } } }
                } }
            }
        }
        @for c in &day.currencies {
            section aria-labelledby=(format!("close-{}", c.currency)) {
                h2 id=(format!("close-{}", c.currency)) { (c.currency.to_ascii_uppercase()) }
                p.summary {
                    (c.accounts) " accounts: " (c.matched) " tie out, " (c.difference) " differ, " (c.unverified) " unverified. "
                    "Negative balances: " (format_minor(c.negative, &c.currency)) " in " (c.negative_accounts) " accounts."
                }
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "" } th.num scope="col" { "Count" } th.num scope="col" { "Gross" }
                        th.num scope="col" { "Fees" } th.num scope="col" { "Net" }
                    } }
                    tbody {
                        tr { th scope="row" { "Opening" } td {} td {} td {} td.num { (format_minor(c.opening.total, &c.currency)) } }
                        @for a in &c.activity { tr {
                            th scope="row" { (a.category) }
                            td.num { (a.count) } td.num { (format_minor(a.amount, &c.currency)) }
                            td.num { (format_minor(a.fee, &c.currency)) } td.num { (format_minor(a.net, &c.currency)) }
                        } }
                        tr { th scope="row" { "Closing" } td {} td {} td {} td.num { (format_minor(c.closing.total, &c.currency)) } }
                        tr { th scope="row" { "of which available" } td {} td {} td {} td.num { (format_minor(c.closing.available, &c.currency)) } }
                        tr { th scope="row" { "of which pending" } td {} td {} td {} td.num { (format_minor(c.closing.pending, &c.currency)) } }
                    }
                } }
            }
        }
    }
}
