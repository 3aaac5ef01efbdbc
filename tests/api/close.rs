//! The daily close (issue "The daily close"): each account's day per currency, built
//! from the balance transactions tally reads after each fetch, equals the simulator's
//! ledger at every day's end (in UTC and across a daylight-saving change), ties out to
//! the balances Stripe answered, reopens for a late transaction and shows a balance
//! that moved without a transaction as a difference.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tally::audit::Actor;
use tally::close::compute::{bring_up_to_date, CloseRules};
use tally::commands::tenant::{self, TenantUpdate};
use tally::domain::Role;
use tally::sim::{SimConfig, SimHandle};
use tally::store::tenants::Tenant;

use crate::helpers::{spawn_app_with, TestApp};
use crate::sync::{add_platform_tenant, sync_ok};

/// 2026-10-23T12:00:00Z: two days before Europe/Berlin leaves summer time (25 October).
const CLOCK_START: i64 = 1_792_756_800;
const DAY: i64 = 86_400;
/// The simulator's opening balances come from transactions up to a week old: a first
/// read reaching back that far knows every one still pending.
const SETTLEMENT_DAYS: u32 = 7;

async fn close_app() -> TestApp {
    spawn_app_with(|s| {
        s.close.read_ledger = true;
        s.close.settle_secs = 0;
        s.close.settlement_days = SETTLEMENT_DAYS;
        s.close.tick_secs = 1;
    })
    .await
}

async fn ledger_sim(accounts: usize, activity_per_hour: f64, speed: f64) -> SimHandle {
    let sim = tally::sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: accounts,
        org_accounts: 0,
        activity_per_hour,
        clock_speed: speed,
        clock_start: Some(CLOCK_START),
        // Charges settle the next UTC midnight after two days, as Stripe's do.
        settlement_secs: 2 * DAY,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    sim.set_clock_paused(true);
    sim
}

