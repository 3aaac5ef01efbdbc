//! The platform's negative-balance exposure (issue 17, item 5): per currency, what the
//! accounts whose available balance is below zero owe (`negative`, a positive amount)
//! and how many they are (`negativeAccounts`), beside a net `available`: in the
//! aggregate, the totals over time, `/metrics`, the admin page and `tally doctor`,
//! checked against sums made here from the balances the test gave the accounts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tally::domain::Role;
use tally::money::{format_minor, Totals};
use tally::sim::SimHandle;
use tally::store;
use tally::store::tenants::Tenant;

use crate::admin::sign_in;
use crate::balances::BALANCES;
use crate::doctor::{doctor, stdout};
use crate::helpers::{account_object, spawn_app, spawn_app_on, spawn_app_with, TestApp, TestDb};
use crate::sync::add_platform_tenant;
use crate::totals::{rebuild_history, t, Driver};
use crate::webhooks::post_event;

const SECRET: &str = "whsec_test_exposure_0123456789";
const TOTALS: &str = "/api/administrator/connect/balances/totals";

/// Per currency: [net available, negative, accounts below zero], summed here from raw
/// Stripe balances. A currency an account holds only as pending still shows (at 0).
fn expected(balances: &BTreeMap<String, Value>) -> BTreeMap<String, [i64; 3]> {
    let mut out: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for balance in balances.values() {
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        for kind in [
            "available",
            "pending",
            "connect_reserved",
            "instant_available",
        ] {
            for entry in balance[kind].as_array().into_iter().flatten() {
                let currency = entry["currency"].as_str().expect("currency").to_lowercase();
                let amount = entry["amount"].as_i64().expect("amount");
                *net.entry(currency).or_default() += if kind == "available" { amount } else { 0 };
            }
        }
        for (currency, available) in net {
            let slot = out.entry(currency).or_default();
            slot[0] += available;
            if available < 0 {
                slot[1] -= available;
                slot[2] += 1;
            }
        }
    }
    out
}

/// What the aggregate (or a bucket) says, in the same shape.
fn reported(totals: &Value) -> BTreeMap<String, [i64; 3]> {
    totals
        .as_array()
        .unwrap_or_else(|| panic!("totals: {totals}"))
        .iter()
        .map(|row| {
            let n = |k: &str| {
                row[k]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{k} is an integer in {row}"))
            };
            (
                row["currency"].as_str().expect("currency").to_owned(),
                [n("available"), n("negative"), n("negativeAccounts")],
            )
        })
        .collect()
}

/// A Stripe balance with these available entries (currency, amount), and 1 pending in
/// each of their currencies.
fn balance(available: &[(&str, i64)]) -> Value {
    let entries: Vec<Value> = available
        .iter()
        .map(|(currency, amount)| json!({"amount": amount, "currency": currency, "source_types": {"card": amount}}))
        .collect();
    let mut currencies: Vec<&str> = available.iter().map(|(currency, _)| *currency).collect();
    currencies.dedup();
    let pending: Vec<Value> = currencies
        .iter()
        .map(|currency| json!({"amount": 1, "currency": currency}))
        .collect();
    json!({"object": "balance", "livemode": false, "available": entries, "pending": pending})
}

/// A platform tenant reading a simulator of `accounts` accounts, all read once, then
/// some given balances of the test's own by `balance.available` events.
struct Scene {
    app: TestApp,
    sim: SimHandle,
    tenant: Tenant,
    token: String,
    ids: Vec<String>,
    /// What each account's latest balance is.
    balances: BTreeMap<String, Value>,
    events: usize,
}

