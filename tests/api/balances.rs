//! Balance fan-out and aggregation against the simulator over real HTTP.

use std::collections::BTreeMap;

use serde_json::Value;
use tally::domain::Role;
use tally::sim::{SimConfig, SimHandle};

use crate::helpers::{spawn_app, spawn_sim, TestApp};

pub const BALANCES: &str = "/api/administrator/connect/balances";
pub const ONE: &str = "/api/administrator/connect/stripe-account/balance";
const HISTORY: &str = "/api/administrator/connect/balances/history";

/// What the simulator holds for `accounts`, summed here independently of tally:
/// currency -> (available, pending, connect_reserved, instant_available).
pub fn expected_totals(sim: &SimHandle, accounts: &[String]) -> BTreeMap<String, [i64; 4]> {
    let mut totals: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for account in accounts {
        let balance = sim.balance_of(account).expect("sim balance");
        for (index, kind) in [
            "available",
            "pending",
            "connect_reserved",
            "instant_available",
        ]
        .iter()
        .enumerate()
        {
            for entry in balance[*kind].as_array().into_iter().flatten() {
                let currency = entry["currency"].as_str().expect("currency").to_owned();
                totals.entry(currency).or_default()[index] +=
                    entry["amount"].as_i64().expect("amount");
            }
        }
    }
    totals
}

pub fn reported_totals(body: &Value) -> BTreeMap<String, [i64; 4]> {
    body["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|row| {
            let n = |k: &str| row[k].as_i64().expect("integer minor units");
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
        .collect()
}

pub async fn platform_setup(accounts: usize) -> (TestApp, SimHandle, Vec<String>, String) {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: accounts,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    let tenant = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant, &sim, &ids, None).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    (app, sim, ids, token)
}

/// Stores the simulator's balance of `id` as the tenant's snapshot taken at `at` from
/// `source` (`fetch` or `webhook`), as the refresher or a webhook would.
async fn record_sim_balance(
    conn: &mut sqlx::PgConnection,
    tenant_id: i64,
    sim: &SimHandle,
    id: &str,
    at: chrono::DateTime<chrono::Utc>,
    source: &str,
) -> tally::store::snapshots::Recorded {
    let balance = sim.balance_of(id).expect("balance");
    let parsed: tally::stripe::Balance = serde_json::from_value(balance.clone()).expect("balance");
    let totals = tally::money::Totals::from_balance(&parsed).expect("totals");
    tally::store::snapshots::record(
        conn,
        tenant_id,
        &crate::helpers::acct(id),
        at,
        source,
        tally::store::snapshots::SnapshotOutcome::Balance {
            raw: &balance,
            totals: &totals,
        },
    )
    .await
    .expect("recorded")
}

#[tokio::test]
async fn totals_equal_the_sum_of_what_the_simulator_holds() {
    let (app, sim, ids, token) = platform_setup(40).await;
    let expected = expected_totals(&sim, &ids);
    assert!(expected.len() >= 3, "several currencies: {expected:?}");
    assert!(
        ids.iter().any(|id| sim
            .balance_of(id)
            .expect("b")
            .to_string()
            .contains("\"amount\":-")),
        "the fixture has negative amounts"
    );
    let (status, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reported_totals(&body), expected);
    assert_eq!(body["complete"], true);
    assert_eq!(
        body["accounts"],
        serde_json::json!({"total": 40, "ok": 40, "failed": 0, "stale": 0})
    );
    assert_eq!(body["failures"], serde_json::json!([]));
    assert!(body["oldestFetchedAt"].is_string() && body["asOf"].is_string());
    assert_eq!(sim.stats().header_violations, 0);
}

