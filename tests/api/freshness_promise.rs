//! What `max_age` promises (DESIGN §5, README "Balances"): an answer to `max_age = m`
//! holds only accounts tried within `m` of the moment the request arrived, or it is a
//! 202 with the refresh to poll; a succeeded refresh's `result` answers with what it
//! tried, so a client that follows it never loops; a refresh that can no longer finish
//! ends `failed` with the reason.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally::domain::Role;
use tally::sim::{SimConfig, SimHandle};

use crate::helpers::{spawn_app_with, spawn_sim, TestApp};

const BALANCES: &str = "/api/administrator/connect/balances";
const BALANCE: &str = "/api/administrator/connect/stripe-account/balance";
const REFRESHES: &str = "/api/administrator/connect/balances/refreshes";

/// The `acme` tenant on the simulator's first platform at `rate` per second, with
/// every account of that platform stored. Returns the key it uses.
async fn tenant_on(app: &TestApp, sim: &SimHandle, rate: u32) -> String {
    crate::refresh::tenant_on(app, sim, "acme", rate).await;
    sim.keys().platforms[0].key.clone()
}

fn time(body: &Value, key: &str) -> DateTime<Utc> {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
        .parse()
        .expect("RFC 3339")
}

/// Polls `location` (a refresh) until it is no longer running.
async fn until_finished(app: &TestApp, location: &str, token: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = app.get(location, token).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        let body: Value = response.json().await.expect("json");
        if body["status"] != "running" {
            // Asked again for the caller, with its headers.
            let again = app.get(location, token).await;
            assert_eq!(headers.get("location"), again.headers().get("location"));
            return again;
        }
        assert!(body["result"].is_null(), "no result while running: {body}");
        assert!(Instant::now() < deadline, "still running: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_just_succeeded_does_not_answer_a_later_max_age() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 4,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, 20).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let account = sim.keys().platforms[0].accounts[0].clone();

    let (status, body) = app
        .get_json(&format!("{BALANCES}?max_age=0&wait=25"), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");

    // Stripe stops answering: nothing newer than what is stored can be had.
    sim.set_knobs(|knobs| knobs.error_rate = 1.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked_at = Utc::now();
    let response = app
        .get(&format!("{BALANCES}?max_age=0&wait=0"), &token)
        .await;
    assert_eq!(
        response.status(),
        202,
        "balances tried before the request arrived do not answer max_age=0: {:?}",
        response.text().await
    );

    // One account, waiting: the answer is its new try (here a failure), never the
    // balance read before the request.
    let (status, body) = app
        .get_json(
            &format!("{BALANCE}?stripeid={account}&max_age=0&wait=25"),
            &token,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("stripe-request-failed")),
        "{body}"
    );
    let tried_at = time(&body["failure"], "fetchedAt");
    assert!(
        tried_at >= asked_at - chrono::Duration::milliseconds(1),
        "tried at {tried_at}, asked at {asked_at}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_follows_the_refresh_gets_its_result_and_never_loops() {
    // 30 accounts at 10/s take about 3 s: longer than the max_age of 1 s asked.
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 30,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, 10).await;
    let token = app.token(Role::Reader, Some("acme")).await;

    let response = app
        .get(&format!("{BALANCES}?max_age=1&wait=0"), &token)
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    let refresh: Value = response.json().await.expect("json");
    let id = refresh["id"].as_str().expect("id").to_owned();
    assert!(refresh["result"].is_null(), "{refresh}");

    // Its result, asked for while it runs, is the same refresh to poll.
    let running = app
        .get(&format!("{BALANCES}?refresh={id}&wait=0"), &token)
        .await;
    let running_status = running.status().as_u16();
    let running: Value = running.json().await.expect("json");
    if running_status == 202 {
        assert_eq!(running["id"], id.as_str(), "{running}");
    }

    let finished = until_finished(&app, &location, &token).await;
    let result = finished.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    let finished: Value = finished.json().await.expect("json");
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["result"], result.as_str());
    assert_eq!(result, format!("{BALANCES}?refresh={id}"));

    // Following it answers 200 with every account tried since the refresh's cutoff:
    // no new refresh, however long this one took.
    for _ in 0..2 {
        let (status, body) = app.get_json(&result, &token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        assert_eq!(body["accounts"]["ok"], 30, "{body}");
        assert!(time(&body, "oldestFetchedAt") >= time(&finished, "cutoff"));
        let mut expected = std::collections::BTreeMap::new();
        for account in &sim.keys().platforms[0].accounts {
            let balance = sim.balance_of(account).expect("balance");
            for entry in balance["available"].as_array().expect("available") {
                *expected
                    .entry(entry["currency"].as_str().expect("c").to_owned())
                    .or_insert(0i64) += entry["amount"].as_i64().expect("amount");
            }
        }
        for row in body["totals"].as_array().expect("totals") {
            let currency = row["currency"].as_str().expect("currency");
            assert_eq!(
                row["available"].as_i64(),
                Some(expected.get(currency).copied().unwrap_or(0)),
                "{currency}: {body}"
            );
        }
    }
    let polls: i64 =
        sqlx::query_scalar("SELECT count(*) FROM balance_refreshes WHERE trigger <> 'schedule'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(polls, 1, "following the result started no refresh");

    // Asked of the wrong endpoint, with max_age, or for no refresh: a clear 4xx.
    let account = &sim.keys().platforms[0].accounts[0];
    for (path, status, code) in [
        (format!("{BALANCES}?refresh=nope"), 400, "invalid-refreshid"),
        (
            format!("{BALANCES}?refresh=6f1c2b9e-0000-4000-8000-000000000000"),
            404,
            "invalid-refreshid",
        ),
        (
            format!("{BALANCES}?refresh={id}&max_age=5"),
            400,
            "invalid-scope",
        ),
        (
            format!("{BALANCE}?stripeid={account}&refresh={id}"),
            400,
            "invalid-scope",
        ),
    ] {
        let (got, body) = app.get_json(&path, &token).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_refresh_has_its_result_at_the_accounts_balance() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 2,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    tenant_on(&app, &sim, 20).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let account = sim.keys().platforms[0].accounts[1].clone();

    let response = app
        .client
        .post(format!("{}{REFRESHES}?stripeid={account}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    let finished: Value = until_finished(&app, &location, &admin)
        .await
        .json()
        .await
        .expect("json");
    let result = finished["result"].as_str().expect("result").to_owned();
    assert_eq!(
        result,
        format!(
            "{BALANCE}?stripeid={account}&refresh={}",
            finished["id"].as_str().expect("id")
        )
    );
    let (status, body) = app.get_json(&result, &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stripeid"], account.as_str());
    assert!(time(&body, "fetchedAt") >= time(&finished, "cutoff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_ends_failed_with_the_reason_when_stripe_rejects_the_key() {
    let sim = spawn_sim(SimConfig {
        platforms: 1,
        accounts_per_platform: 40,
        latency_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_with(|_| {}).await;
    let key = tenant_on(&app, &sim, 10).await;
    let token = app.token(Role::Reader, Some("acme")).await;

    // The key is rolled on Stripe's side and expires.
    sim.expire_key(&key);
    let response = app
        .get(&format!("{BALANCES}?max_age=0&wait=0"), &token)
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("text")
        .to_owned();
    let finished: Value = until_finished(&app, &location, &token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(finished["status"], "failed", "{finished}");
    assert!(
        finished["error"]
            .as_str()
            .is_some_and(|error| error.contains("rejected the tenant's key")),
        "{finished}"
    );
    assert!(finished["result"].is_null(), "{finished}");
    assert!(
        finished["done"].as_i64().expect("done") < 40,
        "it stopped instead of trying every account with a dead key: {finished}"
    );

    // Its result says why, as a poll waiting on it does.
    let id = finished["id"].as_str().expect("id");
    let (status, body) = app
        .get_json(&format!("{BALANCES}?refresh={id}"), &token)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("tenant-credential-unusable")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("tally tenant set-key")),
        "{body}"
    );
}
