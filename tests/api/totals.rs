//! Totals over time (`balances/totals`, `tally balances --history`) checked against an
//! independent recomputation from the stored snapshots: at each bucket end, every
//! account listed then adds its latest balance fetched at or before it (since it was
//! last listed); the others count as missing.
//!
//! Time is driven through the app's own store functions: snapshots are recorded with
//! chosen `fetched_at`, and listings and removals run on a connection whose history
//! clock (`tally.clock`) is pinned to a chosen instant.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tally::domain::Role;
use tally::money::Totals;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::store::snapshots::SnapshotOutcome;

use crate::helpers::{account_object, spawn_app, spawn_app_on, TestApp, TestDb};

const TOTALS: &str = "/api/administrator/connect/balances/totals";

pub(crate) fn t(value: &str) -> DateTime<Utc> {
    value.parse().expect("RFC 3339")
}

/// A stored balance in Stripe's shape.
fn balance(usd: i64, eur_pending: i64, jpy: Option<i64>) -> Value {
    let mut available =
        vec![json!({"amount": usd, "currency": "usd", "source_types": {"card": usd}})];
    if let Some(jpy) = jpy {
        available.push(json!({"amount": jpy, "currency": "jpy"}));
    }
    json!({
        "object": "balance", "livemode": false,
        "available": available,
        "pending": [{"amount": eur_pending, "currency": "eur"}, {"amount": 1, "currency": "usd"}],
        "connect_reserved": [{"amount": 7, "currency": "usd"}],
        "instant_available": [{"amount": usd / 2, "currency": "usd", "net_available": []}]
    })
}

/// A listing period as the test made it: stripeid, listed at, removed at.
pub(crate) type Period = (String, DateTime<Utc>, Option<DateTime<Utc>>);

/// Writes as the app does, with the history clock in our hands.
pub(crate) struct Driver {
    conn: PgConnection,
    tenant_id: i64,
    owner_key: String,
    /// What the test did: (stripeid, listed_at, removed_at) per listing period.
    periods: Vec<Period>,
}

impl Driver {
    pub(crate) async fn new(app: &TestApp, tenant_id: i64) -> Driver {
        Driver {
            conn: PgConnection::connect(&app.db.url).await.expect("connect"),
            tenant_id,
            owner_key: app.settings.accounts.owner_metadata_key.clone(),
            periods: Vec::new(),
        }
    }

    async fn clock(&mut self, at: DateTime<Utc>) {
        sqlx::query("SELECT set_config('tally.clock', $1, false)")
            .bind(at.to_rfc3339())
            .execute(&mut self.conn)
            .await
            .expect("clock set");
    }

    /// Lists accounts (new, or listed again) as a sync page does, at `at`.
    pub(crate) async fn list(&mut self, at: DateTime<Utc>, accounts: &[(&str, Option<&str>)]) {
        self.clock(at).await;
        let inputs: Vec<AccountInput> = accounts
            .iter()
            .map(|(id, owner)| {
                AccountInput::from_stripe_object(
                    &account_object(id, 1_700_000_000, *owner),
                    None,
                    &self.owner_key,
                )
                .expect("valid account")
            })
            .collect();
        store::accounts::upsert(
            &mut self.conn,
            self.tenant_id,
            &inputs,
            Observed::Fetched(Utc::now()),
        )
        .await
        .expect("upsert");
        for (id, _) in accounts {
            self.periods.push(((*id).to_owned(), at, None));
        }
    }

    /// Removes an account as a sync or a deauthorization does, at `at`.
    pub(crate) async fn remove(&mut self, at: DateTime<Utc>, id: &str) {
        self.clock(at).await;
        let mut tx = self.conn.begin().await.expect("begin");
        let removed = store::accounts::mark_removed(
            &mut *tx,
            self.tenant_id,
            &[crate::helpers::acct(id)],
            Utc::now(),
            None,
        )
        .await
        .expect("removed");
        store::snapshots::forget_latest(&mut tx, self.tenant_id, &removed)
            .await
            .expect("forgotten");
        tx.commit().await.expect("commit");
        let period = self
            .periods
            .iter_mut()
            .rev()
            .find(|(stripeid, _, end)| stripeid == id && end.is_none())
            .expect("a listed account");
        period.2 = Some(at);
    }