#[tokio::test]
async fn failing_accounts_are_explained_and_the_rest_still_sum_exactly() {
    let (app, sim, ids, token) = platform_setup(20).await;
    sim.fail_account(&ids[0], 500);
    sim.revoke(&ids[1]);
    let (_, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(body["complete"], false);
    assert_eq!(
        body["accounts"],
        serde_json::json!({"total": 20, "ok": 18, "failed": 2, "stale": 0})
    );
    assert_eq!(reported_totals(&body), expected_totals(&sim, &ids[2..]));
    let failures = body["failures"].as_array().expect("failures");
    let failure = |id: &str| {
        failures
            .iter()
            .find(|f| f["stripeid"] == id)
            .cloned()
            .expect("listed")
    };
    let server = failure(&ids[0]);
    assert_eq!(server["status"], 500);
    assert!(server["requestId"]
        .as_str()
        .is_some_and(|r| r.starts_with("req_")));
    assert!(server["hint"]
        .as_str()
        .expect("hint")
        .contains("server error"));
    let revoked = failure(&ids[1]);
    assert_eq!(revoked["status"], 403);
    assert_eq!(revoked["code"], "account_invalid");
    assert!(revoked["hint"]
        .as_str()
        .expect("hint")
        .contains("not connected"));
}

#[tokio::test]
async fn an_org_key_reads_every_account_with_the_right_context_and_explains_the_classic_failure() {
    let sim = spawn_sim(SimConfig {
        platforms: 2,
        accounts_per_platform: 5,
        org_accounts: 2,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    let tenant = app.add_sim_org_tenant("org", &sim).await;
    let keys = sim.keys().clone();
    for platform in &keys.platforms {
        app.store_sim_accounts(tenant, &sim, &platform.accounts, Some(&platform.id))
            .await;
    }
    app.store_sim_accounts(tenant, &sim, &keys.org_accounts, None)
        .await;
    let token = app.token(Role::Reader, Some("org")).await;
    let (_, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    let mut all: Vec<String> = keys
        .platforms
        .iter()
        .flat_map(|p| p.accounts.clone())
        .collect();
    all.extend(keys.org_accounts.clone());
    assert_eq!(body["complete"], true, "{body}");
    assert_eq!(reported_totals(&body), expected_totals(&sim, &all));
    assert_eq!(sim.stats().header_violations, 0);

    // The classic failure: an account under a platform recorded without its platform
    // gets `Stripe-Context: acct_X` and is refused; the hint says what to do.
    let misfiled = keys.platforms[0].accounts[0].clone();
    app.store_sim_accounts(tenant, &sim, std::slice::from_ref(&misfiled), None)
        .await;
    let (_, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(body["complete"], false);
    let failure = &body["failures"][0];
    assert_eq!(failure["stripeid"], misfiled.as_str());
    assert_eq!(failure["status"], 403);
    assert!(
        failure["hint"]
            .as_str()
            .expect("hint")
            .contains("platform/account"),
        "{failure}"
    );
    // It was read before it was misfiled: its last good balance stays in the totals.
    assert!(failure["lastGoodAt"].is_string(), "{failure}");
    assert_eq!(reported_totals(&body), expected_totals(&sim, &all));
}

#[tokio::test]
async fn max_age_serves_snapshots_without_calling_stripe() {
    let (app, sim, _, token) = platform_setup(10).await;
    let (_, first) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    sim.reset_stats();
    let (_, cached) = app
        .get_json(&format!("{BALANCES}?max_age=3600"), &token)
        .await;
    assert_eq!(sim.stats().total_requests, 0, "served from snapshots");
    assert_eq!(cached["totals"], first["totals"]);
    assert_eq!(cached["oldestFetchedAt"], first["oldestFetchedAt"]);
    let (_, refreshed) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(
        sim.stats().total_requests,
        10,
        "max_age=0 fetches every account"
    );
    assert_ne!(refreshed["oldestFetchedAt"], first["oldestFetchedAt"]);
}

#[tokio::test]
async fn concurrent_identical_requests_share_one_fan_out() {
    let (app, sim, _, token) = platform_setup(12).await;
    sim.set_knobs(|k| k.latency_ms = 50);
    let url = format!("{}{BALANCES}?max_age=0", app.address);
    let requests = (0..5).map(|_| app.client.get(&url).bearer_auth(&token).send());
    let responses = futures::future::join_all(requests).await;
    for response in responses {
        assert_eq!(response.expect("sent").status(), 200);
    }
    assert_eq!(
        sim.stats().total_requests,
        12,
        "one fetch per account, not one per request"
    );
}

#[tokio::test]
async fn csv_has_one_row_per_account_and_currency_and_parses() {
    let (app, sim, ids, token) = platform_setup(8).await;
    sim.fail_account(&ids[0], 500);
    let response = app
        .client
        .get(format!("{}{BALANCES}?max_age=0", app.address))
        .bearer_auth(&token)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("sent");
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/csv"));
    let text = response.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut sums: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    let mut failed = Vec::new();
    for record in reader.deserialize::<BTreeMap<String, String>>() {
        let record = record.expect("a CSV row");
        if record["status"] == "failed" {
            failed.push(record["stripeid"].clone());
            continue;
        }
        let n = |k: &str| record[k].parse::<i64>().expect("integer");
        let row = sums.entry(record["currency"].clone()).or_default();
        row[0] += n("available");
        row[1] += n("pending");
        row[2] += n("connect_reserved");
        row[3] += n("instant_available");
    }
    assert_eq!(failed, [ids[0].clone()]);
    assert_eq!(sums, expected_totals(&sim, &ids[1..]));
}

#[tokio::test]
async fn one_accounts_balance_is_fetched_then_served_from_its_snapshot() {
    let (app, sim, ids, token) = platform_setup(3).await;
    let path = format!("{ONE}?stripeid={}&max_age=60", ids[1]);
    let (status, body) = app.get_json(&path, &token).await;
    assert_eq!(status, 200, "{body}");
    let expected = sim.balance_of(&ids[1]).expect("balance");
    assert_eq!(body["available"], expected["available"]);
    assert_eq!(body["object"], "balance");
    assert!(body["fetchedAt"].is_string());
    sim.reset_stats();
    let (_, again) = app.get_json(&path, &token).await;
    assert_eq!(sim.stats().total_requests, 0);
    assert_eq!(again["fetchedAt"], body["fetchedAt"]);

    let (_, _) = app
        .get_json(&format!("{ONE}?stripeid={}&max_age=0", ids[1]), &token)
        .await;
    let (status, history) = app
        .get_json(&format!("{HISTORY}?stripeid={}", ids[1]), &token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(history.as_array().map(Vec::len), Some(2));

    sim.fail_account(&ids[2], 503);
    let (status, failed) = app
        .get_json(&format!("{ONE}?stripeid={}&max_age=0", ids[2]), &token)
        .await;
    assert_eq!(status, 502);
    assert_eq!(failed["code"], "stripe-request-failed");
    assert_eq!(failed["failure"]["status"], 503);

    for (query, code) in [
        ("?stripeid=nope", "invalid-stripeid"),
        ("?stripeid=acct_1Nope", "invalid-stripeid"),
    ] {
        let (_, body) = app.get_json(&format!("{ONE}{query}"), &token).await;
        assert_eq!(body["code"], code);
    }
    let (status, body) = app
        .get_json(&format!("{BALANCES}?max_age=soon"), &token)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-max-age"))
    );
}

#[tokio::test]
async fn an_owners_aggregate_sums_only_that_owners_accounts() {
    let (app, sim, ids, token) = platform_setup(30).await;
    let owner_of = |id: &String| {
        sim.account_object(id)
            .and_then(|o| o["metadata"]["accountid"].as_str().map(str::to_owned))
    };
    let owner = ids.iter().filter_map(owner_of).next().expect("an owner");
    let owned: Vec<String> = ids
        .iter()
        .filter(|id| owner_of(id).as_deref() == Some(owner.as_str()))
        .cloned()
        .collect();
    let (_, body) = app
        .get_json(&format!("{BALANCES}?max_age=0&accountid={owner}"), &token)
        .await;
    assert_eq!(body["accounts"]["total"], owned.len());
    assert_eq!(reported_totals(&body), expected_totals(&sim, &owned));
    let (status, body) = app
        .get_json(&format!("{BALANCES}?accountid=nobody"), &token)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-accountid"))
    );
}

#[tokio::test]
async fn a_tenant_never_sees_another_tenants_balances() {
    let (app, sim, ids, token) = platform_setup(4).await;
    app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    let other_sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    app.add_sim_platform_tenant("globex", &other_sim, 0).await;
    let globex = app.token(Role::Admin, Some("globex")).await;
    let (_, body) = app
        .get_json(&format!("{BALANCES}?max_age=3600"), &globex)
        .await;
    assert_eq!(body["accounts"]["total"], 0);
    assert_eq!(body["totals"], serde_json::json!([]));
    let theirs = app
        .get_json(&format!("{ONE}?stripeid={}", ids[0]), &globex)
        .await;
    let missing = app
        .get_json(&format!("{ONE}?stripeid=acct_1Missing"), &globex)
        .await;
    assert_eq!(theirs, missing);
    let theirs = app
        .get_json(&format!("{HISTORY}?stripeid={}", ids[0]), &globex)
        .await;
    assert_eq!(theirs.1["code"], "invalid-stripeid");
    drop(sim);
}

#[tokio::test]
async fn a_removed_account_leaves_the_totals_and_counts_again_once_relisted() {
    let (app, sim, ids, token) = platform_setup(5).await;
    let tenant_id = tally::store::tenants::find_by_slug(&app.pool, "acme")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;

    let removed = vec![crate::helpers::acct(&ids[0])];
    let mut tx = app.pool.begin().await.expect("tx");
    tally::store::accounts::mark_removed(&mut *tx, tenant_id, &removed, chrono::Utc::now(), None)
        .await
        .expect("mark");
    tally::store::snapshots::forget_latest(&mut tx, tenant_id, &removed)
        .await
        .expect("forget");
    tx.commit().await.expect("commit");
    let (_, body) = app
        .get_json(&format!("{BALANCES}?max_age=3600"), &token)
        .await;
    assert_eq!(reported_totals(&body), expected_totals(&sim, &ids[1..]));
    assert_eq!(body["accounts"]["total"], 4);

    // A balance arriving for the removed account (a late webhook) is history only.
    let mut conn = app.pool.acquire().await.expect("conn");
    let recorded = record_sim_balance(
        &mut conn,
        tenant_id,
        &sim,
        &ids[0],
        chrono::Utc::now(),
        "webhook",
    )
    .await;
    assert!(matches!(
        recorded,
        tally::store::snapshots::Recorded::HistoryOnly(_)
    ));

    // Relisted by a sync: the next aggregate fetches it and the totals are whole again.
    app.store_sim_accounts(tenant_id, &sim, &ids[..1], None)
        .await;
    let (_, body) = app
        .get_json(&format!("{BALANCES}?max_age=3600"), &token)
        .await;
    assert_eq!(
        body["accounts"],
        serde_json::json!({"total": 5, "ok": 5, "failed": 0, "stale": 0})
    );
    assert_eq!(reported_totals(&body), expected_totals(&sim, &ids));
}

#[tokio::test]
async fn a_key_sealed_under_another_master_key_is_explained_not_leaked() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app().await;
    let other_master =
        tally::crypto::MasterKey::from_base64(&tally::crypto::MasterKey::generate_base64())
            .expect("key");
    let key = sim.keys().platforms[0].key.clone();
    let spec = tally::commands::tenant::TenantSpec {
        api_base: Some(sim.base_url()),
        ..tally::commands::tenant::TenantSpec::new("acme", secrecy::SecretString::from(key.clone()))
    };
    let view = tally::commands::tenant::add(&app.pool, &other_master, &app.settings, spec)
        .await
        .expect("added");
    let tenant_id = tally::store::tenants::find_by_slug(&app.pool, &view.slug)
        .await
        .expect("q")
        .expect("t")
        .id;
    app.store_sim_accounts(tenant_id, &sim, &sim.keys().platforms[0].accounts, None)
        .await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let response = app.get(&format!("{BALANCES}?max_age=0"), &token).await;
    assert_eq!(response.status(), 500);
    let text = response.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["code"], "tenant-credential-unusable");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("TALLY_MASTER_KEY"),
        "{body}"
    );
    assert!(!text.contains(&key));
    // Every authenticated endpoint that needs the key says the same.
    let admin = app.token(Role::Admin, Some("acme")).await;
    let account = &sim.keys().platforms[0].accounts[0];
    for (method, path) in [
        ("POST", "/api/administrator/connect/sync".to_owned()),
        (
            "POST",
            "/api/administrator/connect/balances/refreshes".to_owned(),
        ),
        ("GET", format!("{ONE}?stripeid={account}&max_age=0")),
    ] {
        let request = match method {
            "POST" => app.client.post(format!("{}{path}", app.address)),
            _ => app.client.get(format!("{}{path}", app.address)),
        };
        let response = request.bearer_auth(&admin).send().await.expect("sent");
        assert_eq!(response.status(), 500, "{method} {path}");
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            body["code"], "tenant-credential-unusable",
            "{method} {path}"
        );
        assert!(!text.contains(&key));
    }
    assert_eq!(sim.stats().total_requests, 0, "nothing was sent to Stripe");
}

