//! Last-known-good balances: an account whose fetch fails keeps its latest
//! successful balance in the totals while it counts as failed, says how old that
//! balance is, and moves to the new balance once Stripe answers again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::balances::{expected_totals, platform_setup, reported_totals, BALANCES, ONE};
use crate::doctor::{doctor, stdout};
use crate::helpers::TestApp;

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"))
        .parse()
        .expect("RFC 3339")
}

fn failure<'a>(body: &'a Value, stripeid: &str) -> &'a Value {
    body["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|f| f["stripeid"] == stripeid)
        .unwrap_or_else(|| panic!("{stripeid} in failures: {body}"))
}

/// Per currency, the sums of every CSV row that has amounts, and each row's status.
async fn csv_rows(
    app: &TestApp,
    token: &str,
) -> (BTreeMap<String, [i64; 4]>, Vec<BTreeMap<String, String>>) {
    let text = app.get_csv(BALANCES, token).await;
    let mut sums: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    let mut rows = Vec::new();
    for record in csv::Reader::from_reader(text.as_bytes()).deserialize() {
        let record: BTreeMap<String, String> = record.expect("a CSV row");
        if !record["currency"].is_empty() {
            let n = |k: &str| record[k].parse::<i64>().expect("integer");
            let sum = sums.entry(record["currency"].clone()).or_default();
            sum[0] += n("available");
            sum[1] += n("pending");
            sum[2] += n("connect_reserved");
            sum[3] += n("instant_available");
        }
        rows.push(record);
    }
    (sums, rows)
}

async fn assert_no_drift(app: &TestApp) {
    let check = doctor(app, &[]).await;
    assert!(check.status.success(), "{}", stdout(&check));
    assert!(stdout(&check).contains("no drift"), "{}", stdout(&check));
}

#[tokio::test]
async fn a_failing_account_keeps_its_last_good_balance_until_stripe_answers_again() {
    let (app, sim, ids, token) = platform_setup(6).await;
    let (flaky, never) = (ids[0].clone(), ids[5].clone());
    // Never read successfully: it adds nothing, whatever happens to the others.
    sim.fail_account(&never, 400);
    let (status, first) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(status, 200, "{first}");
    let good_balances = expected_totals(&sim, &ids[..5]);
    assert_eq!(reported_totals(&first), good_balances);
    assert!(failure(&first, &never)["lastGoodAt"].is_null(), "{first}");

    let owner_of = |id: &str| {
        sim.account_object(id).expect("object")["metadata"]["accountid"]
            .as_str()
            .map(str::to_owned)
    };
    let owner = owner_of(&flaky).expect("the fixture's first account has an owner");
    let owned: Vec<String> = ids[..5]
        .iter()
        .filter(|id| owner_of(id).as_deref() == Some(owner.as_str()))
        .cloned()
        .collect();
    let owner_before = expected_totals(&sim, &owned);

    // Stripe fails for an account that was just read, and its money moves meanwhile.
    sim.fail_account(&flaky, 400);
    sim.move_money(&flaky);
    let (status, failing) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(status, 200, "{failing}");
    assert_eq!(
        reported_totals(&failing),
        good_balances,
        "the failed account keeps its last good balance in the totals"
    );
    assert_eq!(failing["complete"], false);
    assert_eq!(
        failing["accounts"],
        serde_json::json!({"total": 6, "ok": 4, "failed": 2, "stale": 0})
    );
    let flaky_failure = failure(&failing, &flaky);
    assert_eq!(flaky_failure["status"], 400);
    let last_good_at = at(&flaky_failure["lastGoodAt"]);
    let tried_at = at(&flaky_failure["fetchedAt"]);
    assert!(last_good_at < tried_at, "{flaky_failure}");
    assert!(at(&first["asOf"]) > last_good_at);
    let never_failure = failure(&failing, &never);
    assert!(never_failure["lastGoodAt"].is_null(), "{never_failure}");
    assert!(never_failure["fetchedAt"].is_string(), "{never_failure}");

    // One owner's aggregate (summed from the rows, not the kept totals) agrees.
    let (_, mine) = app
        .get_json(&format!("{BALANCES}?accountid={owner}"), &token)
        .await;
    assert_eq!(reported_totals(&mine), owner_before, "{mine}");
    assert_eq!(mine["complete"], false);
    assert_eq!(at(&failure(&mine, &flaky)["lastGoodAt"]), last_good_at);

    // The CSV: the failed account's last good amounts, marked failed with its code.
    let (sums, rows) = csv_rows(&app, &token).await;
    assert_eq!(sums, good_balances);
    let flaky_rows: Vec<_> = rows.iter().filter(|r| r["stripeid"] == flaky).collect();
    assert!(!flaky_rows.is_empty());
    for row in &flaky_rows {
        assert_eq!(row["status"], "failed", "{row:?}");
        assert!(!row["error_code"].is_empty(), "{row:?}");
        assert!(!row["currency"].is_empty(), "{row:?}");
        assert!(!row["last_good_at"].is_empty(), "{row:?}");
    }
    let never_rows: Vec<_> = rows.iter().filter(|r| r["stripeid"] == never).collect();
    assert_eq!(never_rows.len(), 1, "{never_rows:?}");
    assert_eq!(never_rows[0]["currency"], "");
    assert_eq!(never_rows[0]["last_good_at"], "");

    // The single-account endpoint still answers the failure, now with its age.
    let (status, one) = app
        .get_json(&format!("{ONE}?stripeid={flaky}"), &token)
        .await;
    assert_eq!(
        (status, one["code"].as_str()),
        (502, Some("stripe-request-failed"))
    );
    let difference = at(&one["failure"]["lastGoodAt"]) - last_good_at;
    assert!(difference.num_milliseconds().abs() < 1, "{one}");
    assert!(one["failure"]["fetchedAt"].is_string(), "{one}");
    let (_, one) = app
        .get_json(&format!("{ONE}?stripeid={never}"), &token)
        .await;
    assert!(one["failure"]["lastGoodAt"].is_null(), "{one}");
    assert_no_drift(&app).await;

    // Good again: the totals move to the new balance.
    sim.heal_account(&flaky);
    let (_, healed) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    let moved = expected_totals(&sim, &ids[..5]);
    assert_ne!(moved, good_balances, "the simulator's balance moved");
    assert_eq!(reported_totals(&healed), moved);
    assert_eq!(
        healed["accounts"],
        serde_json::json!({"total": 6, "ok": 5, "failed": 1, "stale": 0})
    );
    assert_eq!(healed["failures"].as_array().map(Vec::len), Some(1));
    assert_no_drift(&app).await;
}