    pub(crate) async fn good(&mut self, id: &str, fetched_at: DateTime<Utc>, raw: Value) {
        let parsed: tally::stripe::Balance = serde_json::from_value(raw.clone()).expect("balance");
        let totals = Totals::from_balance(&parsed).expect("no overflow");
        store::snapshots::record(
            &mut self.conn,
            self.tenant_id,
            &crate::helpers::acct(id),
            fetched_at,
            "webhook",
            SnapshotOutcome::Balance {
                raw: &raw,
                totals: &totals,
            },
        )
        .await
        .expect("recorded");
    }

    pub(crate) async fn failed(&mut self, id: &str, fetched_at: DateTime<Utc>) {
        let error = tally::domain::FetchFailure {
            status: Some(400),
            error_type: Some("invalid_request_error".into()),
            code: Some("account_invalid".into()),
            message: Some("no access".into()),
            request_id: Some("req_1".into()),
            hint: Some("reconnect".into()),
            ..Default::default()
        };
        store::snapshots::record(
            &mut self.conn,
            self.tenant_id,
            &crate::helpers::acct(id),
            fetched_at,
            "fetch",
            SnapshotOutcome::Error(&error),
        )
        .await
        .expect("recorded");
    }
}

/// One bucket as the endpoint reports it: accounts, missing, and per currency the
/// four amounts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bucket {
    accounts: i64,
    missing: i64,
    totals: BTreeMap<String, [i64; 4]>,
}

/// The independent recomputation: every stored snapshot, read back and summed with
/// tally's money code, over the listing periods the test itself made.
async fn recompute(
    app: &TestApp,
    tenant_id: i64,
    periods: &[Period],
    only: Option<&[&str]>,
    at: DateTime<Utc>,
) -> Bucket {
    let snapshots: Vec<(String, i64, DateTime<Utc>, Option<Value>)> = sqlx::query_as(
        "SELECT stripeid, id, fetched_at, balance FROM balance_snapshots WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_all(&app.pool)
    .await
    .expect("snapshots");
    let mut bucket = Bucket {
        accounts: 0,
        missing: 0,
        totals: BTreeMap::new(),
    };
    let mut sum = Totals::default();
    for (n, (stripeid, listed_at, removed_at)) in periods.iter().enumerate() {
        if only.is_some_and(|only| !only.contains(&stripeid.as_str())) {
            continue;
        }
        if *listed_at > at || removed_at.is_some_and(|end| end <= at) {
            continue;
        }
        // In an account's first listing any balance counts (all were stored after it
        // was listed); after a relisting, only those fetched since.
        let first_listing = !periods[..n].iter().any(|(id, _, _)| id == stripeid);
        let latest = snapshots
            .iter()
            .filter(|(id, _, fetched_at, balance)| {
                id == stripeid
                    && balance.is_some()
                    && (first_listing || fetched_at >= listed_at)
                    && *fetched_at <= at
            })
            .max_by_key(|(_, id, fetched_at, _)| (*fetched_at, *id));
        match latest {
            None => bucket.missing += 1,
            Some((_, _, _, raw)) => {
                bucket.accounts += 1;
                let parsed: tally::stripe::Balance =
                    serde_json::from_value(raw.clone().expect("a balance")).expect("balance");
                sum.add(&Totals::from_balance(&parsed).expect("no overflow"))
                    .expect("no overflow");
            }
        }
    }
    for row in sum.rows() {
        let a = row.amounts;
        bucket.totals.insert(
            row.currency,
            [
                a.available,
                a.pending,
                a.connect_reserved,
                a.instant_available,
            ],
        );
    }
    bucket
}

fn reported(body: &Value) -> Vec<(DateTime<Utc>, Bucket)> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
        .iter()
        .map(|entry| {
            let totals = entry["totals"]
                .as_array()
                .expect("totals")
                .iter()
                .map(|row| {
                    let n = |k: &str| row[k].as_i64().unwrap_or_else(|| panic!("{k} in {row}"));
                    (
                        row["currency"].as_str().expect("currency").to_owned(),
                        [
                            n("available"),
                            n("pending"),
                            n("connectReserved"),
                            n("instantAvailable"),
                        ],
                    )
                })
                .collect();
            let bucket = Bucket {
                accounts: entry["accounts"].as_i64().expect("accounts"),
                missing: entry["missing"].as_i64().expect("missing"),
                totals,
            };
            (t(entry["at"].as_str().expect("at")), bucket)
        })
        .collect()
}

