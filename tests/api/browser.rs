//! The admin pages in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver, started here on a free port) against a real server and
//! the simulator. Screenshots at 1280 and 390 px wide go to target/screenshots/.
//!
//! Without `chromium` and `chromedriver` the test installs them from Debian's packages
//! when it runs as root with apt-get (`provision`), and otherwise fails saying what to
//! run; it never passes silently.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tally::domain::Role;
use tally::money::minor_digits;
use tally::money::Totals;
use tally::sim::SimConfig;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::store::snapshots::SnapshotOutcome;

use crate::admin::csrf_in;
use crate::balances::reported_totals;
use crate::helpers::{free_port, ids, spawn_app, spawn_sim, TestApp};
use crate::provision;

const INSTALL: &str = "the browser tests need Debian's Chromium and its WebDriver: \
                       apt-get update && apt-get install -y chromium chromium-driver";

/// `chromium` and `chromedriver`, installed first if need be.
fn chromium_and_driver() -> (PathBuf, PathBuf) {
    let found = provision::ensure(&provision::BROWSER);
    (found[0].clone(), found[1].clone())
}

/// chromedriver on a free port; stopped (by its own pid) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let (_, chromedriver) = tokio::task::spawn_blocking(chromium_and_driver)
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("chromedriver did not start ({error}); {INSTALL}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while reqwest::get(format!("{}/status", driver.url))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let (chromium, _) = chromium_and_driver();
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--force-device-scale-factor=1", "--hide-scrollbars"]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!("an object literal")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|error| panic!("no Chromium session ({error}); {INSTALL}"))
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// `"-1234.56"` in `currency` → minor units, refusing any other number of decimals.
fn parse_major(text: &str, currency: &str) -> i64 {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let places = minor_digits(currency) as usize;
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert_eq!(fraction.len(), places, "{text} in {currency}'s decimals");
    let magnitude: i64 = format!("{whole}{fraction}").parse().expect("a number");
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The text of the element, waiting for it to appear (a click's navigation may
/// still be loading when this is asked).
async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(std::time::Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"))
        .text()
        .await
        .expect("text")
}

/// Clicks what does not leave the page (a `<details>` summary).
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
}

/// Clicks a link or a form's button and waits until the browser shows the page it
/// leads to. WebDriver's click may return before a form post's answer has even
/// started loading, and then the old page would be read as if it were the new one.
async fn click_to(client: &Client, element: Element) {
    client
        .execute("window.tallyLeftBehind = true", vec![])
        .await
        .expect("mark the page");
    element.click().await.expect("clicked");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // While the next page loads the script may fail; that is "not yet".
        let arrived = client
            .execute(
                "return document.readyState === 'complete' && !window.tallyLeftBehind",
                vec![],
            )
            .await
            .ok();
        if arrived == Some(json!(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "the click led to no new page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn navigate(client: &Client, css: &str) {
    let element = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"));
    click_to(client, element).await;
}

async fn sign_in(client: &Client, app: &TestApp, token: &str) {
    client
        .goto(&format!("{}/admin/login", app.address))
        .await
        .expect("login page");
    let field = client
        .find(Locator::Css("textarea#token"))
        .await
        .expect("token field");
    field.send_keys(token).await.expect("typed");
    navigate(client, "form[action='/admin/login'] button").await;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("main h1"))
        .await
        .expect("a page after signing in");
}

/// The totals table as the page shows it, parsed back to minor units.
async fn shown_totals(client: &Client) -> BTreeMap<String, [i64; 4]> {
    let mut out = BTreeMap::new();
    for row in client
        .find_all(Locator::Css("#totals tbody tr"))
        .await
        .expect("rows")
    {
        let currency = row
            .attr("data-currency")
            .await
            .expect("attr")
            .expect("currency");
        let mut amounts = [0i64; 4];
        for (index, kind) in [
            "available",
            "pending",
            "connectReserved",
            "instantAvailable",
        ]
        .iter()
        .enumerate()
        {
            let cell = row
                .find(Locator::Css(&format!("td[data-kind='{kind}']")))
                .await
                .expect("cell");
            amounts[index] = parse_major(&cell.text().await.expect("text"), &currency);
        }
        out.insert(currency, amounts);
    }
    out
}

async fn shown_account_ids(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in client
        .find_all(Locator::Css("#account-table tbody tr"))
        .await
        .expect("rows")
    {
        out.push(
            row.attr("data-stripeid")
                .await
                .expect("attr")
                .expect("stripeid"),
        );
    }
    out
}

async fn screenshot(client: &Client, width: u32, height: u32, name: &str) -> PathBuf {
    client
        .set_window_size(width, height)
        .await
        .expect("window size");
    let inner = client
        .execute("return window.innerWidth", vec![])
        .await
        .expect("width");
    assert_eq!(inner.as_u64(), Some(u64::from(width)), "viewport width");
    // From the top of the page, whatever was clicked last: the heading and the
    // totals are what a reviewer (and the README's copy) should see first.
    client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .expect("scroll to the top");
    // Nothing but a table's own scroller is wider than the screen.
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .expect("overflow");
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the page scrolls sideways at {width} px: {overflow}"
    );
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshot_dir().join(format!("{name}-{width}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    path
}

/// A page on another origin (same host, another port) with a form that posts to
/// the admin page, carrying even a valid CSRF token as if it had leaked.
async fn attacker_page(target: String, csrf: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let html = format!(
        "<!doctype html><html lang=en><title>prize</title><form method=post action=\"{target}\">\
         <input type=hidden name=csrf value=\"{csrf}\"><button id=go>Claim</button></form>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

/// Gives the tenant a month of history: its accounts listed `days` days ago, then a
/// balance every three days, each account's available amounts growing towards what
/// the simulator holds now.
async fn seed_history(
    app: &TestApp,
    tenant: i64,
    sim: &tally::sim::SimHandle,
    accounts: &[String],
    days: i64,
) {
    let start = chrono::Utc::now() - chrono::Duration::days(days);
    let inputs: Vec<AccountInput> = accounts
        .iter()
        .map(|id| {
            let object = sim.account_object(id).expect("sim account");
            AccountInput::from_stripe_object(
                &object,
                None,
                &app.settings.accounts.owner_metadata_key,
            )
            .expect("account")
        })
        .collect();
    let mut tx = app.pool.begin().await.expect("begin");
    // Listed from `start` in history, as the totals migration lets a test pin it.
    sqlx::query("SELECT set_config('tally.clock', $1, true)")
        .bind(start.to_rfc3339())
        .execute(&mut *tx)
        .await
        .expect("clock");
    store::accounts::upsert(&mut *tx, tenant, &inputs, Observed::Fetched(start))
        .await
        .expect("upsert");
    tx.commit().await.expect("commit");
    let mut conn = app.pool.acquire().await.expect("connection");
    for ago in (1..days).rev().step_by(3) {
        let at = chrono::Utc::now() - chrono::Duration::days(ago);
        for id in accounts {
            let mut raw = sim.balance_of(id).expect("sim balance");
            for entry in raw["available"].as_array_mut().into_iter().flatten() {
                let amount = entry["amount"].as_i64().expect("amount");
                entry["amount"] = json!(amount * (days - ago) / days);
            }
            let balance: tally::stripe::Balance =
                serde_json::from_value(raw.clone()).expect("balance");
            let totals = Totals::from_balance(&balance).expect("totals");
            store::snapshots::record(
                &mut conn,
                tenant,
                &crate::helpers::acct(id),
                at,
                "fetch",
                SnapshotOutcome::Balance {
                    raw: &raw,
                    totals: &totals,
                },
            )
            .await
            .expect("snapshot");
        }
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_person_signs_in_reads_totals_pages_accounts_and_only_admins_get_buttons() {
    let driver = start_driver().await;
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 24,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    let tenant = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    seed_history(&app, tenant, &sim, &accounts, 30).await;
    sim.fail_account(&accounts[0], 500);
    let reader = app.token(Role::Reader, Some("acme")).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let (status, _) = app
        .get_json("/api/administrator/connect/balances?max_age=0", &reader)
        .await;
    assert_eq!(status, 200);
    let (_, api) = app
        .get_json("/api/administrator/connect/balances", &reader)
        .await;
    let api_totals = reported_totals(&api);
    assert!(api_totals.len() >= 2, "several currencies: {api}");

    let client = browser(&driver).await;
    sign_in(&client, &app, &admin).await;
    assert_eq!(text_of(&client, "main h1").await, "Tenant acme");

    // The totals shown are the API's, to the minor unit.
    assert_eq!(shown_totals(&client).await, api_totals);
    // The chart has one series per currency, each drawn with its own dash pattern,
    // a point per bucket of the month, and ends at today's totals.
    let series = client
        .find_all(Locator::Css("svg.chart g.series"))
        .await
        .expect("series");
    let mut currencies = Vec::new();
    let mut dashes = Vec::new();
    for group in &series {
        let currency = group
            .attr("data-currency")
            .await
            .expect("a")
            .expect("currency");
        let line = group.find(Locator::Css("path.line")).await.expect("line");
        dashes.push(
            line.attr("stroke-dasharray")
                .await
                .expect("a")
                .expect("dash"),
        );
        let path = line.attr("d").await.expect("a").expect("d");
        assert!(
            path.matches('L').count() >= 10,
            "{currency}: a month of points: {path}"
        );
        let label = group
            .find(Locator::Css("text.direct-label"))
            .await
            .expect("label")
            .text()
            .await
            .expect("text");
        let (code, amount) = label.split_once(' ').expect("CUR amount");
        assert_eq!(code, currency.to_uppercase());
        assert_eq!(
            parse_major(amount, &currency),
            api_totals[&currency][0],
            "{label}"
        );
        currencies.push(currency);
    }
    currencies.sort();
    assert_eq!(currencies, api_totals.keys().cloned().collect::<Vec<_>>());
    dashes.sort();
    dashes.dedup();
    assert_eq!(dashes.len(), series.len(), "a dash pattern per series");
    // The chart's numbers (its table) are the totals endpoint's, bucket by bucket.
    let from = (chrono::Utc::now() - chrono::Duration::days(29)).format("%Y-%m-%d");
    let (status, history) = app
        .get_json(
            &format!("/api/administrator/connect/balances/totals?interval=day&from={from}"),
            &reader,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let mut expected_points = BTreeMap::new();
    for bucket in history["data"].as_array().expect("buckets") {
        let at = chrono::DateTime::parse_from_rfc3339(bucket["at"].as_str().expect("at"))
            .expect("RFC 3339")
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string();
        for row in bucket["totals"].as_array().expect("totals") {
            let currency = row["currency"].as_str().expect("currency").to_owned();
            expected_points.insert(
                (at.clone(), currency),
                row["available"].as_i64().expect("minor"),
            );
        }
    }
    assert!(
        expected_points.len() >= 5 * 25,
        "a month of buckets: {}",
        expected_points.len()
    );
    click(&client, "#history-title ~ details summary").await;
    let mut shown_points = BTreeMap::new();
    for row in client
        .find_all(Locator::Css("#history tbody tr"))
        .await
        .expect("rows")
    {
        let cells = row.find_all(Locator::Css("td")).await.expect("cells");
        let mut text = Vec::new();
        for cell in cells {
            text.push(cell.text().await.expect("text"));
        }
        let currency = text[1].to_lowercase();
        let amount = parse_major(&text[2], &currency);
        shown_points.insert((text[0].clone(), currency), amount);
    }
    assert_eq!(shown_points, expected_points);
    click(&client, "#history-title ~ details summary").await;
    // The failing account is listed with its status, code and hint.
    let failure = text_of(
        &client,
        &format!("#failures tr[data-stripeid='{}']", accounts[0]),
    )
    .await;
    let reported = api["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|f| f["stripeid"] == json!(accounts[0]))
        .expect("the API reports the failing account");
    // The page's Code column shows Stripe's code, or its error type when there is none.
    for field in ["status", "type", "code", "hint"] {
        let value = match &reported[field] {
            Value::String(text) => text.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        assert!(failure.contains(&value), "{field} {value} in {failure}");
    }

    // Paging walks the accounts in the API's order.
    let (_, listing) = app
        .get_json(
            "/api/administrator/connect/stripe-accounts?limit=100",
            &reader,
        )
        .await;
    let expected = ids(&listing);
    assert_eq!(expected.len(), 24);
    let per_page = usize::try_from(app.settings.api.page_size).expect("page size");
    let mut walked = shown_account_ids(&client).await;
    assert_eq!(walked.len(), per_page.min(24));
    assert!(text_of(&client, "#page-status")
        .await
        .starts_with("Page 1 of 3"));
    screenshot(&client, 1280, 2000, "admin-tenant").await;
    screenshot(&client, 390, 2400, "admin-tenant").await;
    client.set_window_size(1280, 1000).await.expect("size");
    // The keyboard reaches the skip link first on a freshly loaded page.
    client.refresh().await.expect("reload");
    client
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .send_keys("\u{E004}")
        .await
        .expect("tab");
    let focused = client
        .execute("return document.activeElement.textContent", vec![])
        .await
        .expect("focus");
    assert_eq!(focused, json!("Skip to content"));
    while let Ok(next) = client.find(Locator::Css("a[rel='next']")).await {
        click_to(&client, next).await;
        walked.extend(shown_account_ids(&client).await);
        assert!(walked.len() <= 24, "paging ends");
    }
    assert_eq!(walked, expected);
    assert!(text_of(&client, "#page-status")
        .await
        .starts_with("Page 3 of 3"));
    // Back again.
    navigate(&client, "a[rel='prev']").await;
    assert_eq!(
        shown_account_ids(&client).await,
        expected[per_page..2 * per_page]
    );

    // The owner filter shows that owner's accounts, as the API does.
    let owner = listing
        .as_array()
        .expect("records")
        .iter()
        .find_map(|r| r["accountid"].as_str())
        .expect("an account with an owner")
        .to_owned();
    let field = client
        .find(Locator::Css("input#owner"))
        .await
        .expect("filter");
    field.clear().await.expect("clear");
    field.send_keys(&owner).await.expect("typed");
    navigate(&client, "form.filter button").await;
    let (_, owned) = app
        .get_json(
            &format!("/api/administrator/connect/stripe-accounts?limit=100&accountid={owner}"),
            &reader,
        )
        .await;
    assert_eq!(shown_account_ids(&client).await, ids(&owned));

    // A form posted from another origin is refused even with a leaked CSRF token.
    let csrf = csrf_in(&client.source().await.expect("source"));
    let evil = attacker_page(format!("{}/admin/tenants/acme/sync", app.address), csrf).await;
    client.goto(&evil).await.expect("attacker page");
    navigate(&client, "#go").await;
    let refused = client.source().await.expect("source");
    assert!(
        refused.contains("data-code=\"cross-site-request\""),
        "{refused}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM sync_runs").await, 0);

    // The page's own button starts a sync.
    client
        .goto(&format!("{}/admin/tenants/acme", app.address))
        .await
        .expect("tenant page");
    navigate(&client, "form[action='/admin/tenants/acme/sync'] button").await;
    assert!(text_of(&client, "p.notice").await.contains("Sync"));
    assert_eq!(count(&app, "SELECT count(*) FROM sync_runs").await, 1);

    // Sign out; the pages are closed again.
    navigate(&client, "form[action='/admin/logout'] button").await;
    client
        .goto(&format!("{}/admin/tenants/acme", app.address))
        .await
        .expect("tenant page");
    assert!(client
        .current_url()
        .await
        .expect("url")
        .as_str()
        .ends_with("/admin/login"));

    // A reader sees no buttons, and posting as one is refused.
    sign_in(&client, &app, &reader).await;
    assert!(client
        .find_all(Locator::Css(
            "form[action$='/sync'], form[action$='/refresh']"
        ))
        .await
        .expect("forms")
        .is_empty());
    assert!(text_of(&client, "#read-only")
        .await
        .contains("needs an admin or owner token"));
    let cookie = client
        .get_named_cookie("tally_admin_session")
        .await
        .expect("session cookie");
    assert!(cookie.http_only().unwrap_or(false));
    let csrf = csrf_in(&client.source().await.expect("source"));
    let response = crate::admin::no_redirects()
        .post(format!("{}/admin/tenants/acme/refresh", app.address))
        .header("cookie", format!("tally_admin_session={}", cookie.value()))
        .header("origin", &app.address)
        .header("sec-fetch-site", "same-origin")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 403);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM balance_refreshes WHERE trigger = 'person'"
        )
        .await,
        0
    );
    screenshot(&client, 390, 1600, "admin-reader").await;

    client.close().await.expect("browser closes");
}

#[tokio::test]
async fn an_owner_sees_every_tenant_with_totals_freshness_and_last_sync() {
    let driver = start_driver().await;
    let sim = spawn_sim(SimConfig {
        platforms: 2,
        accounts_per_platform: 5,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    for (index, slug) in ["acme", "globex"].iter().enumerate() {
        let tenant = app.add_sim_platform_tenant(slug, &sim, index).await;
        let accounts = sim.keys().platforms[index].accounts.clone();
        app.store_sim_accounts(tenant, &sim, &accounts, None).await;
    }
    let owner = app.token(Role::Owner, None).await;
    let (status, _) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&tenant=acme",
            &owner,
        )
        .await;
    assert_eq!(status, 200);
    let (_, api) = app
        .get_json("/api/administrator/connect/balances?tenant=acme", &owner)
        .await;

    let client = browser(&driver).await;
    sign_in(&client, &app, &owner).await;
    assert_eq!(text_of(&client, "main h1").await, "Tenants");
    let acme = text_of(&client, "tr[data-tenant='acme']").await;
    let globex = text_of(&client, "tr[data-tenant='globex']").await;
    for row in api["totals"].as_array().expect("totals") {
        let currency = row["currency"].as_str().expect("currency");
        let amount =
            tally::money::format_minor(row["available"].as_i64().expect("minor"), currency);
        assert!(
            acme.contains(&format!("{} {amount} available", currency.to_uppercase())),
            "{acme}"
        );
    }
    assert!(
        globex.contains("none yet") && globex.contains("never read"),
        "{globex}"
    );
    assert_eq!(
        text_of(&client, "tr[data-tenant='globex'] td.stale").await,
        "5"
    );
    assert_eq!(
        text_of(&client, "tr[data-tenant='acme'] td.stale").await,
        "0"
    );
    screenshot(&client, 1280, 900, "admin-owner").await;
    screenshot(&client, 390, 1200, "admin-owner").await;
    let link = client
        .find(Locator::LinkText("globex"))
        .await
        .expect("link");
    click_to(&client, link).await;
    assert_eq!(text_of(&client, "main h1").await, "Tenant globex");
    client.close().await.expect("browser closes");
}
