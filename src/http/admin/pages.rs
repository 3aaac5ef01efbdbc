//! The admin pages' markup (maud): a layout, the owner's overview, a tenant's page,
//! the sign-in form and error pages. Plain forms and links, no JavaScript; small
//! inline CSS that lays tables out to scroll on a narrow screen.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart::{totals_chart, Series};
use super::session::AdminSession;
use crate::dashboard::{AccountsPage, TenantOverview, TenantView, BELOW_ZERO_SHOWN, HISTORY_DAYS};
use crate::domain::Role;
use crate::freshness::{FreshnessBy, FreshnessMode};
use crate::money::{format_minor, CurrencyAmounts, Exposure};
use crate::store::admin::LastSync;

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1a1a1a;background:#fafafa}
a{color:#0b4aa2}
a:focus,button:focus,input:focus,summary:focus{outline:3px solid #f0a000;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px 8px}
header{background:#15325c;color:#fff;padding:8px 16px}
header nav{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;justify-content:space-between;max-width:1200px;margin:0 auto}
header a{color:#fff;font-weight:bold;text-decoration:none}
header form{display:inline}
main{max-width:1200px;margin:0 auto;padding:8px 16px 48px}
h1{font-size:1.6rem;margin:16px 0 8px}h2{font-size:1.25rem;margin:28px 0 8px}
.table-wrap{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid #ddd;background:#fff}
table{border-collapse:collapse;width:100%}
caption{text-align:left;font-weight:bold;padding:6px 8px}
th,td{padding:6px 10px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:16rem}
button{font:inherit;padding:6px 14px;border:1px solid #15325c;background:#15325c;color:#fff;border-radius:4px;cursor:pointer}
button.secondary{background:#fff;color:#15325c}
header button{background:#fff;color:#15325c;border-color:#fff;padding:3px 10px}
.actions{display:flex;flex-wrap:wrap;gap:8px}
.actions form{margin:0}
.notice{border-left:4px solid #1d6b35;background:#eef7f0;padding:8px 12px}
.error{border-left:4px solid #a12222;background:#fbeeee;padding:8px 12px}
.empty{color:#444;font-style:italic}
.summary{margin:4px 0 12px}
.chart-wrap{overflow-x:auto;max-width:762px}
.chart{display:block;width:100%;min-width:540px;height:auto;background:#fff;border:1px solid #ddd}
.chart text{font-family:inherit;fill:#1a1a1a}
.filter{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:8px 0}
.filter input{font:inherit;padding:5px 8px;min-width:14rem;max-width:100%}
.pager{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:10px 0}
label{font-weight:bold;display:block}
textarea{width:100%;max-width:40rem;font:14px monospace;padding:6px}
@media (max-width:600px){body{font-size:15px}main{padding:4px 10px 40px}th,td{padding:5px 6px}h1{font-size:1.35rem}}
"#;

/// Who is signed in, for the header.
fn who(session: &AdminSession) -> String {
    match &session.caller.tenant {
        Some(tenant) => format!("{} of {}", session.caller.role.as_str(), tenant.slug),
        None => "owner".to_owned(),
    }
}

pub fn layout(title: &str, session: Option<&AdminSession>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " — tally admin" }
                style { (PreEscaped(CSS)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a href="/admin" { "tally admin" }
                        @if let Some(session) = session {
                            span {
                                "Signed in as " (who(session)) " "
                                form method="post" action="/admin/logout" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn at(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn maybe_at(time: Option<&DateTime<Utc>>, none: &str) -> String {
    time.map_or_else(|| none.to_owned(), at)
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Paste an API token. Create one with " code { "tally token create --role reader --tenant <slug>" } " (or admin, or owner). The token is not kept in your browser: you get a session that lasts 8 hours, or until the token is revoked or expires." }
            @if let Some(error) = error {
                p.error role="alert" #login-error { (error) }
            }
            form method="post" action="/admin/login" {
                label for="token" { "API token" }
                textarea #token name="token" rows="2" required autocomplete="off" spellcheck="false"
                    aria-describedby=[error.map(|_| "login-error")] {}
                p { button type="submit" { "Sign in" } }
            }
        },
    )
}

pub fn error_page(
    session: Option<&AdminSession>,
    code: &str,
    title: &str,
    message: &str,
    what_to_do: Markup,
) -> Markup {
    layout(
        title,
        session,
        html! {
            h1 { (title) }
            p.error role="alert" data-code=(code) { (message) }
            p { (what_to_do) }
        },
    )
}

fn last_sync_text(sync: Option<&LastSync>) -> String {
    match sync {
        None => "never synced".to_owned(),
        Some(run) => {
            let mut text = format!("{} — started {}", run.status, at(&run.started_at));
            if let Some(finished) = &run.finished_at {
                text.push_str(&format!(", finished {}", at(finished)));
            }
            text.push_str(&format!(", {} accounts seen", run.accounts_seen));
            if let Some(error) = &run.error {
                text.push_str(&format!("; error: {error}"));
            }
            text
        }
    }
}

fn amounts_list(totals: &[CurrencyAmounts]) -> Markup {
    html! {
        @if totals.is_empty() {
            span.empty { "none yet" }
        } @else {
            @for row in totals {
                div data-currency=(row.currency) {
                    (row.currency.to_uppercase()) " " (format_minor(row.amounts.available, &row.currency))
                    " available, " (format_minor(row.amounts.pending, &row.currency)) " pending"
                }
            }
        }
    }
}

/// The currencies in which some account is below zero: what they owe, and how many.
fn exposure_list(exposure: &[(String, Exposure)]) -> Markup {
    html! {
        @for (currency, exposure) in exposure {
            div.exposure data-currency=(currency) {
                (currency.to_uppercase()) " " (format_minor(exposure.negative, currency))
                " owed by " (accounts_text(exposure.accounts)) " below zero"
            }
        }
    }
}

fn accounts_text(count: i64) -> String {
    if count == 1 {
        "1 account".to_owned()
    } else {
        format!("{count} accounts")
    }
}

pub fn overview(session: &AdminSession, tenants: &[TenantOverview]) -> Markup {
    layout(
        "Tenants",
        Some(session),
        html! {
            h1 { "Tenants" }
            @if tenants.is_empty() {
                p.empty { "No tenants yet. Add one on the server with " code { "tally tenant add <slug> --key-env <VAR>" } ", then sync it with " code { "tally sync <slug>" } "." }
            } @else {
                p { "Every tenant's per-currency totals (each account's latest good balance), how fresh they are, and its last account sync. Open a tenant for its chart, failing accounts and account table." }
                div.table-wrap {
                    table #tenants {
                        caption { "Tenants" }
                        thead { tr {
                            th scope="col" { "Tenant" }
                            th scope="col" class="num" { "Accounts" }
                            th scope="col" { "Totals" }
                            th scope="col" { "Oldest snapshot" }
                            th scope="col" class="num" { "Stale" }
                            th scope="col" class="num" { "Failing" }
                            th scope="col" { "Last sync" }
                        } }
                        tbody {
                            @for tenant in tenants {
                                tr data-tenant=(tenant.slug) {
                                    th scope="row" { a href=(format!("/admin/tenants/{}", tenant.slug)) { (tenant.slug) } }
                                    td.num { (tenant.listed) }
                                    td { (amounts_list(&tenant.totals)) (exposure_list(&tenant.exposure)) }
                                    td { (maybe_at(tenant.oldest.as_ref(), "never read")) }
                                    td.num.stale { (tenant.stale) }
                                    td.num.failing { (tenant.failing) }
                                    td.wrap { (last_sync_text(tenant.last_sync.as_ref())) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Messages a page can be sent back to after an action (an unknown one shows nothing).
pub fn notice_text(code: &str) -> Option<&'static str> {
    match code {
        "sync-started" => Some("Sync started: the accounts are being imported from Stripe. Reload this page to see them arrive."),
        "sync-running" => Some("A sync of this tenant is already running; it was not started twice. Reload this page to see its progress."),
        "refresh-started" => Some("Refresh started: every account's balance is being read again. Reload this page in a little while for the new totals."),
        _ => None,
    }
}

fn history_table(history: &[Series]) -> Markup {
    html! {
        details {
            summary { "The chart's numbers as a table" }
            div.table-wrap {
                table #history {
                    caption { "Available per currency at each bucket end" }
                    thead { tr {
                        th scope="col" { "Bucket end (UTC)" }
                        th scope="col" { "Currency" }
                        th scope="col" class="num" { "Available" }
                    } }
                    tbody {
                        @for series in history {
                            @for (time, amount) in &series.points {
                                tr {
                                    td { (at(time)) }
                                    td { (series.currency.to_uppercase()) }
                                    td.num { (format_minor(*amount, &series.currency)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn page_link(slug: &str, page: i64, owner: Option<&str>) -> String {
    let mut query = vec![("page", page.to_string())];
    if let Some(owner) = owner {
        query.push(("owner", owner.to_owned()));
    }
    let query = serde_urlencoded::to_string(&query).unwrap_or_default();
    format!("/admin/tenants/{slug}?{query}#accounts")
}

fn accounts_section(slug: &str, accounts: &AccountsPage, can_change: bool) -> Markup {
    let owner = accounts.owner.as_deref();
    let pages = accounts.pages();
    html! {
        h2 #accounts { "Accounts" }
        form.filter method="get" action=(format!("/admin/tenants/{slug}")) role="search" {
            div {
                label for="owner" { "Owner (accountid)" }
                input #owner type="search" name="owner" value=[owner] placeholder="e.g. user_42";
            }
            button.secondary type="submit" { "Filter" }
            @if owner.is_some() {
                a href=(format!("/admin/tenants/{slug}#accounts")) { "Clear the filter" }
            }
        }
        @if accounts.rows.is_empty() {
            p.empty #accounts-empty {
                @if accounts.total > 0 {
                    "No accounts on page " (accounts.page) ". "
                    a href=(page_link(slug, 1, owner)) { "Go to the first page" } "."
                } @else if let Some(owner) = owner {
                    "No listed account has owner “" (owner) "”. Check the id, or "
                    a href=(format!("/admin/tenants/{slug}#accounts")) { "clear the filter" } "."
                } @else if can_change {
                    "No accounts stored yet. Start a sync above to import them from Stripe."
                } @else {
                    "No accounts stored yet. Ask an admin to sync the tenant (or run " code { "tally sync " (slug) } ")."
                }
            }
        } @else {
            div.table-wrap {
                table #account-table {
                    caption {
                        @if let Some(owner) = owner { "Accounts of owner " (owner) } @else { "Accounts, newest first" }
                    }
                    thead { tr {
                        th scope="col" { "Account" }
                        th scope="col" { "Owner" }
                        th scope="col" { "Platform" }
                        th scope="col" { "Created" }
                        th scope="col" { "Balance (available, pending)" }
                        th scope="col" { "Latest read" }
                    } }
                    tbody {
                        @for row in &accounts.rows {
                            tr data-stripeid=(row.stripeid) {
                                th scope="row" { code { (row.stripeid) } }
                                td { (row.accountid.as_deref().unwrap_or("—")) }
                                td { (row.platform_id.as_deref().unwrap_or("—")) }
                                td { (at(&row.created_at)) }
                                td {
                                    @match &row.balance {
                                        Some(balance) => (amounts_list(&balance.amounts)),
                                        None => span.empty { "not read yet" },
                                    }
                                }
                                td {
                                    @match &row.balance {
                                        Some(balance) if balance.ok => {
                                            "ok, " (at(&balance.fetched_at))
                                            @if let Some(confirmed) = balance.confirmation.filter(|c| c.by == FreshnessBy::Events) {
                                                "; confirmed by events to " (at(&confirmed.confirmed_at))
                                            }
                                        }
                                        Some(balance) => {
                                            "failed, " (at(&balance.fetched_at))
                                            @if let Some(good) = &balance.good_at { "; balance shown is of " (at(good)) }
                                        }
                                        None => "never",
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Account pages" {
            @if accounts.page > 1 {
                a rel="prev" href=(page_link(slug, (accounts.page - 1).min(pages), owner)) { "← Previous page" }
            }
            span #page-status aria-live="polite" {
                "Page " (accounts.page) " of " (pages) " (" (accounts.total) " accounts)"
            }
            @if accounts.page < pages {
                a rel="next" href=(page_link(slug, accounts.page + 1, owner)) { "Next page →" }
            }
        }
    }
}

fn below_zero_section(view: &TenantView) -> Markup {
    let owing: i64 = view
        .aggregate
        .totals
        .iter()
        .map(|row| row.negative_accounts)
        .sum();
    html! {
        section aria-labelledby="below-zero-title" {
            h2 #below-zero-title { "Accounts below zero" }
            @if view.below_zero.is_empty() {
                p.empty { "None: no account's available balance is below zero." }
            } @else {
                div.table-wrap {
                    table #below-zero {
                        caption { "Accounts whose available balance is below zero, by currency, most owed first" }
                        thead { tr {
                            th scope="col" { "Account" }
                            th scope="col" { "Owner" }
                            th scope="col" { "Currency" }
                            th scope="col" class="num" { "Available" }
                            th scope="col" { "Balance of" }
                        } }
                        tbody {
                            @for row in &view.below_zero {
                                tr data-stripeid=(row.stripeid) data-currency=(row.currency) {
                                    th scope="row" { code { (row.stripeid) } }
                                    td { (row.accountid.as_deref().unwrap_or("—")) }
                                    td { (row.currency.to_uppercase()) }
                                    td.num data-kind="available" { (format_minor(row.available, &row.currency)) }
                                    td { (maybe_at(row.good_at.as_ref(), "—")) }
                                }
                            }
                        }
                    }
                }
                @if owing > view.below_zero.len() as i64 {
                    p { "Showing the " (BELOW_ZERO_SHOWN) " most owed of " (owing) "; the CSV of " code { "GET /api/administrator/connect/balances" } " has every account's balance." }
                }
            }
        }
    }
}

pub fn tenant(
    session: &AdminSession,
    slug: &str,
    view: &TenantView,
    notice: Option<&str>,
) -> Markup {
    let aggregate = &view.aggregate;
    let counts = &aggregate.accounts;
    let can_change = session.may_change();
    let shown_failures = 100;
    html! {
        h1 { "Tenant " (slug) }
        @if session.caller.role == Role::Owner {
            p { a href="/admin" { "← All tenants" } }
        }
        p { a href=(format!("/admin/tenants/{slug}/close")) { "Daily close →" } }
        @if let Some(notice) = notice {
            p.notice role="status" { (notice) }
        }
        @if can_change {
            section aria-labelledby="actions-title" {
                h2 #actions-title { "Actions" }
                div.actions {
                    form method="post" action=(format!("/admin/tenants/{slug}/sync")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Sync accounts from Stripe" }
                    }
                    form method="post" action=(format!("/admin/tenants/{slug}/refresh")) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Refresh every balance now" }
                    }
                }
                p { "Last sync: " (last_sync_text(view.last_sync.as_ref())) }
            }
        } @else {
            p #read-only { "You can read this tenant. Starting a sync or a refresh needs an admin or owner token. Last sync: " (last_sync_text(view.last_sync.as_ref())) }
        }
        section aria-labelledby="totals-title" {
            h2 #totals-title { "Totals" }
            p.summary {
                (counts.total) " accounts: " (counts.ok) " read, " (counts.failed) " failing or never read, " (counts.stale) " stale. "
                "Oldest snapshot: " (maybe_at(aggregate.oldest_fetched_at.as_ref(), "none")) ". "
                @match (aggregate.freshness_mode, aggregate.stream_live) {
                    (FreshnessMode::Events, true) => { "Following Connect events (stream live); oldest confirmed: " (maybe_at(aggregate.oldest_confirmed_at.as_ref(), "none")) ". " }
                    (FreshnessMode::Events, false) => { "Following Connect events, but the stream is silent: only fetches count. " }
                    (FreshnessMode::Poll, _) => {}
                }
                @if aggregate.complete { "Every account contributed." } @else { "Not every account contributed: see the accounts that need attention below." }
            }
            @if aggregate.totals.is_empty() {
                p.empty { "No balances read yet. " @if can_change { "Start a refresh above, or wait for the refresher's next round." } @else { "They appear once the refresher has read the accounts." } }
            } @else {
                div.table-wrap {
                    table #totals {
                        caption { "Per-currency totals, in each currency's own decimals" }
                        thead { tr {
                            th scope="col" { "Currency" }
                            th scope="col" class="num" { "Available" }
                            th scope="col" class="num" { "Pending" }
                            th scope="col" class="num" { "Connect reserved" }
                            th scope="col" class="num" { "Instant available" }
                            th scope="col" class="num" { "Owed below zero" }
                            th scope="col" class="num" { "Accounts below zero" }
                        } }
                        tbody {
                            @for row in &aggregate.totals {
                                tr data-currency=(row.currency) {
                                    th scope="row" { (row.currency.to_uppercase()) }
                                    td.num data-kind="available" { (format_minor(row.available, &row.currency)) }
                                    td.num data-kind="pending" { (format_minor(row.pending, &row.currency)) }
                                    td.num data-kind="connectReserved" { (format_minor(row.connect_reserved, &row.currency)) }
                                    td.num data-kind="instantAvailable" { (format_minor(row.instant_available, &row.currency)) }
                                    td.num data-kind="negative" { (format_minor(row.negative, &row.currency)) }
                                    td.num data-kind="negativeAccounts" { (row.negative_accounts) }
                                }
                            }
                        }
                    }
                }
                p { "Available is net: accounts below zero take away from it. " em { "Owed below zero" } " is the platform's exposure: what those accounts owe, which the platform bears for accounts it controls." }
            }
        }
        (below_zero_section(view))
        section aria-labelledby="history-title" {
            h2 #history-title { "Available over the last " (HISTORY_DAYS) " days" }
            div.chart-wrap { (totals_chart(&view.history)) }
            @if view.history.iter().any(|s| !s.points.is_empty()) {
                (history_table(&view.history))
            }
        }
        section aria-labelledby="failures-title" {
            h2 #failures-title { "Accounts that need attention" }
            @if aggregate.failures.is_empty() {
                p.empty { "None: every account's latest balance was read." }
            } @else {
                p {
                    @if aggregate.failures.len() == 1 { "1 account did not" } @else { (aggregate.failures.len()) " accounts did not" }
                    " return a balance on its latest try. The totals still hold the last good balance of each, if it had one."
                }
                div.table-wrap {
                    table #failures {
                        caption { "Failing accounts" }
                        thead { tr {
                            th scope="col" { "Account" }
                            th scope="col" class="num" { "Status" }
                            th scope="col" { "Code" }
                            th scope="col" { "What to do" }
                            th scope="col" { "Tried" }
                            th scope="col" { "Last good balance" }
                        } }
                        tbody {
                            @for failed in aggregate.failures.iter().take(shown_failures) {
                                @let failure = &failed.failure;
                                tr data-stripeid=(failed.stripeid) {
                                    th scope="row" { code { (failed.stripeid) } }
                                    td.num { (failure.status.map_or_else(|| "—".to_owned(), |s| s.to_string())) }
                                    td { (failure.code_or_type().unwrap_or("—")) }
                                    td.wrap { (failure.hint.as_deref().or(failure.message.as_deref()).unwrap_or("—")) }
                                    td { (maybe_at(failed.fetched_at.as_ref(), "never")) }
                                    td { (maybe_at(failed.last_good_at.as_ref(), "never read")) }
                                }
                            }
                        }
                    }
                }
                @if aggregate.failures.len() > shown_failures {
                    p { "Showing the first " (shown_failures) "; the API's " code { "GET /api/administrator/connect/balances" } " lists them all." }
                }
            }
        }
        (accounts_section(slug, &view.accounts, can_change))
    }
}