async fn set_zone(app: &TestApp, slug: &str, zone: &str) {
    tenant::update(
        &app.pool,
        &app.master,
        slug,
        TenantUpdate {
            close_timezone: Some(zone.to_owned()),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await
    .expect("close timezone");
}

/// Every account fetched, and its ledger read, now.
async fn refresh_all(app: &TestApp, token: &str) {
    let (status, body) = app
        .get_json(
            "/api/administrator/connect/balances?max_age=0&wait=25",
            token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ledger_caught_up(app).await;
}

/// Waits until every account's ledger is read up to its latest balance: the refresher
/// reads transactions right after the balance a poll waited for.
async fn ledger_caught_up(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM latest_balances l
               LEFT JOIN ledger_reads r USING (tenant_id, stripeid)
               JOIN balance_snapshots s ON s.id = l.snapshot_id
              WHERE l.ok AND (r.complete_to IS NULL OR r.complete_to < s.stripe_at)",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count");
        if behind == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind} ledgers not read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the simulator's ledger says each account held at the end of second `at`:
/// account → currency → (available, pending).
async fn ledger_truth(sim: &SimHandle, at: i64) -> BTreeMap<String, BTreeMap<String, (i64, i64)>> {
    let body: Value = reqwest::get(format!("{}/_sim/ledger/balances?at={at}", sim.base_url()))
        .await
        .expect("simulator answers")
        .json()
        .await
        .expect("JSON");
    let mut out = BTreeMap::new();
    for (account, currencies) in body["accounts"].as_object().expect("accounts") {
        let per: BTreeMap<String, (i64, i64)> = currencies
            .as_array()
            .expect("currencies")
            .iter()
            .map(|c| {
                (
                    c["currency"].as_str().expect("currency").to_owned(),
                    (
                        c["available"].as_i64().expect("available"),
                        c["pending"].as_i64().expect("pending"),
                    ),
                )
            })
            .collect();
        out.insert(account.clone(), per);
    }
    out
}

/// One account's closing per currency on `date`, as tally's API answers it.
async fn closings(
    app: &TestApp,
    token: &str,
    stripeid: &str,
    date: &str,
) -> BTreeMap<String, (i64, i64, String)> {
    let (status, body) = app
        .get_json(
            &format!(
                "/api/administrator/connect/stripe-account/close?stripeid={stripeid}&from_date={date}"
            ),
            token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| {
            (
                d["currency"].as_str().expect("currency").to_owned(),
                (
                    d["closing"]["available"].as_i64().expect("available"),
                    d["closing"]["pending"].as_i64().expect("pending"),
                    d["tieout"].as_str().expect("tieout").to_owned(),
                ),
            )
        })
        .collect()
}

async fn day_of(app: &TestApp, token: &str, date: &str) -> (u16, Value) {
    app.get_json(
        &format!("/api/administrator/connect/balances/close?date={date}"),
        token,
    )
    .await
}

/// Stores `rows` as a closed UTC day, as the closer stores one (for tests about the
/// answers rather than the ledger).
pub async fn store_closed_day(
    app: &TestApp,
    tenant_id: i64,
    day: chrono::NaiveDate,
    rows: &[tally::store::closes::AccountDay],
) {
    use tally::store::closes::{self, Computed};
    let mut tx = app.pool.begin().await.expect("transaction");
    let bounds = closes::day_bounds(&mut *tx, "UTC", day)
        .await
        .expect("bounds");
    closes::lock_day(&mut tx, tenant_id, day, "UTC", bounds)
        .await
        .expect("lock")
        .expect("free");
    let summary =
        serde_json::to_value(tally::close::compute::summarize(rows).expect("sums")).expect("json");
    closes::replace_day(&mut tx, tenant_id, day, rows)
        .await
        .expect("rows");
    let computed = Computed {
        zone: "UTC",
        bounds,
        summary: &summary,
        closed: true,
        reopened: false,
    };
    closes::mark_computed(&mut tx, tenant_id, day, &computed)
        .await
        .expect("computed");
    tx.commit().await.expect("commit");
}

fn rules() -> CloseRules {
    CloseRules {
        settle: chrono::TimeDelta::zero(),
        settlement_days: SETTLEMENT_DAYS,
        final_after_days: None,
    }
}

/// Runs the simulated clock at `speed` for `real` time, then pauses it.
async fn run_clock(sim: &SimHandle, real: Duration) {
    sim.set_clock_paused(false);
    tokio::time::sleep(real).await;
    sim.set_clock_paused(true);
}

async fn tenant_row(app: &TestApp, slug: &str) -> Tenant {
    tally::store::tenants::find_by_slug(&app.pool, slug)
        .await
        .expect("query")
        .expect("tenant")
}

#[tokio::test]
async fn each_days_close_equals_the_ledger_at_its_end_in_utc_and_across_a_dst_change() {
    let app = close_app().await;
    // About 24 transactions per account per simulated day; 10,000 simulated seconds
    // per real second.
    let sim = ledger_sim(4, 1.0, 10_000.0).await;
    let utc = add_platform_tenant(&app, &sim, "utc", 0, None).await;
    let berlin = add_platform_tenant(&app, &sim, "berlin", 0, None).await;
    set_zone(&app, "berlin", "Europe/Berlin").await;
    sync_ok(&app, &utc).await;
    sync_ok(&app, &berlin).await;
    let owner = app.token(Role::Owner, None).await;
    let utc_token = app.token(Role::Admin, Some("utc")).await;
    let berlin_token = app.token(Role::Admin, Some("berlin")).await;
    refresh_all(&app, &utc_token).await;
    refresh_all(&app, &berlin_token).await;

    // Three simulated days pass, read as they go (a refresh every half simulated day).
    for _ in 0..6 {
        run_clock(&sim, Duration::from_millis(4_400)).await; // ~12 simulated hours
        refresh_all(&app, &utc_token).await;
        refresh_all(&app, &berlin_token).await;
    }
    assert!(
        sim.sim_now() > CLOCK_START + 3 * DAY,
        "three days passed: {}",
        sim.sim_now()
    );
    for slug in ["utc", "berlin"] {
        bring_up_to_date(&app.pool, &tenant_row(&app, slug).await, rules())
            .await
            .expect("the close runs");
    }

    let accounts = sim.keys().platforms[0].accounts.clone();
    // UTC days 10-22 (the first after the first read's settlement day) to 10-25.
    let checks = [
        ("utc", &utc_token, "2026-10-24", CLOCK_START + DAY / 2 + DAY),
        (
            "utc",
            &utc_token,
            "2026-10-25",
            CLOCK_START + DAY / 2 + 2 * DAY,
        ),
        // Berlin's 25 October has 25 hours: from 22:00Z on the 24th to 23:00Z on the 25th.
        (
            "berlin",
            &berlin_token,
            "2026-10-25",
            CLOCK_START + DAY / 2 + 2 * DAY - 3_600,
        ),
    ];
    let mut transactions = 0;
    for (slug, token, date, end) in checks {
        let truth = ledger_truth(&sim, end - 1).await;
        for account in &accounts {
            let ours = closings(&app, token, account, date).await;
            let theirs = truth.get(account).cloned().unwrap_or_default();
            let theirs_nonzero: BTreeMap<_, _> = theirs
                .iter()
                .filter(|(_, (a, p))| *a != 0 || *p != 0)
                .collect();
            for (currency, (available, pending)) in &theirs_nonzero {
                let (a, p, tieout) = ours.get(*currency).unwrap_or_else(|| {
                    panic!("{slug} {date} {account} has no {currency} row: {ours:?}")
                });
                assert_eq!(
                    (*a, *p),
                    (*available, *pending),
                    "{slug} {date} {account} {currency}: tally's closing vs the ledger"
                );
                assert_eq!(tieout, "matched", "{slug} {date} {account} {currency}");
            }
        }
        let (status, day) = day_of(&app, token, date).await;
        assert_eq!(status, 200, "{day}");
        assert_eq!(day["state"], "closed", "{day}");
        transactions += day["currencies"]
            .as_array()
            .expect("currencies")
            .iter()
            .map(|c| c["transactions"].as_i64().expect("count"))
            .sum::<i64>();
        for c in day["currencies"].as_array().expect("currencies") {
            assert_eq!(c["difference"], 0, "{day}");
            // Closing = opening + activity, per currency.
            let net: i64 = c["activity"]
                .as_array()
                .expect("activity")
                .iter()
                .map(|a| a["net"].as_i64().expect("net"))
                .sum();
            assert_eq!(
                c["closing"]["total"].as_i64().expect("closing"),
                c["opening"]["total"].as_i64().expect("opening") + net,
                "{day}"
            );
        }
    }
    assert!(transactions > 50, "the days had activity: {transactions}");

    let (_, berlin_day) = day_of(&app, &berlin_token, "2026-10-25").await;
    assert_eq!(berlin_day["timezone"], "Europe/Berlin");
    assert_eq!(berlin_day["startsAt"], "2026-10-24T22:00:00.000Z");
    assert_eq!(berlin_day["endsAt"], "2026-10-25T23:00:00.000Z");
    // An owner names the tenant.
    let (status, _) = app
        .get_json(
            "/api/administrator/connect/balances/close?date=2026-10-25&tenant=berlin",
            &owner,
        )
        .await;
    assert_eq!(status, 200);

    // The CSV: a header, then one row per account and currency of the day.
    let csv = app
        .client
        .get(format!(
            "{}/api/administrator/connect/balances/close?date=2026-10-25",
            app.address
        ))
        .bearer_auth(&utc_token)
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("CSV");
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.expect("text");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("date,timezone,starts_at,ends_at,stripeid,currency,opening_available"),
        "{header}"
    );
    assert!(
        header.contains("closing_balance") && header.contains("tieout"),
        "{header}"
    );
    assert!(lines.count() >= accounts.len(), "{text}");
}

#[tokio::test]
async fn bad_dates_and_unknown_accounts_are_refused_with_their_codes() {
    let app = close_app().await;
    let sim = ledger_sim(1, 0.001, 1.0).await;
    let t = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &t).await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let account = sim.keys().platforms[0].accounts[0].clone();
    let cases = [
        ("/api/administrator/connect/balances/close", 400, "invalid-date"),
        ("/api/administrator/connect/balances/close?date=2026-13-01", 400, "invalid-date"),
        ("/api/administrator/connect/balances/close?date=2026-11-01", 404, "close-not-ready"),
        ("/api/administrator/connect/stripe-account/close?from_date=2026-11-01", 400, "invalid-stripeid"),
        ("/api/administrator/connect/stripe-account/close?stripeid=acct_1Nope&from_date=2026-11-01", 404, "invalid-stripeid"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get_json(path, &token).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let base = format!("/api/administrator/connect/stripe-account/close?stripeid={account}");
    for (query, code) in [
        ("", "invalid-from-date"),
        ("&from_date=yesterday", "invalid-from-date"),
        ("&from_date=2026-11-02&to_date=2026-11-01", "invalid-range"),
        (
            "&from_date=2026-11-01&to_date=11/02/2026",
            "invalid-to-date",
        ),
        ("&from_date=2025-01-01&to_date=2026-11-01", "invalid-range"),
    ] {
        let (got, body) = app.get_json(&format!("{base}{query}"), &token).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
    }
    // A zone Postgres does not know is refused, and nothing changes.
    let refused = tenant::update(
        &app.pool,
        &app.master,
        "acme",
        TenantUpdate {
            close_timezone: Some("Mars/Olympus".into()),
            ..TenantUpdate::default()
        },
        &Actor::cli(),
    )
    .await;
    assert!(refused.is_err());
    assert_eq!(tenant_row(&app, "acme").await.close_timezone, "UTC");
}

#[tokio::test]
async fn a_late_transaction_reopens_a_closed_day_and_says_so_in_the_audit_log() {
    let app = close_app().await;
    // Almost no random activity: the money moved below is all there is.
    let sim = ledger_sim(2, 0.000_1, 3_600.0).await;
    let t = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &t).await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let owner = app.token(Role::Owner, None).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    let (early, late) = (&accounts[0], &accounts[1]);
    refresh_all(&app, &token).await;
    // Past the second of that read (a balance and a transaction in one second prove nothing).
    run_clock(&sim, Duration::from_millis(20)).await;

    // Money moves on both on 10-23; only `early` is read after the day ends.
    sim.move_money(early);
    sim.move_money(late);
    run_clock(&sim, Duration::from_secs(16)).await; // into 10-24 (UTC)
    assert!(sim.sim_now() >= CLOCK_START + DAY / 2, "{}", sim.sim_now());
    let (status, body) = app
        .get_json(
            &format!("/api/administrator/connect/stripe-account/balance?stripeid={early}&max_age=0&wait=25"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ledger_caught_up(&app).await;
    let tenant = tenant_row(&app, "acme").await;
    bring_up_to_date(&app.pool, &tenant, rules())
        .await
        .expect("close");
    let (status, day) = day_of(&app, &token, "2026-10-23").await;
    assert_eq!(status, 200, "{day}");
    assert_eq!(day["state"], "closed");
    assert_eq!(day["reopened"], 0);
    let before = closings(&app, &token, late, "2026-10-23").await;

    // `late` is read now: its 10-23 transaction arrives after the day closed.
    let (status, body) = app
        .get_json(
            &format!("/api/administrator/connect/stripe-account/balance?stripeid={late}&max_age=0&wait=25"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ledger_caught_up(&app).await;
    bring_up_to_date(&app.pool, &tenant, rules())
        .await
        .expect("close");
    let (_, day) = day_of(&app, &token, "2026-10-23").await;
    assert_eq!(day["state"], "closed", "{day}");
    assert_eq!(day["reopened"], 1, "{day}");
    let after = closings(&app, &token, late, "2026-10-23").await;
    assert_ne!(before, after, "the late transaction moved the closing");
    let truth = ledger_truth(&sim, CLOCK_START + DAY / 2 - 1).await;
    for (currency, (available, pending)) in &truth[late.as_str()] {
        if *available != 0 || *pending != 0 {
            let (a, p, tieout) = &after[currency];
            assert_eq!((*a, *p), (*available, *pending), "{currency}");
            assert_eq!(tieout, "matched");
        }
    }
    let (_, audit) = app
        .get_json("/api/administrator/audit?tenant=acme", &owner)
        .await;
    let reopen = audit["data"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["action"] == "close.reopen")
        .unwrap_or_else(|| panic!("close.reopen in {audit}"));
    assert_eq!(reopen["actor"]["type"], "system", "{reopen}");
    assert_eq!(reopen["details"]["date"], "2026-10-23", "{reopen}");
    assert_eq!(reopen["details"]["accounts"], json!([late]), "{reopen}");
}

#[tokio::test]
async fn a_balance_that_moved_without_a_transaction_is_a_difference_of_that_amount() {
    let app = close_app().await;
    let sim = ledger_sim(2, 0.000_1, 3_600.0).await;
    let t = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &t).await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let accounts = sim.keys().platforms[0].accounts.clone();
    refresh_all(&app, &token).await;
    let drifted = &accounts[0];
    let currency = sim.balance_of(drifted).expect("balance")["available"][0]["currency"]
        .as_str()
        .expect("currency")
        .to_owned();
    let response = reqwest::Client::new()
        .post(format!("{}/_sim/ledger/drift", sim.base_url()))
        .json(&json!({"account": drifted, "currency": currency, "amount": -1234}))
        .send()
        .await
        .expect("drift");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    run_clock(&sim, Duration::from_secs(16)).await; // into 10-24
    refresh_all(&app, &token).await;
    bring_up_to_date(&app.pool, &tenant_row(&app, "acme").await, rules())
        .await
        .expect("close");

    let (status, day) = day_of(&app, &token, "2026-10-23").await;
    assert_eq!(status, 200, "{day}");
    let c = day["currencies"]
        .as_array()
        .expect("currencies")
        .iter()
        .find(|c| c["currency"] == currency.as_str())
        .expect("the currency");
    assert_eq!(c["difference"], 1, "{day}");
    assert_eq!(c["differenceAmount"]["available"], -1234, "{day}");
    // Listed first, with its amount; the other account ties out.
    assert_eq!(day["differences"][0]["stripeid"], drifted.as_str(), "{day}");
    assert_eq!(
        day["differences"][0]["difference"]["available"], -1234,
        "{day}"
    );
    let other = closings(&app, &token, &accounts[1], "2026-10-23").await;
    assert!(other.values().all(|(_, _, t)| t == "matched"), "{other:?}");

    // The admin page's daily close lists the difference before the currency totals.
    let (_, cookie) = crate::admin::sign_in(&app.address, &token, &[]).await;
    let html = crate::admin::no_redirects()
        .get(format!(
            "{}/admin/tenants/acme/close?date=2026-10-23",
            app.address
        ))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let listed = html
        .find(drifted.as_str())
        .expect("the drifted account is listed");
    let totals = html
        .find(&format!("id=\"close-{currency}\""))
        .expect("the currency's totals");
    assert!(listed < totals, "differences come first");
    assert!(
        html.contains("-12.34") || html.contains("-1234"),
        "the amount is shown"
    );
}

#[tokio::test]
async fn a_backfill_run_twice_stores_every_transaction_once() {
    let app = close_app().await;
    let sim = ledger_sim(3, 2.0, 10_000.0).await;
    let t = add_platform_tenant(&app, &sim, "acme", 0, None).await;
    sync_ok(&app, &t).await;
    // A simulated day and a half of activity.
    run_clock(&sim, Duration::from_millis(13_000)).await;
    let stripe = crate::sync::stripe_tenants(&app, 3).with_shared_budget(app.pool.clone());
    let since = chrono::NaiveDate::from_ymd_opt(2026, 10, 10).expect("date");
    let first = tally::commands::close::backfill(&app.pool, &stripe, &app.settings, "acme", since)
        .await
        .expect("backfill");
    let again = tally::commands::close::backfill(&app.pool, &stripe, &app.settings, "acme", since)
        .await
        .expect("backfill again");
    assert_eq!((first.accounts, first.failed), (3, 0));
    assert!(first.stored > 30, "{first:?}");
    assert_eq!(again.stored, 0, "nothing new the second time: {again:?}");
    // Every transaction the simulator has for the accounts, once.
    let (stored, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT id) FROM balance_transactions WHERE tenant_id = $1",
    )
    .bind(t.id)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(stored, distinct);
    let mut theirs = 0;
    for account in &sim.keys().platforms[0].accounts {
        let mut after: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/balance_transactions?limit=100&created[gte]={}",
                sim.base_url(),
                CLOCK_START - 30 * DAY
            );
            if let Some(id) = &after {
                url.push_str(&format!("&starting_after={id}"));
            }
            let body: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(&sim.keys().platforms[0].key)
                .header("Stripe-Account", account)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("JSON");
            let data = body["data"].as_array().expect("data");
            theirs += data.len() as i64;
            if body["has_more"] != true {
                break;
            }
            after = data
                .last()
                .and_then(|t| t["id"].as_str())
                .map(str::to_owned);
        }
    }
    assert_eq!(stored, theirs, "every transaction Stripe lists is stored");
}

#[tokio::test]
async fn a_day_of_ten_thousand_accounts_streams_as_csv() {
    use tally::money::{Activity, Split};
    use tally::store::closes::{AccountDay, TieOut};
    let app = close_app().await;
    let tenant_id = app.add_tenant("big").await;
    let ids: Vec<String> = (0..10_000).map(|i| format!("acct_1Big{i:08}")).collect();
    sqlx::query(
        "INSERT INTO stripe_accounts (tenant_id, stripeid, stripe_object, created_at)
         SELECT $1, id, '{}'::jsonb, now() FROM UNNEST($2::text[]) id",
    )
    .bind(tenant_id)
    .bind(&ids)
    .execute(&app.pool)
    .await
    .expect("accounts");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).expect("date");
    let rows: Vec<AccountDay> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| AccountDay {
            day,
            stripeid: id.clone(),
            currency: "usd".into(),
            opening: Split {
                available: i as i64,
                pending: 0,
            },
            closing: Split {
                available: i as i64 - 500,
                pending: 10,
            },
            activity: [(
                "charge".to_owned(),
                Activity {
                    count: 1,
                    amount: -480,
                    fee: 30,
                    net: -510,
                },
            )]
            .into_iter()
            .collect(),
            transactions: 1,
            tieout: if i % 1000 == 0 {
                TieOut::Difference {
                    snapshot_id: 1,
                    stripe_at: chrono::Utc::now(),
                    difference: Split {
                        available: -7,
                        pending: 0,
                    },
                }
            } else {
                TieOut::Unverified
            },
        })
        .collect();
    store_closed_day(&app, tenant_id, day, &rows).await;

    let token = app.token(Role::Reader, Some("big")).await;
    let response = app
        .client
        .get(format!(
            "{}/api/administrator/connect/balances/close?date={day}",
            app.address
        ))
        .bearer_auth(&token)
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("CSV");
    assert_eq!(response.status(), 200);
    // Streamed as it is read: no length known up front.
    assert!(
        response.headers().get("content-length").is_none(),
        "{:?}",
        response.headers()
    );
    let text = response.text().await.expect("body");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10_001, "a header and one row per account");
    // Differences first, amounts as plain minor units (a negative stays a number).
    assert!(lines[1].contains(",difference,-7,0,"), "{}", lines[1]);
    assert!(lines[1].contains(",-500,10,-490,"), "{}", lines[1]);
    assert!(lines[11].contains(",unverified,"), "{}", lines[11]);
}