const BASE: &str = "2026-10-05T00:00:00Z";

fn base(hours: i64, minutes: i64) -> DateTime<Utc> {
    t(BASE) + Duration::hours(hours) + Duration::minutes(minutes)
}

/// A tenant whose accounts come and go over two days: added along the way, removed
/// and listed again, failing, read late by a webhook, in three currencies.
async fn scenario() -> (TestApp, i64, Driver) {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let mut d = Driver::new(&app, tenant_id).await;
    let (a, b, c, dd, e) = ("acct_1A", "acct_1B", "acct_1C", "acct_1D", "acct_1E");
    d.list(
        base(0, 20),
        &[
            (a, Some("owner_1")),
            (b, Some("owner_1")),
            (c, None),
            (dd, Some("owner_2")),
        ],
    )
    .await;
    d.good(a, base(1, 10), balance(10_000, -50, Some(300)))
        .await;
    d.good(b, base(1, 40), balance(2_500, 0, None)).await;
    // Never read: only failures.
    d.failed(c, base(2, 5)).await;
    d.good(a, base(3, 15), balance(12_345, -60, Some(310)))
        .await;
    // Exactly on an hour mark: it counts at that mark.
    d.good(dd, base(5, 0), balance(-400, 20, None)).await;
    // B fails from now on: it keeps its last good balance.
    d.failed(b, base(4, 30)).await;
    d.failed(b, base(6, 30)).await;
    // Added along the way.
    d.list(base(6, 10), &[(e, Some("owner_2"))]).await;
    d.good(e, base(7, 20), balance(99, 5, Some(1))).await;
    // Removed: leaves the totals from then on; a balance fetched meanwhile never counts.
    d.remove(base(8, 30), a).await;
    d.good(a, base(9, 0), balance(1, 1, None)).await;
    // A webhook delivered late: B's balance of 02:30 counts for 03:00 and 04:00 only
    // (its 01:40 balance before, and the failure after 04:30 keeps this one).
    d.good(b, base(2, 30), balance(2_600, 3, None)).await;
    // Listed again: missing until read again (its old balances do not come back).
    d.list(base(10, 15), &[(a, Some("owner_1"))]).await;
    d.good(a, base(11, 5), balance(500, 0, None)).await;
    // The next day: C is finally read, D's money moves twice within one hour.
    d.good(c, base(27, 10), balance(42, 0, Some(7))).await;
    d.good(dd, base(28, 1), balance(1_000, 0, None)).await;
    d.good(dd, base(28, 59), balance(2_000, 0, None)).await;
    // Another late one, with newer balances stored: it counts only until the next.
    d.good(dd, base(6, 40), balance(-300, 0, None)).await;
    // Listed at 12:20, with a balance fetched at 12:05 delivered after that: it counts
    // from the listing on, as in the live totals.
    d.list(base(12, 20), &[("acct_1F", None)]).await;
    d.good("acct_1F", base(12, 5), balance(70, 0, None)).await;
    (app, tenant_id, d)
}

async fn assert_matches_recomputation(
    app: &TestApp,
    d: &Driver,
    body: &Value,
    only: Option<&[&str]>,
    expected_buckets: usize,
) {
    let buckets = reported(body);
    assert_eq!(buckets.len(), expected_buckets, "{body}");
    assert!(
        buckets.windows(2).all(|w| w[0].0 > w[1].0),
        "newest bucket first: {body}"
    );
    for (at, bucket) in &buckets {
        let expected = recompute(app, d.tenant_id, &d.periods, only, *at).await;
        assert_eq!(bucket, &expected, "bucket {at}");
    }
}