/// Records `outcome` for `stripeid` as observed at `at`, as a webhook would.
async fn record(
    app: &TestApp,
    stripeid: &str,
    at: DateTime<Utc>,
    balance: Option<&Value>,
) -> tally::store::snapshots::Recorded {
    use tally::store::snapshots::SnapshotOutcome;
    let tenant_id = tally::store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    let error = tally::domain::FetchFailure {
        status: Some(500),
        error_type: Some("api_error".into()),
        message: Some("down".into()),
        request_id: Some("req_1".into()),
        hint: Some("retry".into()),
        ..Default::default()
    };
    let totals = balance.map(|balance| {
        let parsed: tally::stripe::Balance =
            serde_json::from_value(balance.clone()).expect("balance");
        tally::money::Totals::from_balance(&parsed).expect("totals")
    });
    let outcome = match (balance, &totals) {
        (Some(raw), Some(totals)) => SnapshotOutcome::Balance { raw, totals },
        _ => SnapshotOutcome::Error(&error),
    };
    let mut conn = app.pool.acquire().await.expect("conn");
    tally::store::snapshots::record(
        &mut conn,
        tenant_id,
        &crate::helpers::acct(stripeid),
        at,
        "webhook",
        outcome,
    )
    .await
    .expect("recorded")
}

#[tokio::test]
async fn a_late_balance_newer_than_the_last_good_one_fills_it_in_without_becoming_the_latest() {
    use tally::store::snapshots::Recorded;
    let (app, sim, ids, token) = platform_setup(3).await;
    let (status, _) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(status, 200);
    // Postgres keeps microseconds.
    let now = chrono::DurationRound::duration_trunc(Utc::now(), chrono::Duration::microseconds(1))
        .expect("truncated");
    let usd = |amount: i64| {
        serde_json::json!({"object": "balance", "livemode": false, "pending": [],
                           "available": [{"amount": amount, "currency": "usd"}]})
    };
    let expected = |amount: i64| {
        let mut totals = expected_totals(&sim, &ids[1..]);
        totals.entry("usd".to_owned()).or_default()[0] += amount;
        totals
    };

    // The latest try fails; then a balance observed before that failure, but after the
    // last good one, arrives late: it is history, not the latest, yet it is the newest
    // balance known, so the totals take it.
    let failed = record(&app, &ids[0], now + chrono::Duration::seconds(10), None).await;
    assert!(matches!(failed, Recorded::Latest(_)), "{failed:?}");
    let late = record(
        &app,
        &ids[0],
        now + chrono::Duration::seconds(5),
        Some(&usd(12345)),
    )
    .await;
    assert!(matches!(late, Recorded::HistoryOnly(_)), "{late:?}");
    let (_, body) = app.get_json(BALANCES, &token).await;
    assert_eq!(reported_totals(&body), expected(12345));
    assert_eq!(body["accounts"]["failed"], 1);
    let entry = failure(&body, &ids[0]);
    assert_eq!(at(&entry["lastGoodAt"]), now + chrono::Duration::seconds(5));

    // One older than the last good balance changes nothing.
    let older = record(
        &app,
        &ids[0],
        now + chrono::Duration::seconds(2),
        Some(&usd(1)),
    )
    .await;
    assert!(matches!(older, Recorded::HistoryOnly(_)), "{older:?}");
    let (_, body) = app.get_json(BALANCES, &token).await;
    assert_eq!(reported_totals(&body), expected(12345));
    assert_no_drift(&app).await;
}