#[tokio::test]
async fn a_failure_reads_the_same_in_the_aggregate_the_account_and_its_history() {
    let (app, sim, ids, token) = platform_setup(3).await;
    sim.revoke(&ids[0]);
    let (_, body) = app.get_json(&format!("{BALANCES}?max_age=0"), &token).await;
    let aggregate = body["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .find(|f| f["stripeid"] == ids[0].as_str())
        .cloned()
        .expect("the revoked account is listed");
    // Everything Stripe said is kept, the documentation link too.
    assert_eq!(aggregate["code"], "account_invalid");
    assert_eq!(
        aggregate["docUrl"],
        "https://stripe.com/docs/error-codes/account-invalid"
    );
    assert!(aggregate.as_object().expect("object").contains_key("param"));

    let (status, one) = app
        .get_json(&format!("{ONE}?stripeid={}", ids[0]), &token)
        .await;
    assert_eq!(status, 502);
    let (_, history) = app
        .get_json(&format!("{HISTORY}?stripeid={}", ids[0]), &token)
        .await;
    let stored = &history[0]["error"];
    for key in [
        "status",
        "type",
        "code",
        "message",
        "param",
        "docUrl",
        "requestId",
        "hint",
    ] {
        assert_eq!(
            one["failure"][key], aggregate[key],
            "{key}: account vs aggregate"
        );
        assert_eq!(stored[key], aggregate[key], "{key}: history vs aggregate");
    }
    assert_eq!(one["failure"]["lastGoodAt"], aggregate["lastGoodAt"]);
}

#[tokio::test]
async fn csv_text_cells_never_start_a_formula_and_amounts_stay_plain_numbers() {
    let app = spawn_app().await;
    let tenant = app.add_tenant("acme").await;
    let formula = "=HYPERLINK(\"http://evil.example\",\"open\")";
    app.store_accounts(
        tenant,
        &[
            crate::helpers::account_object("acct_1Csv", 2, Some(formula)),
            crate::helpers::account_object("acct_1Unread", 1, Some("+1-555-0100")),
        ],
    )
    .await;
    let balance = serde_json::json!({
        "object": "balance", "livemode": false,
        "available": [{"amount": -40161, "currency": "usd"}],
        "pending": [{"amount": 0, "currency": "usd"}],
    });
    let parsed: tally::stripe::Balance =
        serde_json::from_value(balance.clone()).expect("a balance");
    let totals = tally::money::Totals::from_balance(&parsed).expect("summed");
    let mut conn = app.pool.acquire().await.expect("connection");
    tally::store::snapshots::record(
        &mut conn,
        tenant,
        &crate::helpers::acct("acct_1Csv"),
        chrono::Utc::now(),
        "fetch",
        tally::store::snapshots::SnapshotOutcome::Balance {
            raw: &balance,
            totals: &totals,
        },
    )
    .await
    .expect("stored");
    drop(conn);
    let token = app.token(Role::Reader, Some("acme")).await;

    let response = app
        .client
        .get(format!("{}{BALANCES}", app.address))
        .bearer_auth(&token)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: BTreeMap<String, BTreeMap<String, String>> = reader
        .deserialize::<BTreeMap<String, String>>()
        .map(|row| row.expect("a CSV row"))
        .map(|row| (row["stripeid"].clone(), row))
        .collect();
    let read = &rows["acct_1Csv"];
    assert_eq!(read["accountid"], format!("'{formula}"), "{text}");
    assert_eq!(read["available"], "-40161", "amounts stay numbers: {text}");
    assert_eq!(read["pending"], "0");
    assert_eq!(rows["acct_1Unread"]["accountid"], "'+1-555-0100", "{text}");
    // No cell anywhere starts a formula.
    for row in rows.values() {
        for (column, cell) in row {
            let amount = [
                "available",
                "pending",
                "connect_reserved",
                "instant_available",
            ]
            .contains(&column.as_str());
            assert!(
                amount || !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{column}: {cell:?}"
            );
        }
    }
    // The JSON keeps the owner id as Stripe gave it.
    let (_, records) = app
        .get_json("/api/administrator/connect/stripe-accounts", &token)
        .await;
    assert!(records
        .as_array()
        .expect("records")
        .iter()
        .any(|record| record["accountid"] == formula));
}

#[tokio::test]
async fn stale_counts_accounts_never_fetched_and_those_older_than_the_interval() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 3,
        ..SimConfig::default()
    })
    .await;
    // An API-only replica: nothing fetches behind the test's back.
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.refresh.worker = false;
        settings.refresh.interval_secs = 3600;
    })
    .await;
    let tenant_id = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant_id, &sim, &ids, None).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let mut conn = app.pool.acquire().await.expect("conn");
    for id in &ids[..2] {
        record_sim_balance(&mut conn, tenant_id, &sim, id, chrono::Utc::now(), "fetch").await;
    }
    let accounts = |body: &Value| {
        (
            body["accounts"]["total"].as_i64(),
            body["accounts"]["ok"].as_i64(),
            body["accounts"]["stale"].as_i64(),
        )
    };

    // Both balances are younger than the interval: only the account never fetched is stale.
    let (status, body) = app.get_json(BALANCES, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(accounts(&body), (Some(3), Some(2), Some(1)), "{body}");
    let totals = body["totals"].clone();
    assert!(!totals.as_array().expect("totals").is_empty(), "{body}");

    // One balance is two hours old, older than the interval: it is stale too.
    sqlx::query(
        "UPDATE latest_balances SET fetched_at = now() - interval '2 hours'
         WHERE tenant_id = $1 AND stripeid = $2",
    )
    .bind(tenant_id)
    .bind(&ids[0])
    .execute(&app.pool)
    .await
    .expect("age one balance");
    let (_, body) = app.get_json(BALANCES, &token).await;
    assert_eq!(accounts(&body), (Some(3), Some(2), Some(2)), "{body}");
    // Counted with the totals in one read, the totals are the same.
    assert_eq!(body["totals"], totals, "{body}");
    assert_eq!(body["failures"].as_array().map(Vec::len), Some(1), "{body}");

    // One owner's aggregate counts its own stale accounts.
    let owner: String = sqlx::query_scalar(
        "SELECT accountid FROM stripe_accounts WHERE tenant_id = $1 AND stripeid = $2",
    )
    .bind(tenant_id)
    .bind(&ids[0])
    .fetch_one(&app.pool)
    .await
    .expect("owner");
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_accounts WHERE tenant_id = $1 AND accountid = $2",
    )
    .bind(tenant_id)
    .bind(&owner)
    .fetch_one(&app.pool)
    .await
    .expect("owned");
    let (status, body) = app
        .get_json(&format!("{BALANCES}?accountid={owner}"), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accounts"]["total"].as_i64(), Some(owned), "{body}");
    let owned_stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_accounts a
         LEFT JOIN latest_balances l ON l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid
         WHERE a.tenant_id = $1 AND a.accountid = $2
           AND (l.fetched_at IS NULL OR l.fetched_at < now() - interval '1 hour')",
    )
    .bind(tenant_id)
    .bind(&owner)
    .fetch_one(&app.pool)
    .await
    .expect("owned stale");
    assert!(owned_stale >= 1, "the aged account is the owner's");
    assert_eq!(
        body["accounts"]["stale"].as_i64(),
        Some(owned_stale),
        "{body}"
    );
}