#[tokio::test]
async fn hourly_and_daily_totals_match_a_recomputation_from_the_stored_snapshots() {
    let (app, tenant_id, d) = scenario().await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let hourly = format!("{TOTALS}?interval=hour&from={BASE}&to=2026-10-06T06:00:00Z");
    let (status, hourly_body) = app.get_json(&hourly, &token).await;
    assert_eq!(status, 200, "{hourly_body}");
    assert_eq!(hourly_body["object"], "list");
    assert_eq!(hourly_body["interval"], "hour");
    assert_matches_recomputation(&app, &d, &hourly_body, None, 30).await;

    // Spot checks of what the recomputation must agree with, so it cannot be vacuous.
    let buckets: BTreeMap<DateTime<Utc>, Bucket> = reported(&hourly_body).into_iter().collect();
    let at = |h: i64| &buckets[&base(h, 0)];
    assert_eq!(
        (at(1).accounts, at(1).missing),
        (0, 4),
        "listed at 00:20, none read"
    );
    assert_eq!((at(2).accounts, at(2).missing), (2, 2));
    assert_eq!(
        at(4).totals["usd"][0],
        12_345 + 2_600,
        "the late webhook counts at 04:00"
    );
    assert_eq!(
        at(5).totals["usd"][0],
        12_345 + 2_600 - 400,
        "an hour mark includes its instant"
    );
    assert_eq!(
        (at(7).accounts, at(7).missing),
        (3, 2),
        "E added, not read yet"
    );
    assert_eq!(
        at(7).totals["usd"][0],
        12_345 + 2_600 - 300,
        "D's late balance of 06:40"
    );
    assert_eq!(
        (at(9).accounts, at(9).missing),
        (3, 1),
        "A removed at 08:30"
    );
    assert_eq!(
        (at(11).accounts, at(11).missing),
        (3, 2),
        "A listed again, not read"
    );
    assert_eq!(at(28).totals["jpy"][0], 1 + 7, "C read on day two");
    assert_eq!(
        (at(13).accounts, at(13).missing),
        (5, 1),
        "F read before it was listed"
    );
    assert_eq!(at(29).totals["usd"][0], 500 + 2_600 + 2_000 + 99 + 42 + 70);

    // Days: `to` as a date is the whole day; the range touches three days.
    let daily = format!("{TOTALS}?interval=day&from=2026-10-05&to=2026-10-07");
    let (status, body) = app.get_json(&daily, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interval"], "day");
    assert_matches_recomputation(&app, &d, &body, None, 3).await;
    let newest = &body["data"][0];
    assert_eq!(newest["at"], "2026-10-08T00:00:00.000Z");

    // The latest bucket is what the live aggregate says now, to the cent.
    let (_, live) = app
        .get_json("/api/administrator/connect/balances", &token)
        .await;
    let mut live_totals = live["totals"].as_array().expect("totals").clone();
    live_totals.sort_by_key(|row| row["currency"].as_str().map(str::to_owned));
    assert_eq!(newest["totals"], Value::Array(live_totals), "{live}");
    assert_eq!(newest["accounts"], 6);
    assert_eq!(newest["missing"], 0);

    // What the migration's rebuild computes from scratch equals what was kept.
    rebuild_history(&app, tenant_id).await;
    let (_, rebuilt) = app.get_json(&hourly, &token).await;
    assert_eq!(rebuilt, hourly_body);
}

/// Recomputes the tenant's history from scratch, as the migration did.
pub(crate) async fn rebuild_history(app: &TestApp, tenant_id: i64) {
    let mut tx = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT balance_history_rebuild($1)")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("rebuild");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn one_owner_and_one_currency() {
    let (app, _tenant_id, d) = scenario().await;
    let token = app.token(Role::Admin, Some("acme")).await;
    let path =
        format!("{TOTALS}?interval=hour&from={BASE}&to=2026-10-06T06:00:00Z&accountid=owner_1");
    let (status, body) = app.get_json(&path, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_matches_recomputation(&app, &d, &body, Some(&["acct_1A", "acct_1B"]), 30).await;

    let path = format!("{TOTALS}?interval=hour&from={BASE}&to=2026-10-06T06:00:00Z&currency=JPY");
    let (status, body) = app.get_json(&path, &token).await;
    assert_eq!(status, 200, "{body}");
    for (at, bucket) in reported(&body) {
        let mut expected = recompute(&app, d.tenant_id, &d.periods, None, at).await;
        expected.totals.retain(|currency, _| currency == "jpy");
        assert_eq!(bucket, expected, "bucket {at}");
    }

    // An owner token names the tenant.
    let owner = app.token(Role::Owner, None).await;
    let (status, by_owner) = app.get_json(&format!("{path}&tenant=acme"), &owner).await;
    assert_eq!(status, 200, "{by_owner}");
    assert_eq!(by_owner, body);
}

#[tokio::test]
async fn csv_has_one_row_per_bucket_and_currency() {
    let (app, _tenant_id, _d) = scenario().await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let path = format!("{TOTALS}?interval=hour&from={BASE}&to=2026-10-05T12:00:00Z");
    let (_, json_body) = app.get_json(&path, &token).await;
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .bearer_auth(&token)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let text = response.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        [
            "at",
            "currency",
            "available",
            "pending",
            "connect_reserved",
            "instant_available",
            "accounts",
            "missing",
            "negative",
            "negative_accounts"
        ]
    );
    let rows: Vec<BTreeMap<String, String>> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("CSV rows");
    let mut expected = Vec::new();
    for entry in json_body["data"].as_array().expect("data") {
        let totals = entry["totals"].as_array().expect("totals");
        let row = |currency: &str, amounts: [String; 6]| {
            BTreeMap::from([
                (
                    "at".to_owned(),
                    entry["at"].as_str().expect("at").to_owned(),
                ),
                ("currency".to_owned(), currency.to_owned()),
                ("available".to_owned(), amounts[0].clone()),
                ("pending".to_owned(), amounts[1].clone()),
                ("connect_reserved".to_owned(), amounts[2].clone()),
                ("instant_available".to_owned(), amounts[3].clone()),
                ("accounts".to_owned(), entry["accounts"].to_string()),
                ("missing".to_owned(), entry["missing"].to_string()),
                ("negative".to_owned(), amounts[4].clone()),
                ("negative_accounts".to_owned(), amounts[5].clone()),
            ])
        };
        if totals.is_empty() {
            expected.push(row("", Default::default()));
        }
        for total in totals {
            let n = |k: &str| total[k].to_string();
            expected.push(row(
                total["currency"].as_str().expect("currency"),
                [
                    n("available"),
                    n("pending"),
                    n("connectReserved"),
                    n("instantAvailable"),
                    n("negative"),
                    n("negativeAccounts"),
                ],
            ));
        }
    }
    assert_eq!(rows, expected);
    // D is 400 below zero at 05:00.
    assert!(
        rows.iter().any(|r| r["at"] == "2026-10-05T05:00:00.000Z"
            && r["currency"] == "usd"
            && r["negative"] == "400"
            && r["negative_accounts"] == "1"),
        "{rows:?}"
    );
    // The first bucket (01:00) has accounts but no balance yet: one row, no currency.
    let last = rows.last().expect("rows");
    assert_eq!(
        (last["currency"].as_str(), last["missing"].as_str()),
        ("", "4")
    );
}

#[tokio::test]
async fn the_cli_prints_the_same_history_from_stored_data_only() {
    let (app, _tenant_id, _d) = scenario().await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let api_csv = app
        .client
        .get(format!(
            "{}{TOTALS}?interval=day&from=2026-10-05&to=2026-10-06",
            app.address
        ))
        .bearer_auth(&token)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    // No master key: nothing is fetched from Stripe.
    let run = |args: &[&str]| {
        app.tally_command()
            .env_remove("TALLY_MASTER_KEY")
            .args(args)
            .output()
            .expect("tally runs")
    };
    let csv = run(&[
        "balances",
        "acme",
        "--history",
        "day",
        "--from",
        "2026-10-05",
        "--to",
        "2026-10-06",
        "--format",
        "csv",
    ]);
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&csv.stdout), api_csv);

    let table = run(&[
        "balances",
        "acme",
        "--history",
        "hour",
        "--from",
        "2026-10-05T04:00:00Z",
        "--to",
        "2026-10-05T05:00:00Z",
    ]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("AT"), "{text}");
    // 05:00: A's 12345 + B's late 2600 - D's 400 (usd, two decimals), A's 310 yen.
    let usd = lines
        .iter()
        .find(|l| l.starts_with("2026-10-05T05:00:00Z") && l.contains("USD"))
        .unwrap_or_else(|| panic!("a USD line at 05:00: {text}"));
    assert!(usd.contains(" 145.45 "), "{usd}");
    let jpy = lines
        .iter()
        .find(|l| l.starts_with("2026-10-05T05:00:00Z") && l.contains("JPY"))
        .unwrap_or_else(|| panic!("a JPY line: {text}"));
    assert!(jpy.contains(" 310 "), "{jpy}");

    let missing_from = run(&["balances", "acme", "--history", "day"]);
    assert!(!missing_from.status.success());
    let bad_from = run(&[
        "balances",
        "acme",
        "--history",
        "day",
        "--from",
        "last week",
    ]);
    assert!(!bad_from.status.success());
    assert!(
        String::from_utf8_lossy(&bad_from.stderr)
            .contains("--from must be an RFC 3339 timestamp or a date"),
        "{}",
        String::from_utf8_lossy(&bad_from.stderr)
    );
}