#[tokio::test]
async fn the_migration_gives_failed_accounts_their_newest_stored_balance_and_the_totals_follow() {
    let db = crate::helpers::TestDb::create().await;
    let (pool, all) = crate::helpers::migrated_before(&db, 20261201000003).await;
    // acct_a: two balances, then a failure (the newest balance is its last good one);
    // acct_b: only a failure; acct_c: ok.
    sqlx::raw_sql(
        r#"INSERT INTO tenants (slug, credential_kind, key_ciphertext, key_last4, api_version)
               VALUES ('acme', 'platform', '\x00', '1234', 'v');
           INSERT INTO stripe_accounts (tenant_id, stripeid, stripe_object, created_at)
               SELECT id, s, '{}', now() FROM tenants, unnest(ARRAY['acct_a', 'acct_b', 'acct_c']) s;
           INSERT INTO balance_snapshots (id, tenant_id, stripeid, fetched_at, source, balance, error)
           SELECT v.id, t.id, v.stripeid, now() - v.age, 'fetch', v.balance::jsonb, v.error::jsonb
           FROM tenants t, (VALUES
             (1, 'acct_a', interval '3 min', '{"available":[{"amount":100,"currency":"USD"}],"pending":[]}', NULL),
             (2, 'acct_a', interval '2 min', '{"available":[{"amount":200,"currency":"USD"},{"amount":-5,"currency":"eur"}],"pending":[{"amount":-7,"currency":"usd"}],"connect_reserved":[{"amount":9,"currency":"usd"}],"instant_available":[{"amount":3,"currency":"usd","net_available":[]}]}', NULL),
             (3, 'acct_a', interval '1 min', NULL, '{"code":"x"}'),
             (4, 'acct_b', interval '1 min', NULL, '{"code":"y"}'),
             (5, 'acct_c', interval '1 min', '{"available":[{"amount":1,"currency":"usd"}],"pending":[]}', NULL)
           ) AS v(id, stripeid, age, balance, error);
           INSERT INTO latest_balances (tenant_id, stripeid, snapshot_id, fetched_at, ok, amounts)
           SELECT s.tenant_id, s.stripeid, s.id, s.fetched_at, s.balance IS NOT NULL,
                  CASE WHEN s.balance IS NULL THEN '[]'::jsonb ELSE
                  '[{"currency":"usd","available":1,"pending":0,"connect_reserved":0,"instant_available":0}]' END
           FROM balance_snapshots s WHERE s.id IN (3, 4, 5);
           INSERT INTO tenant_balance_totals SELECT id, 'usd', 1, 0, 0, 0, 1 FROM tenants;
           INSERT INTO tenant_balance_counts SELECT id, 1, 2 FROM tenants;"#,
    )
    .execute(&pool)
    .await
    .expect("rows as the earlier schema kept them");

    all.run(&pool).await.expect("the last-good migration");

    let rows: Vec<(String, i64, bool, Option<i64>, bool, Value)> = sqlx::query_as(
        "SELECT stripeid, snapshot_id, ok, good_snapshot_id, good_at IS NOT NULL, amounts
         FROM latest_balances ORDER BY stripeid",
    )
    .fetch_all(&pool)
    .await
    .expect("latest");
    let usd = |available, pending, reserved, instant| {
        serde_json::json!({"currency": "usd", "available": available, "pending": pending,
                           "connect_reserved": reserved, "instant_available": instant})
    };
    let eur = serde_json::json!({"currency": "eur", "available": -5, "pending": 0,
                                 "connect_reserved": 0, "instant_available": 0});
    assert_eq!(
        rows,
        vec![
            (
                "acct_a".to_owned(),
                3,
                false,
                Some(2),
                true,
                serde_json::json!([eur, usd(200, -7, 9, 3)])
            ),
            (
                "acct_b".to_owned(),
                4,
                false,
                None,
                false,
                serde_json::json!([])
            ),
            (
                "acct_c".to_owned(),
                5,
                true,
                Some(5),
                true,
                serde_json::json!([usd(1, 0, 0, 0)])
            ),
        ]
    );
    let totals: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT currency, available, pending, connect_reserved, instant_available, holders
         FROM tenant_balance_totals ORDER BY currency",
    )
    .fetch_all(&pool)
    .await
    .expect("totals");
    assert_eq!(
        totals,
        vec![
            ("eur".to_owned(), -5, 0, 0, 0, 1),
            ("usd".to_owned(), 201, -7, 9, 3, 2)
        ]
    );
    let mut conn = pool.acquire().await.expect("conn");
    let drift = tally::store::doctor::find_drift(&mut conn)
        .await
        .expect("doctor");
    assert!(drift.is_empty(), "{drift:?}");
    drop(conn);
    pool.close().await;
    drop(db);
}