/// The stale part of a tenant as the kept minutes count it, against a scan of every
/// latest balance, at cutoffs on and between minute boundaries, after fetches that
/// move accounts between minutes, a failure and a removal.
#[tokio::test]
async fn the_kept_minutes_count_stale_accounts_exactly_as_a_scan_would() {
    use chrono::{Duration as Age, DurationRound, Utc};
    use tally::freshness::Requirement;
    use tally::store::refreshes::RefreshScope;
    use tally::store::snapshots::SnapshotOutcome;

    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 6,
        ..SimConfig::default()
    })
    .await;
    let app = crate::helpers::spawn_app_with(|settings| settings.refresh.worker = false).await;
    let tenant_id = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant_id, &sim, &ids, None).await;
    let minute = Utc::now().duration_trunc(Age::minutes(1)).expect("minute");
    let mut conn = app.pool.acquire().await.expect("conn");
    let failure = tally::domain::FetchFailure::default();
    let mut record = async |id: &str, at: chrono::DateTime<Utc>, ok: bool| {
        if ok {
            record_sim_balance(&mut conn, tenant_id, &sim, id, at, "fetch").await;
        } else {
            tally::store::snapshots::record(
                &mut conn,
                tenant_id,
                &crate::helpers::acct(id),
                at,
                "fetch",
                SnapshotOutcome::Error(&failure),
            )
            .await
            .expect("recorded");
        }
    };
    // Accounts 0-4 fetched at, around and between minute boundaries; 5 never.
    let seconds = |s: i64| minute - Age::seconds(s);
    record(&ids[0], seconds(600), true).await;
    record(&ids[1], seconds(590), true).await;
    record(&ids[2], seconds(180), false).await;
    record(&ids[3], seconds(175), true).await;
    record(&ids[4], seconds(60), true).await;

    let check = async |label: &str| {
        for cutoff in [0, 30, 59, 60, 61, 175, 176, 180, 300, 590, 600, 601, 3600] {
            let cutoff = seconds(cutoff);
            let kept = tally::store::refreshes::progress(
                &app.pool,
                tenant_id,
                &RefreshScope::Tenant,
                &Requirement::fetched_since(cutoff),
            )
            .await
            .expect("progress");
            let (ok, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE ok AND fetched_at >= $2),
                        count(*) FILTER (WHERE NOT ok AND fetched_at >= $2)
                 FROM latest_balances WHERE tenant_id = $1",
            )
            .bind(tenant_id)
            .bind(cutoff)
            .fetch_one(&app.pool)
            .await
            .expect("scan");
            assert_eq!(
                (kept.ok, kept.failed),
                (ok, failed),
                "{label}, cutoff {cutoff}"
            );
        }
        let empty: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM latest_balance_minutes WHERE ok = 0 AND failed = 0",
        )
        .fetch_one(&app.pool)
        .await
        .expect("empty minutes");
        assert_eq!(empty, 0, "{label}: no empty minute is kept");
    };
    check("first fetches").await;

    // Fetched again: accounts leave their old minutes (one of them now empty), a
    // failure becomes a balance and a balance a failure.
    record(&ids[0], seconds(30), true).await;
    record(&ids[2], seconds(29), true).await;
    record(&ids[3], seconds(28), false).await;
    record(&ids[5], seconds(1), true).await;
    check("fetched again").await;

    // A removed account's latest balance is forgotten.
    let mut tx = app.pool.begin().await.expect("tx");
    tally::store::snapshots::forget_latest(&mut tx, tenant_id, &[crate::helpers::acct(&ids[1])])
        .await
        .expect("forget");
    tx.commit().await.expect("commit");
    check("after a removal").await;
}