impl Scene {
    async fn new(slug: &str, refresher: bool) -> Scene {
        let sim = crate::sync::spawn_sim(1, 12, 0).await;
        let app = spawn_app_with(|settings| {
            if refresher {
                settings.refresh.enabled = true;
                settings.refresh.interval_secs = 600;
            }
        })
        .await;
        let tenant = add_platform_tenant(&app, &sim, slug, 0, Some(SECRET)).await;
        let ids = sim.keys().platforms[0].accounts.clone();
        app.store_sim_accounts(tenant.id, &sim, &ids, None).await;
        let token = app.token(Role::Reader, Some(slug)).await;
        let (status, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        let balances = ids
            .iter()
            .map(|id| (id.clone(), sim.balance_of(id).expect("sim balance")))
            .collect();
        let mut scene = Scene {
            app,
            sim,
            tenant,
            token,
            ids,
            balances,
            events: 0,
        };
        // Below zero: netted within an account (-600 + 100), in two currencies, in a
        // zero-decimal one; and accounts that are not.
        let ids = scene.ids.clone();
        scene
            .deliver(
                &ids[0],
                balance(&[("usd", -600), ("usd", 100), ("eur", 100)]),
            )
            .await;
        scene.deliver(&ids[1], balance(&[("usd", -1_200)])).await;
        scene
            .deliver(&ids[2], balance(&[("usd", 5_000), ("eur", -40)]))
            .await;
        scene.deliver(&ids[3], balance(&[("jpy", -7)])).await;
        scene.deliver(&ids[4], balance(&[("usd", 0)])).await;
        scene
    }

    /// A `balance.available` about `account` carrying `balance`, newer than its fetch.
    async fn deliver(&mut self, account: &str, balance: Value) {
        self.events += 1;
        let now = Utc::now().timestamp();
        let event = json!({
            "id": format!("evt_exposure_{}", self.events), "object": "event",
            "type": "balance.available", "account": account, "context": account,
            // Later than the fetch: tally takes the time it arrived.
            "created": now + 60, "livemode": false, "pending_webhooks": 1,
            "data": {"object": balance}
        });
        let slug = self.tenant.slug.clone();
        let (status, receipt) = post_event(&self.app, &slug, SECRET, &event, now).await;
        assert_eq!(
            (status, &receipt["outcome"]),
            (200, &json!("applied")),
            "{receipt}"
        );
        self.balances.insert(account.to_owned(), balance);
    }

    async fn aggregate(&self, query: &str) -> Value {
        let (status, body) = self
            .app
            .get_json(&format!("{BALANCES}{query}"), &self.token)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test]
async fn the_aggregate_says_what_accounts_below_zero_owe_while_available_stays_net() {
    let mut scene = Scene::new("acme", false).await;
    let want = expected(&scene.balances);
    let body = scene.aggregate("").await;
    assert_eq!(reported(&body["totals"]), want, "{body}");
    // Spot checks the independent sums must agree with, so they cannot be vacuous.
    let usd = want["usd"];
    assert!(usd[1] >= 500 + 1_200 && usd[2] >= 2, "{usd:?}");
    assert!(want["jpy"][1] >= 7 && want["jpy"][2] >= 1, "{want:?}");
    assert!(want["eur"][1] >= 40 && want["eur"][2] >= 1, "{want:?}");

    // One owner (of an account below zero), and one currency, the same way.
    let owner_of = |id: &str| {
        scene.sim.account_object(id).expect("account")["metadata"]["accountid"]
            .as_str()
            .map(str::to_owned)
    };
    let owner = scene.ids[..4]
        .iter()
        .find_map(|id| owner_of(id))
        .expect("one of the accounts below zero has an owner");
    let of_owner: BTreeMap<String, Value> = scene
        .balances
        .iter()
        .filter(|(id, _)| owner_of(id).as_deref() == Some(owner.as_str()))
        .map(|(id, b)| (id.clone(), b.clone()))
        .collect();
    let body = scene.aggregate(&format!("?accountid={owner}")).await;
    assert_eq!(reported(&body["totals"]), expected(&of_owner), "{body}");
    assert!(
        expected(&of_owner).values().any(|e| e[2] >= 1),
        "{of_owner:?}"
    );
    let body = scene.aggregate("?currency=USD").await;
    assert_eq!(
        reported(&body["totals"]),
        BTreeMap::from([("usd".to_owned(), usd)])
    );

    // Back above zero: it leaves the exposure, and available moves by the whole change.
    let ids = scene.ids.clone();
    scene.deliver(&ids[1], balance(&[("usd", 50)])).await;
    let after = reported(&scene.aggregate("").await["totals"]);
    assert_eq!(after, expected(&scene.balances));
    assert_eq!(
        after["usd"],
        [usd[0] + 1_250, usd[1] - 1_200, usd[2] - 1],
        "owes 1,200 less, one account fewer"
    );
    // And below it again, owing more than before.
    scene.deliver(&ids[1], balance(&[("usd", -2_000)])).await;
    let again = reported(&scene.aggregate("").await["totals"]);
    assert_eq!(again["usd"], [usd[0] - 800, usd[1] + 800, usd[2]]);
    // Within one account the entries net first: -600 + 100 + 550 is above zero.
    scene
        .deliver(
            &ids[0],
            balance(&[("usd", -600), ("usd", 100), ("usd", 550), ("eur", 100)]),
        )
        .await;
    let netted = reported(&scene.aggregate("").await["totals"]);
    assert_eq!(netted, expected(&scene.balances));
    assert_eq!(netted["usd"][1..], [again["usd"][1] - 500, usd[2] - 1]);

    // An account removed while below zero takes its debt with it.
    let mut tx = scene.app.pool.begin().await.expect("begin");
    let removed = store::accounts::mark_removed(
        &mut *tx,
        scene.tenant.id,
        &[crate::helpers::acct(&ids[3])],
        Utc::now(),
        None,
    )
    .await
    .expect("removed");
    store::snapshots::forget_latest(&mut tx, scene.tenant.id, &removed)
        .await
        .expect("forgotten");
    tx.commit().await.expect("commit");
    scene.balances.remove(&ids[3]);
    let body = scene.aggregate("").await;
    let left = expected(&scene.balances);
    assert_eq!(reported(&body["totals"]), left);
    assert_eq!(
        left.get("jpy").map_or([0, 0], |e| [e[1], e[2]]),
        [want["jpy"][1] - 7, want["jpy"][2] - 1]
    );
}

#[tokio::test]
async fn doctor_recounts_the_exposure_finds_drift_and_repairs_it() {
    let scene = Scene::new("acme", false).await;
    let right = expected(&scene.balances);
    let clean = doctor(&scene.app, &[]).await;
    assert!(clean.status.success(), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("no drift"), "{}", stdout(&clean));

    sqlx::raw_sql(
        "UPDATE tenant_balance_totals SET negative = negative + 77,
                negative_accounts = negative_accounts + 1 WHERE currency = 'usd';
         UPDATE tenant_balance_totals SET negative = 0, negative_accounts = 0
             WHERE currency = 'jpy';",
    )
    .execute(&scene.app.pool)
    .await
    .expect("corrupted");
    let corrupted = reported(&scene.aggregate("").await["totals"]);
    assert_eq!(
        corrupted["usd"],
        [right["usd"][0], right["usd"][1] + 77, right["usd"][2] + 1],
        "the aggregate reads the kept counters"
    );

    let check = doctor(&scene.app, &[]).await;
    let report = stdout(&check);
    assert!(!check.status.success(), "{report}");
    let line = |currency: &str| {
        report
            .lines()
            .find(|line| line.starts_with(&format!("tenant acme totals {currency}:")))
            .unwrap_or_else(|| panic!("{currency} reported: {report}"))
            .to_owned()
    };
    // Stored, then recomputed; the amounts themselves agree.
    let [available, negative, accounts] = right["usd"];
    let usd = line("usd");
    assert!(
        usd.contains(&format!(
            "negative {} negative_accounts {}; recomputed available {available} ",
            negative + 77,
            accounts + 1
        )) && usd.ends_with(&format!("negative {negative} negative_accounts {accounts}")),
        "{usd}"
    );
    let [_, negative, accounts] = right["jpy"];
    let jpy = line("jpy");
    assert!(
        jpy.contains("negative 0 negative_accounts 0; recomputed")
            && jpy.ends_with(&format!("negative {negative} negative_accounts {accounts}")),
        "{jpy}"
    );
    let (stored, recomputed) = jpy.split_once("; recomputed ").expect("both sides");
    assert_eq!(
        stored
            .split(" negative ")
            .next()
            .map(|s| s.split_once(": stored ").map(|(_, a)| a)),
        Some(recomputed.split(" negative ").next()),
        "only the exposure drifted: {jpy}"
    );
    assert!(String::from_utf8_lossy(&check.stderr).contains("2 per-tenant counters drifted"));

    let repair = doctor(&scene.app, &["--repair"]).await;
    assert!(repair.status.success(), "{}", stdout(&repair));
    assert_eq!(reported(&scene.aggregate("").await["totals"]), right);
    let again = doctor(&scene.app, &[]).await;
    assert!(stdout(&again).contains("no drift"), "{}", stdout(&again));
}

/// The value of the metric line `name{…}` that has every one of `labels`.
fn gauge(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            let set = &line[..line.find('}').unwrap_or(0)];
            labels
                .iter()
                .all(|(key, value)| set.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Waits until `/metrics` shows, for tenant `exposed`, the exposure of `want` in every
/// currency of it.
async fn wait_for_gauges(app: &TestApp, owner: &str, want: &BTreeMap<String, [i64; 3]>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = app.get("/metrics", owner).await.text().await.expect("text");
        let shown: BTreeMap<String, [i64; 3]> = want
            .iter()
            .map(|(currency, [available, _, _])| {
                let labels = [("tenant", "exposed"), ("currency", currency.as_str())];
                let read = |name| gauge(&page, name, &labels).map_or(-1, |v| v as i64);
                (
                    currency.clone(),
                    [
                        *available,
                        read("tally_negative_balance_minor"),
                        read("tally_negative_accounts"),
                    ],
                )
            })
            .collect();
        if &shown == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gauges never showed {want:?}:\n{}",
            page.lines()
                .filter(|l| l.contains("exposed") && l.contains("negative"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn metrics_show_the_exposure_per_tenant_and_currency() {
    // A slug of its own: the metrics recorder is shared by every test in the process.
    let mut scene = Scene::new("exposed", true).await;
    let owner = scene.app.token(Role::Owner, None).await;
    let want = expected(&scene.balances);
    assert!(want["usd"][2] >= 2, "{want:?}");
    wait_for_gauges(&scene.app, &owner, &want).await;
    // Every account above zero again: the gauges fall to 0, they do not linger.
    let above: Vec<(String, Value)> = scene
        .balances
        .iter()
        .map(|(id, b)| {
            let mut fixed = b.clone();
            for entry in fixed["available"].as_array_mut().into_iter().flatten() {
                entry["amount"] = json!(entry["amount"].as_i64().expect("amount").abs());
            }
            (id.clone(), fixed)
        })
        .collect();
    for (id, fixed) in above {
        scene.deliver(&id, fixed).await;
    }
    let all_above = expected(&scene.balances);
    assert!(all_above.values().all(|e| e[1] == 0 && e[2] == 0));
    assert!(all_above.contains_key("usd") && all_above.contains_key("jpy"));
    wait_for_gauges(&scene.app, &owner, &all_above).await;
}

/// The page's `<tr …>` elements inside the table with this id.
fn table_rows<'a>(html: &'a str, id: &str) -> Vec<&'a str> {
    let start = html
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("table {id} in {html}"));
    let table = &html[start..start + html[start..].find("</table>").expect("closed")];
    table
        .split("<tr")
        .skip(1)
        .filter(|row| row.contains("<td"))
        .collect()
}

/// The tenant's admin page, as `cookie`'s session sees it.
async fn tenant_page(app: &TestApp, cookie: &str) -> String {
    app.client
        .get(format!("{}/admin/tenants/acme", app.address))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("html")
}

#[tokio::test]
async fn the_admin_page_shows_the_exposure_and_lists_the_accounts_below_zero() {
    let mut scene = Scene::new("acme", false).await;
    // An owner id that is markup must show as text.
    let evil = "acct_1EvilOwner0000";
    scene
        .app
        .store_accounts(
            scene.tenant.id,
            &[account_object(evil, 1_700_000_000, Some("<b>owner</b>"))],
        )
        .await;
    scene.deliver(evil, balance(&[("usd", -31_415)])).await;
    let want = expected(&scene.balances);
    let token = scene.app.token(Role::Reader, Some("acme")).await;
    let (_, cookie) = sign_in(&scene.app.address, &token, &[]).await;
    let html = tenant_page(&scene.app, &cookie).await;

    for row in table_rows(&html, "totals") {
        let currency = &row[row.find("data-currency=\"").expect("currency") + 15..][..3];
        let [_, negative, accounts] = want[currency];
        assert!(
            row.contains(&format!(
                "data-kind=\"negative\">{}</td>",
                format_minor(negative, currency)
            )) && row.contains(&format!("data-kind=\"negativeAccounts\">{accounts}</td>")),
            "{currency}: {row}"
        );
    }

    // Every account below zero, once per currency, most owed first within a currency.
    let mut below: Vec<(String, String, i64)> = Vec::new();
    for (id, raw) in &scene.balances {
        let parsed: tally::stripe::Balance = serde_json::from_value(raw.clone()).expect("balance");
        for row in Totals::from_balance(&parsed).expect("no overflow").rows() {
            if row.amounts.available < 0 {
                below.push((row.currency, id.clone(), row.amounts.available));
            }
        }
    }
    below.sort_by(|a, b| (&a.0, a.2, &a.1).cmp(&(&b.0, b.2, &b.1)));
    let listed = table_rows(&html, "below-zero");
    assert_eq!(
        listed.len() as i64,
        want.values().map(|e| e[2]).sum::<i64>(),
        "one row per account and currency: {html}"
    );
    assert_eq!(listed.len(), below.len());
    for (row, (currency, id, available)) in listed.iter().zip(&below) {
        assert!(
            row.contains(&format!(
                "data-stripeid=\"{id}\" data-currency=\"{currency}\""
            )) && row.contains(&format!(
                "data-kind=\"available\">{}</td>",
                format_minor(*available, currency)
            )),
            "{id} {currency} {available}: {row}"
        );
    }
    assert!(html.contains("&lt;b&gt;owner&lt;/b&gt;"), "escaped");
    assert!(!html.contains("<b>owner</b>"), "never raw markup");

    // Nobody below zero: the page says so.
    let zeroes: Vec<String> = below.iter().map(|(_, id, _)| id.clone()).collect();
    for id in zeroes {
        scene.deliver(&id, balance(&[("usd", 1)])).await;
    }
    let html = tenant_page(&scene.app, &cookie).await;
    assert!(
        html.contains("None: no account&#39;s available balance is below zero.")
            || html.contains("None: no account's available balance is below zero."),
        "{html}"
    );
}

/// An hour of 2026-10-05, plus minutes.
fn base(hours: i64, minutes: i64) -> DateTime<Utc> {
    t("2026-10-05T00:00:00Z") + chrono::Duration::hours(hours) + chrono::Duration::minutes(minutes)
}

/// Each bucket's [available, negative, negativeAccounts] per currency, by bucket end.
fn buckets(body: &Value) -> BTreeMap<DateTime<Utc>, BTreeMap<String, [i64; 3]>> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|entry| {
            (
                t(entry["at"].as_str().expect("at")),
                reported(&entry["totals"]),
            )
        })
        .collect()
}

#[tokio::test]
async fn totals_over_time_carry_the_exposure_of_each_moment() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let mut d = Driver::new(&app, tenant_id).await;
    let (a, b, c) = ("acct_1A", "acct_1B", "acct_1C");
    d.list(
        base(0, 10),
        &[(a, Some("owner_1")), (b, Some("owner_1")), (c, None)],
    )
    .await;
    d.good(
        a,
        base(1, 10),
        balance(&[("usd", -600), ("usd", 100), ("eur", 50)]),
    )
    .await;
    d.good(b, base(1, 20), balance(&[("usd", 300)])).await;
    d.good(c, base(2, 30), balance(&[("usd", -200), ("eur", -5)]))
        .await;
    d.good(a, base(3, 5), balance(&[("usd", 400), ("eur", 50)]))
        .await;
    d.good(b, base(3, 40), balance(&[("usd", 10)])).await;
    // Delivered late: B was 1,000 below zero from 02:45 to 03:40.
    d.good(b, base(2, 45), balance(&[("usd", -1_000)])).await;
    d.remove(base(4, 30), c).await;
    d.good(a, base(4, 50), balance(&[("usd", -90), ("eur", 50)]))
        .await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let hourly =
        format!("{TOTALS}?interval=hour&from=2026-10-05T00:00:00Z&to=2026-10-05T05:00:00Z");
    let (status, body) = app.get_json(&hourly, &token).await;
    assert_eq!(status, 200, "{body}");
    let row = |usd: [i64; 3], eur: [i64; 3]| {
        BTreeMap::from([("eur".to_owned(), eur), ("usd".to_owned(), usd)])
    };
    assert_eq!(
        buckets(&body),
        BTreeMap::from([
            (base(1, 0), BTreeMap::new()),
            (base(2, 0), row([-200, 500, 1], [50, 0, 0])),
            (base(3, 0), row([-1_700, 1_700, 3], [45, 5, 1])),
            (base(4, 0), row([210, 200, 1], [45, 5, 1])),
            (base(5, 0), row([-80, 90, 1], [50, 0, 0])),
        ]),
        "{body}"
    );
    // One owner's, computed from its snapshots.
    let (_, owned) = app
        .get_json(&format!("{hourly}&accountid=owner_1"), &token)
        .await;
    assert_eq!(
        buckets(&owned)[&base(3, 0)],
        row([-1_500, 1_500, 2], [50, 0, 0])
    );
    // The CSV carries it too.
    let csv = app.get_csv(&hourly, &token).await;
    assert!(
        csv.lines()
            .next()
            .expect("header")
            .ends_with(",accounts,missing,negative,negative_accounts"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|line| line == "2026-10-05T03:00:00.000Z,usd,-1700,3,0,0,3,0,1700,3"),
        "{csv}"
    );

    // The newest bucket is the live aggregate, exposure included.
    let (_, now) = app
        .get_json(&format!("{TOTALS}?interval=day&from=2026-10-05"), &token)
        .await;
    let (_, live) = app.get_json(BALANCES, &token).await;
    assert_eq!(now["data"][0]["totals"], live["totals"], "{live}");
    // What the rebuild computes from scratch equals what was kept.
    rebuild_history(&app, tenant_id).await;
    let (_, rebuilt) = app.get_json(&hourly, &token).await;
    assert_eq!(rebuilt, body);
}

#[tokio::test]
async fn buckets_kept_before_the_upgrade_report_the_exposure_as_unknown() {
    let db = TestDb::create().await;
    let (pool, all) = crate::helpers::migrated_before(&db, 20261205000002).await;
    // Kept as the earlier code kept them: listed on November 2, read twice; one account
    // below zero in usd, another going below zero the next day.
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::raw_sql(
        r#"SELECT set_config('tally.clock', '2026-11-02T10:00:00Z', false);
           INSERT INTO tenants (slug, credential_kind, key_ciphertext, key_last4, api_version)
               VALUES ('acme', 'platform', '\x00', '1234', 'v');
           INSERT INTO stripe_accounts (tenant_id, stripeid, stripe_object, created_at, updated_at)
           SELECT id, v.s, '{}', now(), now() FROM tenants, (VALUES ('acct_a'), ('acct_b')) AS v(s);"#,
    )
    .execute(&mut conn)
    .await
    .expect("accounts");
    let snapshots = [
        (
            "acct_a",
            "2026-11-02T11:00:00Z",
            balance(&[("usd", -500), ("eur", 100)]),
        ),
        ("acct_b", "2026-11-02T11:30:00Z", balance(&[("usd", 300)])),
        ("acct_b", "2026-11-03T09:00:00Z", balance(&[("usd", -200)])),
    ];
    for (stripeid, fetched_at, raw) in &snapshots {
        sqlx::query(
            "INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance)
             SELECT id, $1, $2, 'fetch', $3 FROM tenants",
        )
        .bind(stripeid)
        .bind(t(fetched_at))
        .bind(raw)
        .execute(&mut conn)
        .await
        .expect("snapshot");
    }
    sqlx::raw_sql(
        r#"INSERT INTO latest_balances
               (tenant_id, stripeid, snapshot_id, fetched_at, ok, amounts, good_snapshot_id, good_at)
           SELECT s.tenant_id, s.stripeid, s.id, s.fetched_at, true, v.amounts::jsonb, s.id, s.fetched_at
           FROM balance_snapshots s JOIN (VALUES
               ('acct_a', '2026-11-02T11:00:00Z'::timestamptz,
                '[{"currency":"eur","available":100,"pending":1,"connect_reserved":0,"instant_available":0},
                  {"currency":"usd","available":-500,"pending":1,"connect_reserved":0,"instant_available":0}]'),
               ('acct_b', '2026-11-03T09:00:00Z'::timestamptz,
                '[{"currency":"usd","available":-200,"pending":1,"connect_reserved":0,"instant_available":0}]')
           ) AS v(stripeid, fetched_at, amounts) ON v.stripeid = s.stripeid AND v.fetched_at = s.fetched_at;
           INSERT INTO tenant_balance_totals
               (tenant_id, currency, available, pending, connect_reserved, instant_available, holders)
           SELECT id, v.c, v.a, v.p, 0, 0, v.h FROM tenants,
               (VALUES ('eur', 100, 1, 1), ('usd', -700, 2, 2)) AS v(c, a, p, h);
           INSERT INTO tenant_balance_counts SELECT id, 2, 0 FROM tenants;"#,
    )
    .execute(&mut conn)
    .await
    .expect("latest balances and totals as the earlier code kept them");
    conn.close().await.expect("closed");
    all.run(&pool).await.expect("the exposure migration");
    pool.close().await;

    let app = spawn_app_on(db, tally::crypto::MasterKey::generate_base64(), |_| {}).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    // The kept counters were filled from the accounts' balances.
    let (_, live) = app.get_json(BALANCES, &token).await;
    let live_rows = reported(&live["totals"]);
    assert_eq!(
        live_rows,
        BTreeMap::from([
            ("eur".to_owned(), [100, 0, 0]),
            ("usd".to_owned(), [-700, 700, 2])
        ]),
        "{live}"
    );
    let clean = doctor(&app, &[]).await;
    assert!(stdout(&clean).contains("no drift"), "{}", stdout(&clean));

    let daily = format!("{TOTALS}?interval=day&from=2026-11-02");
    let (status, body) = app.get_json(&daily, &token).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().expect("data");
    let (today, earlier) = data.split_first().expect("buckets");
    // Kept before the upgrade: amounts as ever, the exposure null (unknown), not 0.
    assert!(earlier.len() >= 30, "{body}");
    for bucket in earlier {
        for row in bucket["totals"].as_array().expect("totals") {
            assert_eq!(
                (&row["negative"], &row["negativeAccounts"]),
                (&Value::Null, &Value::Null),
                "{bucket}"
            );
            assert!(row["available"].is_i64(), "{row}");
        }
    }
    let nov3 = earlier
        .iter()
        .find(|b| b["at"] == "2026-11-04T00:00:00.000Z")
        .expect("the end of November 3");
    assert_eq!(nov3["totals"][1]["available"], -700, "{nov3}");
    // From the upgrade on, it is known: today's bucket is the live aggregate.
    assert_eq!(today["totals"], live["totals"], "{today}");
    let csv = app.get_csv(&daily, &token).await;
    assert!(
        csv.lines()
            .any(|line| line == "2026-11-04T00:00:00.000Z,usd,-700,2,0,0,2,0,,"),
        "{csv}"
    );

    // A balance stored now moves the exposure from now on, and leaves the old buckets be.
    let tenant_id = store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    Driver::new(&app, tenant_id)
        .await
        .good("acct_a", Utc::now(), balance(&[("usd", 50), ("eur", 100)]))
        .await;
    let (_, live) = app.get_json(BALANCES, &token).await;
    assert_eq!(reported(&live["totals"])["usd"], [-150, 200, 1], "{live}");
    let (_, after) = app.get_json(&daily, &token).await;
    assert_eq!(after["data"][0]["totals"], live["totals"]);
    let older = |body: &Value| body["data"].as_array().expect("data")[1..].to_vec();
    assert_eq!(older(&after), older(&body), "older buckets unchanged");
}