#[tokio::test]
async fn bad_input_gets_400_with_a_stable_code() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let cases: [(&str, u16, &str); 13] = [
        ("interval=week&from=2026-11-01", 400, "invalid-interval"),
        ("interval=HOUR&from=2026-11-01", 400, "invalid-interval"),
        ("interval=day", 400, "invalid-from"),
        ("interval=day&from=yesterday", 400, "invalid-from"),
        ("interval=day&from=2026-11-31", 400, "invalid-from"),
        ("interval=day&from=2026-11-01&to=soon", 400, "invalid-to"),
        (
            "interval=day&from=2026-11-02&to=2026-11-01T00:00:00Z",
            400,
            "invalid-range",
        ),
        (
            "interval=hour&from=2026-11-01T05:00:00Z&to=2026-11-01T05:00:00Z",
            400,
            "invalid-range",
        ),
        (
            "interval=hour&from=2026-11-01&to=2026-12-12",
            400,
            "too-many-buckets",
        ),
        (
            "interval=day&from=0001-01-01&to=9999-12-31",
            400,
            "too-many-buckets",
        ),
        (
            "interval=day&from=2026-11-01&currency=dollars",
            400,
            "invalid-currency",
        ),
        (
            "interval=day&from=2026-11-01&accountid=nobody",
            404,
            "invalid-accountid",
        ),
        (
            "interval=day&from=2026-11-01&to=2026-11-01&accountid=%00",
            400,
            "invalid-accountid",
        ),
    ];
    for (query, status, code) in cases {
        let (got, body) = app.get_json(&format!("{TOTALS}?{query}"), &token).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
        assert_eq!(body["object"], "error");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // 1000 hours is the limit, not beyond it.
    let (status, body) = app
        .get_json(
            &format!("{TOTALS}?interval=hour&from=2026-11-01T00:00:00Z&to=2026-12-12T16:00:00Z"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1000));
    // No token, no totals.
    let response = app
        .client
        .get(format!("{}{TOTALS}?from=2026-11-01", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn the_migration_fills_the_history_from_snapshots_already_stored() {
    let db = TestDb::create().await;
    let (pool, all) = crate::helpers::migrated_before(&db, 20261201000008).await;
    // acct_a listed since 09:00 with two balances and a failure; acct_b removed at
    // 12:00 after one balance; acct_c never read.
    let snapshots = [
        (
            "acct_a",
            "2026-10-05T09:30:00Z",
            Some(balance(100, -1, Some(5))),
        ),
        (
            "acct_a",
            "2026-10-05T11:10:00Z",
            Some(balance(250, -2, None)),
        ),
        ("acct_a", "2026-10-05T13:00:00Z", None),
        ("acct_b", "2026-10-05T10:15:00Z", Some(balance(40, 0, None))),
    ];
    sqlx::raw_sql(
        r#"INSERT INTO tenants (slug, credential_kind, key_ciphertext, key_last4, api_version)
               VALUES ('acme', 'platform', '\x00', '1234', 'v');
           INSERT INTO stripe_accounts (tenant_id, stripeid, stripe_object, created_at, updated_at, removed_at)
           SELECT id, v.s, '{}', now(), v.updated::timestamptz, v.removed::timestamptz
           FROM tenants, (VALUES ('acct_a', '2026-10-05T09:00:00Z', NULL),
                                 ('acct_b', '2026-10-05T12:00:00Z', '2026-10-05T12:00:00Z'),
                                 ('acct_c', '2026-10-05T09:45:00Z', NULL)) AS v(s, updated, removed);"#,
    )
    .execute(&pool)
    .await
    .expect("accounts as the earlier schema kept them");
    for (stripeid, fetched_at, balance) in &snapshots {
        sqlx::query(
            "INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance, error)
             SELECT id, $1, $2, 'fetch', $3, CASE WHEN $3::jsonb IS NULL THEN '{}'::jsonb END FROM tenants",
        )
        .bind(stripeid)
        .bind(t(fetched_at))
        .bind(balance)
        .execute(&pool)
        .await
        .expect("snapshot");
    }
    all.run(&pool).await.expect("the history migration");
    pool.close().await;

    let app = spawn_app_on(db, tally::crypto::MasterKey::generate_base64(), |_| {}).await;
    let tenant_id = store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    let token = app.token(Role::Reader, Some("acme")).await;
    let (status, body) = app
        .get_json(
            &format!("{TOTALS}?interval=hour&from=2026-10-05T08:00:00Z&to=2026-10-05T15:00:00Z"),
            &token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = Driver {
        conn: PgConnection::connect(&app.db.url).await.expect("connect"),
        tenant_id,
        owner_key: String::new(),
        // Listed from the earliest of the last change and the first snapshot.
        periods: vec![
            ("acct_a".into(), t("2026-10-05T09:00:00Z"), None),
            (
                "acct_b".into(),
                t("2026-10-05T10:15:00Z"),
                Some(t("2026-10-05T12:00:00Z")),
            ),
            ("acct_c".into(), t("2026-10-05T09:45:00Z"), None),
        ],
    };
    assert_matches_recomputation(&app, &d, &body, None, 7).await;
    let buckets: BTreeMap<DateTime<Utc>, Bucket> = reported(&body).into_iter().collect();
    let at = |v: &str| &buckets[&t(v)];
    assert_eq!(
        at("2026-10-05T09:00:00Z").missing,
        1,
        "acct_a listed, unread"
    );
    assert_eq!(
        at("2026-10-05T12:00:00Z").totals["usd"][0],
        250,
        "acct_b removed at 12:00"
    );
    assert_eq!(at("2026-10-05T11:00:00Z").totals["usd"][0], 140);
    assert_eq!(
        at("2026-10-05T14:00:00Z").accounts,
        1,
        "a failure keeps the last good balance"
    );

    // And it keeps going from there: a new balance moves it from its hour on.
    let mut d = d;
    d.good("acct_c", t("2026-10-05T14:30:00Z"), balance(9, 0, None))
        .await;
    let (_, body) = app
        .get_json(
            &format!("{TOTALS}?interval=hour&from=2026-10-05T08:00:00Z&to=2026-10-05T15:00:00Z"),
            &token,
        )
        .await;
    assert_matches_recomputation(&app, &d, &body, None, 7).await;
    assert_eq!(reported(&body)[0].1.totals["usd"][0], 259);
}
