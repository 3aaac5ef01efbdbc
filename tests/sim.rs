//! The Stripe simulator over real HTTP: what a Stripe client pointed at it sees.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;
use tally::sim::{self, SimConfig, SimHandle};

const VERSION: &str = "2025-04-30.basil";

async fn spawn() -> SimHandle {
    sim::spawn(SimConfig::default())
        .await
        .expect("the simulator starts")
}

/// One answer: status, headers, JSON body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or_default()
    }
    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
    fn ids(&self) -> Vec<String> {
        self.body["data"]
            .as_array()
            .expect("a list body")
            .iter()
            .map(|a| a["id"].as_str().expect("an id").to_string())
            .collect()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let response = req.send().await.expect("the simulator answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// GET `path` with a bearer key and extra headers.
async fn get(sim: &SimHandle, path: &str, key: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req).await
}

fn platform_key(sim: &SimHandle, p: usize) -> String {
    sim.keys().platforms[p].key.clone()
}

/// Every page of `GET /v1/accounts` for `key`, following `starting_after`.
async fn walk(sim: &SimHandle, key: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = format!("/v1/accounts?limit={limit}");
    loop {
        let page = get(sim, &path, key, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let batch = page.ids();
        ids.extend(batch.iter().cloned());
        match (page.body["has_more"].as_bool(), batch.last()) {
            (Some(true), Some(last)) => {
                path = format!("/v1/accounts?limit={limit}&starting_after={last}")
            }
            _ => return ids,
        }
    }
}

#[tokio::test]
async fn list_defaults_to_ten_newest_first_with_stripe_shape() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let page = get(&sim, "/v1/accounts", &key, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["object"], "list");
    assert_eq!(page.body["url"], "/v1/accounts");
    assert_eq!(page.body["has_more"], true);
    let data = page.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 10);
    let created: Vec<i64> = data
        .iter()
        .map(|a| a["created"].as_i64().expect("created"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(data[0]["object"], "account");
    assert!(data[0]["metadata"].is_object());
}

#[tokio::test]
async fn starting_after_walks_every_account_exactly_once() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let walked = walk(&sim, &key, 7).await;
    let mut expected = sim.keys().platforms[0].accounts.clone();
    expected.reverse();
    assert_eq!(walked, expected);
    assert_eq!(walked.iter().collect::<HashSet<_>>().len(), walked.len());
}

#[tokio::test]
async fn ending_before_returns_the_previous_page() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let first = get(&sim, "/v1/accounts?limit=5", &key, &[]).await.ids();
    let last = &first[4];
    let second = get(
        &sim,
        &format!("/v1/accounts?limit=5&starting_after={last}"),
        &key,
        &[],
    )
    .await
    .ids();
    let back = get(
        &sim,
        &format!("/v1/accounts?limit=5&ending_before={}", second[0]),
        &key,
        &[],
    )
    .await;
    assert_eq!(back.ids(), first);
    assert_eq!(
        back.body["has_more"], false,
        "nothing is newer than page one"
    );
}

#[tokio::test]
async fn list_parameters_are_validated_like_stripe() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    for bad in ["limit=0", "limit=101", "limit=ten"] {
        let a = get(&sim, &format!("/v1/accounts?{bad}"), &key, &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.error_type(), "invalid_request_error");
        assert_eq!(a.body["error"]["param"], "limit");
    }
    let a = get(&sim, "/v1/accounts?limit=100", &key, &[]).await;
    assert_eq!(a.ids().len(), 50);
    assert_eq!(a.body["has_more"], false);

    let ids = &sim.keys().platforms[0].accounts;
    let both = format!(
        "/v1/accounts?starting_after={}&ending_before={}",
        ids[1], ids[2]
    );
    let a = get(&sim, &both, &key, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = get(&sim, "/v1/accounts?starting_after=acct_1nope", &key, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_code(), "resource_missing");
    assert_eq!(a.body["error"]["param"], "starting_after");
    assert!(a.message().contains("acct_1nope"));
}

#[tokio::test]
async fn created_filter_uses_form_style_brackets() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let all = get(&sim, "/v1/accounts?limit=100", &key, &[]).await;
    let t = all.body["data"][20]["created"].as_i64().expect("created");
    let a = get(
        &sim,
        &format!("/v1/accounts?limit=100&created%5Bgte%5D={t}"),
        &key,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let data = a.body["data"].as_array().expect("data");
    assert!(data.len() >= 21);
    assert!(data.iter().all(|x| x["created"].as_i64() >= Some(t)));
    let a = get(
        &sim,
        &format!("/v1/accounts?created[lt]={t}&limit=100"),
        &key,
        &[],
    )
    .await;
    assert_eq!(a.ids().len() + data.len(), 50);
}

#[tokio::test]
async fn bearer_and_basic_auth_work_and_bad_keys_get_401_masked() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    assert_eq!(
        get(&sim, "/v1/balance", &key, &[]).await.status,
        StatusCode::OK
    );

    let basic = reqwest::Client::new()
        .get(format!("{}/v1/balance", sim.base_url()))
        .basic_auth(&key, None::<&str>);
    let a = send(basic).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["object"], "balance");

    let bad = format!("{}wxyz", &key[..key.len() - 4]);
    let a = get(&sim, "/v1/balance", &bad, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.error_type(), "invalid_request_error");
    assert!(a
        .message()
        .starts_with("Invalid API Key provided: sk_test_*"));
    assert!(a.message().ends_with("wxyz"));
    assert!(!a.message().contains(&bad[8..20]), "the key is masked");

    let none = send(reqwest::Client::new().get(format!("{}/v1/balance", sim.base_url()))).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.message().contains("You did not provide an API key"));
}

#[tokio::test]
async fn platform_key_header_rules() {
    let sim = spawn().await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let mine = &keys.platforms[0].accounts[3];
    let foreign = &keys.platforms[1].accounts[3];

    let a = get(&sim, "/v1/balance", key, &[("Stripe-Account", mine)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(Some(&a.body), sim.balance_of(mine).as_ref());

    let own = get(&sim, "/v1/balance", key, &[]).await;
    assert_eq!(
        Some(&own.body),
        sim.balance_of(&keys.platforms[0].id).as_ref()
    );

    let a = get(&sim, "/v1/balance", key, &[("Stripe-Account", foreign)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error_type(), "invalid_request_error");
    assert_eq!(a.error_code(), "account_invalid");
    let last4 = &key[key.len() - 4..];
    let expected_tail = format!(
        "{last4}' does not have access to account '{foreign}' (or that account does not exist). \
         Application access may have been revoked."
    );
    assert!(
        a.message().starts_with("The provided key 'sk_test_*"),
        "{}",
        a.message()
    );
    assert!(a.message().ends_with(&expected_tail), "{}", a.message());

    // Stripe-Context supersedes Stripe-Account: a platform key may name its own
    // connected account with it, bare or under itself; not a foreign one.
    let a = get(&sim, "/v1/balance", key, &[("Stripe-Context", mine)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let under_self = format!("{}/{mine}", sim.keys().platforms[0].id);
    let a = get(&sim, "/v1/balance", key, &[("Stripe-Context", &under_self)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = get(&sim, "/v1/balance", key, &[("Stripe-Context", foreign)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let both = [
        ("Stripe-Account", mine.as_str()),
        ("Stripe-Context", mine.as_str()),
    ];
    let a = get(&sim, "/v1/balance", key, &both).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    assert_eq!(sim.stats().header_violations, 3);
}

#[tokio::test]
async fn organization_key_header_rules() {
    let sim = spawn().await;
    let keys = sim.keys().clone();
    let org = &keys.organization_key;
    let p0 = &keys.platforms[0].id;
    let x = &keys.platforms[0].accounts[7];
    let other = &keys.platforms[1].accounts[7];
    let standalone = &keys.org_accounts[0];
    let v = ("Stripe-Version", VERSION);

    // Accounts directly in the org, and connected accounts through their platform.
    for (context, account) in [
        (p0.clone(), p0),
        (standalone.clone(), standalone),
        (format!("{p0}/{x}"), x),
    ] {
        let a = get(&sim, "/v1/balance", org, &[v, ("Stripe-Context", &context)]).await;
        assert_eq!(a.status, StatusCode::OK, "{context}: {}", a.body);
        assert_eq!(Some(&a.body), sim.balance_of(account).as_ref(), "{context}");
    }

    // The classic failure: a bare connected account id.
    let a = get(&sim, "/v1/balance", org, &[v, ("Stripe-Context", x)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error_type(), "invalid_request_error");
    assert!(
        a.message().starts_with("Permission denied."),
        "{}",
        a.message()
    );
    assert!(a.message().contains(x.as_str()));
    assert!(a.message().contains("Stripe-Context"));

    // A connected account under the wrong platform.
    let wrong = format!("{p0}/{other}");
    let a = get(&sim, "/v1/balance", org, &[v, ("Stripe-Context", &wrong)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    let a = get(&sim, "/v1/balance", org, &[("Stripe-Context", p0)]).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "Stripe-Version is required"
    );
    assert_eq!(a.error_type(), "invalid_request_error");

    let a = get(&sim, "/v1/balance", org, &[v, ("Stripe-Account", x)]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = get(&sim, "/v1/balance", org, &[v]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "a context is required");

    let both = [
        v,
        ("Stripe-Context", p0.as_str()),
        ("Stripe-Account", x.as_str()),
    ];
    let a = get(&sim, "/v1/balance", org, &both).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    assert_eq!(sim.stats().header_violations, 6);

    // Listing with the org key: Stripe-Context names the platform.
    let a = get(
        &sim,
        "/v1/accounts?limit=100",
        org,
        &[v, ("Stripe-Context", p0)],
    )
    .await;
    let mut expected = keys.platforms[0].accounts.clone();
    expected.reverse();
    assert_eq!(a.ids(), expected);
    assert_eq!(a.header("stripe-version"), VERSION);
}

#[tokio::test]
async fn retrieve_account_by_id() {
    let sim = spawn().await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let x = &keys.platforms[0].accounts[0];
    let a = get(&sim, &format!("/v1/accounts/{x}"), key, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(Some(&a.body), sim.account_object(x).as_ref());
    for field in [
        "business_profile",
        "capabilities",
        "controller",
        "settings",
        "requirements",
    ] {
        assert!(a.body[field].is_object(), "{field}");
    }
    let foreign = &keys.platforms[1].accounts[0];
    let a = get(&sim, &format!("/v1/accounts/{foreign}"), key, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error_code(), "account_invalid");
}

#[tokio::test]
async fn every_response_has_a_unique_request_id_tied_to_the_error() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let answers = [
        get(&sim, "/v1/balance", &key, &[]).await,
        get(&sim, "/v1/balance", "sk_test_bogus", &[]).await,
        get(&sim, "/v1/nothing", &key, &[]).await,
        get(&sim, "/v1/accounts?limit=0", &key, &[]).await,
    ];
    let mut seen = HashSet::new();
    for a in &answers {
        let id = a.header("request-id");
        assert!(id.starts_with("req_"), "{id}");
        assert!(seen.insert(id.to_string()), "unique");
        assert!(a.header("content-type").starts_with("application/json"));
        if a.status != StatusCode::OK {
            let url = a.body["error"]["request_log_url"]
                .as_str()
                .expect("log url");
            assert!(url.starts_with(&format!("https://dashboard.stripe.com/test/logs/{id}")));
        }
    }
    let unknown = &answers[2];
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown
        .message()
        .starts_with("Unrecognized request URL (GET: /v1/nothing)."));
}

#[tokio::test]
async fn rate_limit_answers_429_and_is_counted() {
    let sim = spawn().await;
    sim.set_knobs(|k| k.rate_limit = 5);
    let key = platform_key(&sim, 0);
    let requests = (0..20).map(|_| get(&sim, "/v1/balance", &key, &[]));
    let answers = futures::future::join_all(requests).await;
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(limited.len() >= 15, "{} limited", limited.len());
    let a = limited[0];
    assert_eq!(a.error_code(), "rate_limit");
    assert_eq!(a.header("stripe-should-retry"), "true");

    let stats = sim.stats();
    assert_eq!(stats.rate_limited, limited.len() as u64);
    let platform = &sim.keys().platforms[0].id;
    assert!(stats.max_rate_per_key[platform] >= 20);
    assert!(stats.max_rate_per_key.keys().all(|k| !k.starts_with("sk_")));
}

#[tokio::test]
async fn error_rate_one_answers_500_api_error() {
    let sim = spawn().await;
    sim.set_knobs(|k| k.error_rate = 1.0);
    let a = get(&sim, "/v1/balance", &platform_key(&sim, 0), &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.error_type(), "api_error");
    assert_eq!(a.header("stripe-should-retry"), "true");
}

#[tokio::test]
async fn latency_and_concurrency_are_observed() {
    let sim = spawn().await;
    sim.set_knobs(|k| k.latency_ms = 150);
    let key = platform_key(&sim, 0);
    let started = Instant::now();
    let requests = (0..5).map(|_| get(&sim, "/v1/balance", &key, &[]));
    futures::future::join_all(requests).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(sim.stats().max_in_flight >= 5);
}

#[tokio::test]
async fn revoked_and_failing_accounts() {
    let sim = spawn().await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let gone = &keys.platforms[0].accounts[10];
    sim.revoke(gone);
    let a = get(&sim, "/v1/balance", key, &[("Stripe-Account", gone)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error_code(), "account_invalid");
    let listed = walk(&sim, key, 100).await;
    assert_eq!(listed.len(), 49);
    assert!(!listed.contains(gone));

    let broken = &keys.platforms[0].accounts[11];
    sim.fail_account(broken, 500);
    let a = get(&sim, "/v1/balance", key, &[("Stripe-Account", broken)]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.error_type(), "api_error");
}

async fn create(sim: &SimHandle, key: &str, form: &str, idempotency: Option<&str>) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/accounts", sim.base_url()))
        .bearer_auth(key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    if let Some(k) = idempotency {
        req = req.header("Idempotency-Key", k);
    }
    send(req).await
}

#[tokio::test]
async fn post_accounts_creates_and_honours_idempotency_keys() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let form = "type=express&country=US&metadata[accountid]=acct_owner1";
    let a = create(&sim, &key, form, Some("k1")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["type"], "express");
    assert_eq!(a.body["metadata"]["accountid"], "acct_owner1");
    let id = a.body["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("acct_1") && id.len() == 21);

    let again = create(&sim, &key, form, Some("k1")).await;
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.header("idempotent-replayed"), "true");

    let clash = create(&sim, &key, "type=custom&country=US", Some("k1")).await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
    assert_eq!(clash.error_type(), "idempotency_error");

    let newest = get(&sim, "/v1/accounts?limit=1", &key, &[]).await;
    assert_eq!(newest.ids(), vec![id.clone()]);
    let balance = get(&sim, "/v1/balance", &key, &[("Stripe-Account", &id)]).await;
    assert_eq!(balance.status, StatusCode::OK);

    let bad = create(&sim, &key, "type=weird", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["param"], "type");
}

#[tokio::test]
async fn stats_count_requests_and_reset() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    get(&sim, "/v1/balance", &key, &[]).await;
    get(&sim, "/v1/balance", &key, &[]).await;
    get(&sim, "/v1/accounts", &key, &[]).await;
    get(&sim, "/v1/balance", "sk_test_nope", &[]).await;
    let stats = sim.stats();
    assert_eq!(stats.total_requests, 4);
    assert_eq!(stats.by_status.get(&200), Some(&3));
    assert_eq!(stats.by_status.get(&401), Some(&1));
    assert_eq!(stats.by_path.get("GET /v1/balance"), Some(&3));
    assert_eq!(stats.by_path.get("GET /v1/accounts"), Some(&1));

    let over_http: sim::SimStats = reqwest::get(format!("{}/_sim/stats", sim.base_url()))
        .await
        .expect("stats answer")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(over_http, stats);

    let reset = reqwest::Client::new()
        .post(format!("{}/_sim/reset", sim.base_url()))
        .send()
        .await
        .expect("reset answers");
    assert!(reset.status().is_success());
    assert_eq!(sim.stats().total_requests, 0);
}

#[tokio::test]
async fn same_seed_same_world_different_seed_different_world() {
    let a = spawn().await;
    let b = spawn().await;
    assert_eq!(
        serde_json::to_value(a.keys()).ok(),
        serde_json::to_value(b.keys()).ok()
    );
    let x = &a.keys().platforms[1].accounts[5];
    assert_eq!(a.balance_of(x), b.balance_of(x));
    assert_eq!(a.account_object(x), b.account_object(x));
    let via_http = get(
        &b,
        "/v1/balance",
        &b.keys().platforms[1].key,
        &[("Stripe-Account", x)],
    )
    .await;
    assert_eq!(Some(via_http.body), a.balance_of(x));

    let c = sim::spawn(SimConfig {
        seed: 2,
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    assert_ne!(c.keys().organization_key, a.keys().organization_key);
}

#[tokio::test]
async fn balances_have_stripe_shape_and_variety() {
    let sim = spawn().await;
    let mut negative = false;
    let mut currencies = HashSet::new();
    let mut reserved = false;
    for x in &sim.keys().platforms[0].accounts {
        let b = sim.balance_of(x).expect("balance");
        assert_eq!(b["object"], "balance");
        assert_eq!(b["livemode"], false);
        for entry in b["available"].as_array().expect("available") {
            negative |= entry["amount"].as_i64().is_some_and(|a| a < 0);
            currencies.insert(entry["currency"].as_str().expect("currency").to_string());
            assert!(entry["source_types"]["card"].is_i64());
        }
        reserved |= b.get("connect_reserved").is_some();
    }
    assert!(negative && reserved);
    assert!(currencies.len() >= 4, "{currencies:?}");
}

#[tokio::test]
async fn webhooks_are_signed_like_stripe() {
    let sim = spawn().await;
    let (url, received) = receiver(0).await;

    let x = sim.keys().platforms[0].accounts[2].clone();
    sim.update_account_metadata(&x, "accountid", Some("acct_newowner"));
    let status = sim
        .send_webhook(&url, "whsec_test", "account.updated", &x)
        .await
        .expect("sent");
    assert_eq!(status, StatusCode::OK);

    let (_, signature, body) = received.lock().expect("lock")[0].clone();
    let (t, v1) = signature.split_once(',').expect("t=..,v1=..");
    let t = t.strip_prefix("t=").expect("t=");
    let v1 = v1.strip_prefix("v1=").expect("v1=");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1);
    assert_eq!(
        sim::sign_webhook("whsec_test", t.parse().expect("unix time"), &body),
        signature
    );

    let event: Value = serde_json::from_str(&body).expect("JSON event");
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "account.updated");
    assert_eq!(event["account"], x.as_str());
    assert_eq!(
        event["data"]["object"]["metadata"]["accountid"],
        "acct_newowner"
    );
    assert!(event["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("evt_")));
}

#[tokio::test]
async fn large_worlds_page_quickly() {
    let sim = sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: 50_000,
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let key = platform_key(&sim, 0);
    let deep = &sim.keys().platforms[0].accounts[123];
    let started = Instant::now();
    let a = get(
        &sim,
        &format!("/v1/accounts?limit=100&starting_after={deep}"),
        &key,
        &[],
    )
    .await;
    assert_eq!(a.ids().len(), 100);
    assert!(started.elapsed() < Duration::from_secs(2));
    let added = sim.add_accounts(&sim.keys().platforms[0].id, 3);
    let newest = get(&sim, "/v1/accounts?limit=3", &key, &[]).await.ids();
    assert_eq!(newest, added.into_iter().rev().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Activity: the ledger, balance transactions, webhook endpoints and deliveries.

/// A small world where money moves fast: each second of real time is a simulated minute,
/// and charges settle a simulated minute after they are made.
fn busy() -> SimConfig {
    SimConfig {
        accounts_per_platform: 12,
        activity_per_hour: 600.0,
        clock_speed: 60.0,
        settlement_secs: 60,
        webhook_jitter_ms: 20,
        webhook_late_rate: 0.0,
        webhook_retry_base_ms: 50,
        ..SimConfig::default()
    }
}

async fn spawn_with(config: SimConfig) -> SimHandle {
    sim::spawn(config).await.expect("the simulator starts")
}

/// Polls `check` every 50 ms until it holds; fails after `secs` seconds.
async fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every balance transaction of `account`, newest first, following `starting_after`.
async fn all_txns(sim: &SimHandle, key: &str, account: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut path = "/v1/balance_transactions?limit=100".to_string();
    loop {
        let page = get(sim, &path, key, &[("Stripe-Account", account)]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let data = page.body["data"].as_array().expect("data").clone();
        out.extend(data.iter().cloned());
        match (page.body["has_more"].as_bool(), data.last()) {
            (Some(true), Some(last)) => {
                path = format!(
                    "/v1/balance_transactions?limit=100&starting_after={}",
                    last["id"].as_str().expect("id")
                )
            }
            _ => return out,
        }
    }
}

/// Per currency: (available, pending) from a balance object.
fn balance_sums(balance: &Value) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (part, available) in [("available", true), ("pending", false)] {
        for e in balance[part].as_array().expect("entries") {
            let slot: &mut (i64, i64) = sums
                .entry(e["currency"].as_str().expect("currency").to_string())
                .or_default();
            let amount = e["amount"].as_i64().expect("amount");
            if available {
                slot.0 += amount;
            } else {
                slot.1 += amount;
            }
        }
    }
    sums
}

fn txn_sums(txns: &[Value]) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut sums = std::collections::BTreeMap::new();
    for t in txns {
        let slot: &mut (i64, i64) = sums
            .entry(t["currency"].as_str().expect("currency").to_string())
            .or_default();
        let net = t["net"].as_i64().expect("net");
        match t["status"].as_str() {
            Some("available") => slot.0 += net,
            Some("pending") => slot.1 += net,
            other => panic!("status {other:?}"),
        }
    }
    sums
}

#[tokio::test]
async fn with_activity_every_balance_is_the_sum_of_its_transactions() {
    let sim = spawn_with(busy()).await;
    wait_until(30, "activity", || sim.stats().activities >= 200).await;
    sim.set_clock_paused(true);
    let keys = sim.keys().clone();
    let mut kinds = HashSet::new();
    for platform in &keys.platforms {
        for x in &platform.accounts {
            let balance = get(&sim, "/v1/balance", &platform.key, &[("Stripe-Account", x)]).await;
            assert_eq!(balance.status, StatusCode::OK);
            let txns = all_txns(&sim, &platform.key, x).await;
            let mut from_txns = txn_sums(&txns);
            // A currency with no transaction left shows as 0 in the balance.
            for (currency, amounts) in balance_sums(&balance.body) {
                let summed = from_txns.remove(&currency).unwrap_or_default();
                assert_eq!(summed, amounts, "{x} {currency}");
            }
            assert!(from_txns.is_empty(), "{x}: {from_txns:?}");
            for t in &txns {
                assert_eq!(t["object"], "balance_transaction");
                assert!(t["id"].as_str().is_some_and(|id| id.starts_with("txn_")));
                let (amount, fee, net) =
                    (t["amount"].as_i64(), t["fee"].as_i64(), t["net"].as_i64());
                assert_eq!(net, amount.zip(fee).map(|(a, f)| a - f));
                assert!(t["exchange_rate"].is_null());
                assert!(t["fee_details"].is_array());
                kinds.insert((
                    t["type"].as_str().unwrap_or_default().to_string(),
                    t["reporting_category"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
        }
    }
    for expected in [
        ("adjustment", "other_adjustment"),
        ("charge", "charge"),
        ("payout", "payout"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert!(kinds.contains(&expected), "{expected:?} in {kinds:?}");
    }
    // The balances stay put while the clock is paused.
    let x = &keys.platforms[0].accounts[0];
    let before = sim.balance_of(x);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sim.balance_of(x), before);
}

#[tokio::test]
async fn pending_charges_become_available_at_available_on() {
    let sim = spawn_with(busy()).await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    // Find a pending charge.
    let mut pending = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending.is_none() {
        assert!(Instant::now() < deadline, "no pending charge appeared");
        for x in &keys.platforms[0].accounts {
            let page = get(
                &sim,
                "/v1/balance_transactions?type=charge&limit=100",
                key,
                &[("Stripe-Account", x)],
            )
            .await;
            let found = page.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .find(|t| t["status"] == "pending")
                .cloned();
            if let Some(t) = found {
                pending = Some((x.clone(), t));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (x, t) = pending.expect("found");
    let available_on = t["available_on"].as_i64().expect("available_on");
    assert!(available_on > t["created"].as_i64().expect("created"));
    assert!(t["fee"].as_i64() > Some(0));
    let id = t["id"].as_str().expect("id");
    let path = format!("/v1/balance_transactions/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = sim.sim_now();
        let a = get(&sim, &path, key, &[("Stripe-Account", &x)]).await;
        assert_eq!(a.status, StatusCode::OK);
        if a.body["status"] == "available" {
            assert!(sim.sim_now() >= available_on);
            break;
        }
        assert!(
            now <= available_on + 5,
            "still pending well after available_on"
        );
        assert!(Instant::now() < deadline, "never became available");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another account's transaction is not found through this one.
    let other = keys.platforms[0]
        .accounts
        .iter()
        .find(|a| **a != x)
        .expect("another");
    let a = get(&sim, &path, key, &[("Stripe-Account", other)]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "resource_missing");
}

#[tokio::test]
async fn balance_transactions_page_and_filter_like_stripe() {
    let sim = spawn_with(busy()).await;
    wait_until(30, "activity", || sim.stats().activities >= 300).await;
    sim.set_clock_paused(true);
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    // The busiest account.
    let mut best = (String::new(), Vec::new());
    for x in &keys.platforms[0].accounts {
        let txns = all_txns(&sim, key, x).await;
        if txns.len() > best.1.len() {
            best = (x.clone(), txns);
        }
    }
    let (x, all) = best;
    assert!(all.len() >= 12, "{} transactions", all.len());
    let h = [("Stripe-Account", x.as_str())];
    let created: Vec<i64> = all
        .iter()
        .map(|t| t["created"].as_i64().expect("created"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let ids: Vec<String> = all
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();

    let first = get(&sim, "/v1/balance_transactions", key, &h).await;
    assert_eq!(first.body["url"], "/v1/balance_transactions");
    assert_eq!(first.body["object"], "list");
    assert_eq!(first.ids(), ids[..10].to_vec(), "default limit 10");
    assert_eq!(first.body["has_more"], true);
    let a = get(
        &sim,
        "/v1/balance_transactions?limit=4&starting_after="
            .to_string()
            .as_str(),
        key,
        &h,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::BAD_REQUEST,
        "an empty cursor names nothing"
    );
    let a = get(
        &sim,
        &format!("/v1/balance_transactions?limit=4&starting_after={}", ids[3]),
        key,
        &h,
    )
    .await;
    assert_eq!(a.ids(), ids[4..8].to_vec());
    let a = get(
        &sim,
        &format!("/v1/balance_transactions?limit=3&ending_before={}", ids[4]),
        key,
        &h,
    )
    .await;
    assert_eq!(a.ids(), ids[1..4].to_vec());
    assert_eq!(a.body["has_more"], true);
    let a = get(&sim, "/v1/balance_transactions?limit=101", key, &h).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = get(
        &sim,
        "/v1/balance_transactions?starting_after=txn_nope",
        key,
        &h,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_code(), "resource_missing");

    // created filters split the list.
    let t = created[created.len() / 2];
    let newer = get(
        &sim,
        &format!("/v1/balance_transactions?limit=100&created[gte]={t}"),
        key,
        &h,
    )
    .await;
    let older = get(
        &sim,
        &format!("/v1/balance_transactions?limit=100&created%5Blt%5D={t}"),
        key,
        &h,
    )
    .await;
    if all.len() <= 100 {
        assert_eq!(newer.ids().len() + older.ids().len(), all.len());
    }
    assert!(newer.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|x| x["created"].as_i64() >= Some(t)));
    assert!(older.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|x| x["created"].as_i64() < Some(t)));

    // type filters; an unknown type is refused, a valid one nobody made is empty.
    let charges = get(
        &sim,
        "/v1/balance_transactions?limit=100&type=charge",
        key,
        &h,
    )
    .await;
    assert!(charges.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|x| x["type"] == "charge"));
    let expected = all
        .iter()
        .filter(|t| t["type"] == "charge")
        .count()
        .min(100);
    assert_eq!(charges.ids().len(), expected);
    let a = get(&sim, "/v1/balance_transactions?type=bogus", key, &h).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["error"]["param"], "type");
    let a = get(&sim, "/v1/balance_transactions?type=topup", key, &h).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.ids().is_empty());

    // payout: what a payout paid out, and the payout itself, sum to zero.
    let payouts: Vec<&Value> = all.iter().filter(|t| t["type"] == "payout").collect();
    for p in &payouts {
        let po = p["source"].as_str().expect("a payout's source is po_");
        assert!(po.starts_with("po_"));
        assert_eq!(p["status"], "available");
        let items = get(
            &sim,
            &format!("/v1/balance_transactions?limit=100&payout={po}"),
            key,
            &h,
        )
        .await;
        assert_eq!(items.status, StatusCode::OK, "{}", items.body);
        let data = items.body["data"].as_array().expect("data");
        assert!(
            data.iter().any(|t| t["id"] == p["id"]),
            "the payout is listed"
        );
        if !items.body["has_more"].as_bool().unwrap_or(true) {
            let sum: i64 = data.iter().map(|t| t["net"].as_i64().expect("net")).sum();
            assert_eq!(sum, 0, "{po}");
        }
    }
    let a = get(&sim, "/v1/balance_transactions?payout=po_nope", key, &h).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body["error"]["param"], "payout");

    // Reached with the organization key too, with the same header rules as /v1/balance.
    let org = &keys.organization_key;
    let ctx = format!("{}/{x}", keys.platforms[0].id);
    let a = get(
        &sim,
        "/v1/balance_transactions?limit=3",
        org,
        &[("Stripe-Version", VERSION), ("Stripe-Context", &ctx)],
    )
    .await;
    assert_eq!(a.ids(), ids[..3].to_vec());
    let a = get(
        &sim,
        "/v1/balance_transactions",
        org,
        &[("Stripe-Version", VERSION), ("Stripe-Context", &x)],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let foreign = &keys.platforms[1].accounts[0];
    let a = get(
        &sim,
        "/v1/balance_transactions",
        key,
        &[("Stripe-Account", foreign)],
    )
    .await;
    assert_eq!(a.error_code(), "account_invalid");
}

#[tokio::test]
async fn static_world_has_no_transactions_and_a_still_clock_changes_nothing() {
    let sim = spawn().await;
    let key = platform_key(&sim, 0);
    let x = sim.keys().platforms[0].accounts[0].clone();
    let before = sim.balance_of(&x);
    let a = get(
        &sim,
        "/v1/balance_transactions",
        &key,
        &[("Stripe-Account", &x)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.ids().is_empty());
    assert_eq!(a.body["has_more"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.balance_of(&x), before);
    assert_eq!(sim.stats().activities, 0);
}

async fn post_form(
    sim: &SimHandle,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .bearer_auth(key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(req).await
}

#[tokio::test]
async fn webhook_endpoints_are_created_listed_retrieved_and_deleted() {
    let sim = spawn().await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let form = "url=https://example.com/hooks&enabled_events[]=*&connect=true&description=tally&metadata[env]=test";
    let created = post_form(&sim, "/v1/webhook_endpoints", key, &[], form).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let e = &created.body;
    assert_eq!(e["object"], "webhook_endpoint");
    assert!(e["id"].as_str().is_some_and(|id| id.starts_with("we_")));
    assert!(e["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(e["status"], "enabled");
    assert_eq!(e["enabled_events"], serde_json::json!(["*"]));
    assert_eq!(e["application"], Value::Null);
    assert_eq!(e["livemode"], false);
    assert_eq!(e["metadata"]["env"], "test");
    assert!(e["created"].is_i64());
    let id = e["id"].as_str().expect("id").to_string();

    let fetched = get(&sim, &format!("/v1/webhook_endpoints/{id}"), key, &[]).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert!(
        fetched.body.get("secret").is_none(),
        "the secret is shown once"
    );
    assert_eq!(fetched.body["url"], "https://example.com/hooks");

    // The organization key needs Stripe-Context naming the platform; then it is the
    // platform's endpoint like any other.
    let org = &keys.organization_key;
    let v = ("Stripe-Version", VERSION);
    let a = post_form(
        &sim,
        "/v1/webhook_endpoints",
        org,
        &[v],
        "url=https://example.com/b&enabled_events[0]=balance.available",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_type(), "invalid_request_error");
    assert!(a.message().contains("Stripe-Context"), "{}", a.message());
    let p0 = keys.platforms[0].id.as_str();
    let a = post_form(&sim, "/v1/webhook_endpoints", org, &[v, ("Stripe-Context", p0)], "url=https://example.com/b&enabled_events[0]=balance.available&enabled_events[1]=account.updated").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let second = a.body["id"].as_str().expect("id").to_string();

    let list = get(&sim, "/v1/webhook_endpoints", key, &[]).await;
    assert_eq!(list.body["object"], "list");
    assert_eq!(list.body["url"], "/v1/webhook_endpoints");
    assert_eq!(list.ids(), vec![second.clone(), id.clone()], "newest first");
    assert!(list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|e| e.get("secret").is_none()));
    let page = get(&sim, "/v1/webhook_endpoints?limit=1", key, &[]).await;
    assert_eq!(page.ids(), vec![second.clone()]);
    assert_eq!(page.body["has_more"], true);
    let page = get(
        &sim,
        &format!("/v1/webhook_endpoints?limit=1&starting_after={second}"),
        key,
        &[],
    )
    .await;
    assert_eq!(page.ids(), vec![id.clone()]);
    assert_eq!(page.body["has_more"], false);
    // Another platform sees none of them.
    let other = get(&sim, "/v1/webhook_endpoints", &keys.platforms[1].key, &[]).await;
    assert!(other.ids().is_empty());
    let a = get(
        &sim,
        &format!("/v1/webhook_endpoints/{id}"),
        &keys.platforms[1].key,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let bad = post_form(
        &sim,
        "/v1/webhook_endpoints",
        key,
        &[],
        "enabled_events[]=*",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "parameter_missing");
    assert_eq!(bad.body["error"]["param"], "url");

    let deleted = reqwest::Client::new()
        .delete(format!("{}/v1/webhook_endpoints/{id}", sim.base_url()))
        .bearer_auth(key);
    let deleted = send(deleted).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        deleted.body,
        serde_json::json!({ "id": id, "object": "webhook_endpoint", "deleted": true })
    );
    let a = get(&sim, &format!("/v1/webhook_endpoints/{id}"), key, &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "resource_missing");
}

/// What a receiver got: when, the signature header and the raw body.
type Received = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// A local endpoint that records every delivery and answers 500 to the first `fail_first`
/// deliveries of each event.
async fn receiver(fail_first: usize) -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let signature = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let id = serde_json::from_str::<Value>(&body).unwrap_or_default()["id"].clone();
                let mut sink = sink.lock().expect("lock");
                let earlier = sink
                    .iter()
                    .filter(|(_, _, b)| {
                        serde_json::from_str::<Value>(b).unwrap_or_default()["id"] == id
                    })
                    .count();
                sink.push((Instant::now(), signature, body));
                if earlier < fail_first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Registers a Connect endpoint of platform 0 for every event; returns its secret.
async fn register(sim: &SimHandle, url: &str, events: &str) -> String {
    let key = platform_key(sim, 0);
    let a = post_form(
        sim,
        "/v1/webhook_endpoints",
        &key,
        &[],
        &format!("url={url}&{events}&connect=true"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["secret"].as_str().expect("secret").to_string()
}

/// Checks the signature as a receiver does and parses the event.
fn verified(secret: &str, signature: &str, body: &str) -> Value {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value.to_string()),
            _ => {}
        }
    }
    let t = t.expect("t=");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.{body}").as_bytes());
    assert!(
        v1.contains(&hex::encode(mac.finalize().into_bytes())),
        "signature verifies"
    );
    let age = chrono::Utc::now().timestamp() - t;
    assert!(
        age.abs() <= 300,
        "t is the real time of delivery, not simulated time"
    );
    serde_json::from_str(body).expect("JSON event")
}

fn event_types(received: &Received, secret: &str) -> Vec<Value> {
    received
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, sig, body)| verified(secret, sig, body))
        .collect()
}

#[tokio::test]
async fn connect_endpoints_receive_signed_events_of_every_kind() {
    let sim = spawn_with(SimConfig {
        // A simulated hour in the past, so the clock-speed shows in `created`.
        clock_start: Some(chrono::Utc::now().timestamp() - 3_600),
        ..busy()
    })
    .await;
    let (url, received) = receiver(0).await;
    let secret = register(&sim, &url, "enabled_events[]=*").await;
    let keys = sim.keys().clone();
    let mine: HashSet<&String> = keys.platforms[0].accounts.iter().collect();
    let wanted = [
        "charge.succeeded",
        "charge.refunded",
        "payout.created",
        "payout.paid",
        "transfer.created",
        "balance.available",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = event_types(&received, &secret);
        let seen: HashSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        if wanted.iter().all(|w| seen.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = sim.sim_now();
    for e in event_types(&received, &secret) {
        assert_eq!(e["object"], "event");
        let account = e["account"]
            .as_str()
            .expect("a Connect event names the account");
        assert!(
            mine.contains(&account.to_string()),
            "only platform 0's accounts"
        );
        assert_eq!(e["context"], account);
        assert_eq!(e["api_version"], VERSION);
        assert_eq!(e["livemode"], false);
        let created = e["created"].as_i64().expect("created");
        assert!(
            created <= now && created > now - 3 * 3_600,
            "simulated time: {created} vs {now}"
        );
        let object = &e["data"]["object"];
        let expected = match e["type"].as_str().expect("type") {
            "charge.succeeded" | "charge.refunded" | "charge.failed" => "charge",
            "charge.dispute.created" => "dispute",
            "payout.created" | "payout.paid" => "payout",
            "transfer.created" => "transfer",
            "balance.available" => "balance",
            other => panic!("unexpected {other}"),
        };
        assert_eq!(object["object"], expected, "{}", e["type"]);
        if e["type"] == "payout.paid" {
            assert_eq!(object["status"], "paid");
        }
        if e["type"] == "charge.refunded" {
            assert!(object["amount_refunded"].as_i64() > Some(0));
        }
    }
    let stats = sim.stats();
    assert!(stats.webhooks.delivered > 0 && stats.webhooks.attempts >= stats.webhooks.delivered);
}

#[tokio::test]
async fn endpoints_only_get_the_events_they_enabled() {
    let sim = spawn_with(busy()).await;
    let (url, received) = receiver(0).await;
    let secret = register(&sim, &url, "enabled_events[]=payout.created").await;
    wait_until(60, "a payout event", || {
        !received.lock().expect("lock").is_empty()
    })
    .await;
    assert!(event_types(&received, &secret)
        .iter()
        .all(|e| e["type"] == "payout.created"));
}

#[tokio::test]
async fn failed_first_attempts_are_retried_and_still_arrive() {
    let sim = spawn_with(SimConfig {
        webhook_fail_rate: 1.0,
        webhook_duplicate_rate: 0.0,
        ..busy()
    })
    .await;
    let (url, received) = receiver(0).await;
    let secret = register(&sim, &url, "enabled_events[]=*").await;
    wait_until(60, "deliveries", || {
        received.lock().expect("lock").len() >= 5
    })
    .await;
    let stats = sim.stats();
    // Every first attempt failed without being sent, so each delivery took a retry.
    assert!(
        stats.webhooks.failed >= stats.webhooks.delivered,
        "{:?}",
        stats.webhooks
    );
    assert!(stats.webhooks.retries >= 5);
    assert!(stats.webhooks.attempts >= 5);
    event_types(&received, &secret);
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_backoff() {
    let sim = spawn_with(SimConfig {
        webhook_duplicate_rate: 0.0,
        webhook_retry_base_ms: 200,
        ..busy()
    })
    .await;
    let (url, received) = receiver(3).await;
    let secret = register(&sim, &url, "enabled_events[]=payout.created").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempts: Vec<(Instant, String)> = received
            .lock()
            .expect("lock")
            .iter()
            .map(|(at, sig, body)| {
                (
                    *at,
                    verified(&secret, sig, body)["id"]
                        .as_str()
                        .expect("id")
                        .to_string(),
                )
            })
            .collect();
        if let Some((_, first)) = attempts.first() {
            let of_first: Vec<Instant> = attempts
                .iter()
                .filter(|(_, id)| id == first)
                .map(|(t, _)| *t)
                .collect();
            if of_first.len() >= 4 {
                // 3 failures, then success; the waits double: ~200 ms, ~400 ms, ~800 ms
                // (each at least three quarters of that).
                let gaps: Vec<Duration> = of_first.windows(2).map(|w| w[1] - w[0]).collect();
                assert!(gaps[0] >= Duration::from_millis(150), "{gaps:?}");
                assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
                assert!(gaps[2] >= Duration::from_millis(600), "{gaps:?}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(30, "the delivery after the failures", || {
        sim.stats().webhooks.delivered >= 1
    })
    .await;
    assert!(sim.stats().webhooks.failed >= 3);
}

#[tokio::test]
async fn silent_changes_move_money_without_events() {
    let sim = spawn_with(SimConfig {
        silent_change_rate: 1.0,
        ..busy()
    })
    .await;
    let (url, received) = receiver(0).await;
    register(&sim, &url, "enabled_events[]=*").await;
    wait_until(30, "activity", || sim.stats().activities >= 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = sim.stats();
    assert!(stats.changed_accounts > 0);
    assert!(stats.webhooks.silent >= stats.activities);
    // A payout arriving at the bank is not a balance change: only those may come.
    let got = received.lock().expect("lock").clone();
    for (_, _, body) in got {
        let e: Value = serde_json::from_str(&body).expect("event");
        assert_eq!(e["type"], "payout.paid");
    }
}

#[tokio::test]
async fn move_money_in_ledger_mode_adds_an_adjustment_and_announces_it() {
    let sim = spawn_with(SimConfig {
        activity_per_hour: 0.001,
        webhook_duplicate_rate: 0.0,
        ..busy()
    })
    .await;
    let (url, received) = receiver(0).await;
    let secret = register(&sim, &url, "enabled_events[]=balance.available").await;
    let x = sim.keys().platforms[0].accounts[4].clone();
    let before = balance_sums(&sim.balance_of(&x).expect("balance"));
    sim.move_money(&x);
    let after = balance_sums(&sim.balance_of(&x).expect("balance"));
    assert_ne!(before, after);
    let key = platform_key(&sim, 0);
    let txns = all_txns(&sim, &key, &x).await;
    assert_eq!(txns[0]["type"], "adjustment");
    assert_eq!(txns[0]["status"], "available");
    // Other accounts' activity (rare, but the clock runs fast) may announce theirs too:
    // the one about `x` is what this waits for.
    wait_until(30, "balance.available", || {
        received
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, _, body)| body.contains(x.as_str()))
    })
    .await;
    let events = event_types(&received, &secret);
    let event = events
        .iter()
        .find(|event| event["account"] == x.as_str())
        .expect("an event about the account");
    assert_eq!(
        event["data"]["object"],
        sim.balance_of(&x).expect("balance")
    );
}

#[tokio::test]
async fn endpoint_and_global_rate_limits_say_which_limit_was_hit() {
    let sim = spawn().await;
    sim.set_knobs(|k| k.endpoint_rate_limit = 3);
    let key = platform_key(&sim, 0);
    let answers =
        futures::future::join_all((0..10).map(|_| get(&sim, "/v1/balance", &key, &[]))).await;
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(limited.len() >= 7, "{}", limited.len());
    assert_eq!(
        limited[0].header("stripe-rate-limited-reason"),
        "endpoint-rate"
    );
    assert_eq!(limited[0].error_code(), "rate_limit");
    // Another endpoint has its own budget.
    assert_eq!(
        get(&sim, "/v1/accounts", &key, &[]).await.status,
        StatusCode::OK
    );

    sim.set_knobs(|k| {
        k.endpoint_rate_limit = 0;
        k.rate_limit = 2;
    });
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let answers =
        futures::future::join_all((0..6).map(|_| get(&sim, "/v1/accounts", &key, &[]))).await;
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(limited.len() >= 4, "{}", limited.len());
    assert_eq!(
        limited[0].header("stripe-rate-limited-reason"),
        "global-rate"
    );
}

#[tokio::test]
async fn totals_are_the_sum_of_the_platforms_balances_at_rest() {
    for config in [SimConfig::default(), busy()] {
        let ledger = config.activity_per_hour > 0.0;
        let sim = spawn_with(config).await;
        if ledger {
            wait_until(30, "activity", || sim.stats().activities >= 100).await;
            sim.set_clock_paused(true);
        }
        let keys = sim.keys().clone();
        let p = &keys.platforms[1];
        sim.revoke(&p.accounts[0]);
        let mut expected: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for x in &p.accounts {
            let b = sim.balance_of(x).expect("balance");
            if x != &p.accounts[0] {
                let a = get(&sim, "/v1/balance", &p.key, &[("Stripe-Account", x)]).await;
                assert_eq!(a.body, b);
            }
            for (currency, (available, pending)) in balance_sums(&b) {
                let slot = expected.entry(currency).or_default();
                slot.0 += available;
                slot.1 += pending;
            }
        }
        let totals = sim.totals(&p.id).expect("a platform");
        assert_eq!(
            totals.accounts,
            p.accounts.len() as u64,
            "revoked accounts count"
        );
        let got: std::collections::BTreeMap<String, (i64, i64)> = totals
            .currencies
            .iter()
            .map(|c| (c.currency.clone(), (c.available, c.pending)))
            .collect();
        assert_eq!(got, expected, "ledger mode: {ledger}");
        let currencies: Vec<&String> = totals.currencies.iter().map(|c| &c.currency).collect();
        assert!(
            currencies.windows(2).all(|w| w[0] < w[1]),
            "sorted by currency"
        );
        let over_http: sim::SimTotals =
            reqwest::get(format!("{}/_sim/totals?platform={}", sim.base_url(), p.id))
                .await
                .expect("answers")
                .json()
                .await
                .expect("JSON");
        assert_eq!(over_http.currencies, totals.currencies);
        let unknown = reqwest::get(format!("{}/_sim/totals?platform=acct_nope", sim.base_url()))
            .await
            .expect("answers");
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn clock_pauses_and_reports_over_http() {
    let sim = spawn_with(busy()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sim/clock", sim.base_url());
    let state: Value = client
        .get(&url)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(state["paused"], false);
    assert_eq!(state["speed"], 60.0);
    let paused: Value = client
        .post(&url)
        .json(&serde_json::json!({ "paused": true }))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(paused["paused"], true);
    let at = sim.sim_now();
    let activities = sim.stats().activities;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.sim_now(), at);
    assert_eq!(
        sim.stats().activities,
        activities,
        "no activity while paused"
    );
    client
        .post(&url)
        .json(&serde_json::json!({ "paused": false }))
        .send()
        .await
        .expect("answers");
    wait_until(10, "time to run again", || sim.sim_now() > at + 10).await;
}

#[tokio::test]
async fn stats_count_activity_changed_accounts_and_requests_per_account() {
    let sim = spawn_with(busy()).await;
    wait_until(30, "activity", || sim.stats().changed_accounts >= 3).await;
    let stats = sim.stats();
    assert!(stats.activities > 0);
    assert!(stats.changed_accounts <= 24);
    sim.reset_stats();
    let keys = sim.keys().clone();
    let x = &keys.platforms[0].accounts[2];
    for _ in 0..3 {
        get(
            &sim,
            "/v1/balance",
            &keys.platforms[0].key,
            &[("Stripe-Account", x)],
        )
        .await;
    }
    get(&sim, "/v1/balance", &keys.platforms[0].key, &[]).await;
    let over_http: sim::SimStats = reqwest::get(format!("{}/_sim/stats", sim.base_url()))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(over_http.by_account.get(x.as_str()), Some(&3));
    assert_eq!(
        over_http.by_account.get(keys.platforms[0].id.as_str()),
        Some(&1)
    );
}

// ---------------------------------------------------------------------------------------
// The daily close's side: the `Date` header, the ledger's ground truth, injected drift.

/// The simulated second a response's `Date` header states (RFC 7231 IMF-fixdate).
fn date_of(a: &Answer) -> i64 {
    let value = a.header("date");
    assert!(
        value.ends_with(" GMT") && value.len() == 29,
        "IMF-fixdate: {value:?}"
    );
    chrono::DateTime::parse_from_rfc2822(value)
        .unwrap_or_else(|err| panic!("{value:?}: {err}"))
        .timestamp()
}

/// GET a `/_sim/` path without a key.
async fn control(sim: &SimHandle, path: &str) -> Answer {
    send(reqwest::Client::new().get(format!("{}{path}", sim.base_url()))).await
}

async fn post_json(sim: &SimHandle, path: &str, body: &str) -> Answer {
    send(
        reqwest::Client::new()
            .post(format!("{}{path}", sim.base_url()))
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// Per currency (available, pending) of one account in a ground-truth answer.
fn truth_of(truth: &Value, account: &str) -> std::collections::BTreeMap<String, (i64, i64)> {
    truth["accounts"][account]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["currency"].as_str().expect("currency").to_string(),
                        (
                            e["available"].as_i64().expect("available"),
                            e["pending"].as_i64().expect("pending"),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A live balance and a ground truth agree: the same amounts in every currency the truth
/// lists, and 0 in the balance's other currencies (listed without any transaction).
fn assert_ties_out(
    live: &std::collections::BTreeMap<String, (i64, i64)>,
    truth: &std::collections::BTreeMap<String, (i64, i64)>,
    what: &str,
) {
    for (currency, amounts) in truth {
        assert_eq!(live.get(currency), Some(amounts), "{what} {currency}");
    }
    for (currency, amounts) in live {
        if !truth.contains_key(currency) {
            assert_eq!(*amounts, (0, 0), "{what} {currency} has no transaction");
        }
    }
}

/// The ground truth computed from listed transactions as tally will: `net` of those
/// created by `at`, available when `available_on <= at`.
fn truth_from_txns(txns: &[Value], at: i64) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut sums = std::collections::BTreeMap::new();
    for t in txns {
        if t["created"].as_i64().expect("created") > at {
            continue;
        }
        let slot: &mut (i64, i64) = sums
            .entry(t["currency"].as_str().expect("currency").to_string())
            .or_default();
        let net = t["net"].as_i64().expect("net");
        if t["available_on"].as_i64().expect("available_on") <= at {
            slot.0 += net;
        } else {
            slot.1 += net;
        }
    }
    sums
}

/// Every page of `/v1/balance_transactions?{query}` with `headers`, following
/// `starting_after`; asserts each page's `Date` is the same `date` when given.
async fn txns_where(
    sim: &SimHandle,
    key: &str,
    headers: &[(&str, &str)],
    query: &str,
    limit: usize,
) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut path = format!("/v1/balance_transactions?limit={limit}&{query}");
    loop {
        let page = get(sim, &path, key, headers).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let data = page.body["data"].as_array().expect("data").clone();
        assert!(data.len() <= limit);
        out.extend(data.iter().cloned());
        match (page.body["has_more"].as_bool(), data.last()) {
            (Some(true), Some(last)) => {
                path = format!(
                    "/v1/balance_transactions?limit={limit}&{query}&starting_after={}",
                    last["id"].as_str().expect("id")
                )
            }
            _ => return out,
        }
    }
}

/// `days` days ago in real time, whole hours.
fn days_ago(days: i64) -> i64 {
    let now = chrono::Utc::now().timestamp();
    (now - days * 86_400) / 3_600 * 3_600
}

#[tokio::test]
async fn every_response_is_dated_with_the_simulated_clock() {
    let start = days_ago(2);
    let sim = spawn_with(SimConfig {
        clock_start: Some(start),
        ..busy()
    })
    .await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let x = &keys.platforms[0].accounts[0];
    let h = [("Stripe-Account", x.as_str())];
    let real = chrono::Utc::now().timestamp();
    for path in [
        "/v1/balance",
        "/v1/balance_transactions?limit=1",
        "/v1/accounts?limit=1",
        "/v1/nope",
    ] {
        let before = sim.sim_now();
        let a = get(&sim, path, key, &h).await;
        let after = sim.sim_now();
        let date = date_of(&a);
        assert!(
            before <= date && date <= after,
            "{path}: {before} {date} {after}"
        );
        assert!(date < real - 86_400, "{path}: simulated, not real time");
    }
    let a = get(&sim, "/v1/balance", "sk_test_nope", &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(date_of(&a) < real - 86_400, "errors too");
    let a = control(&sim, "/_sim/clock").await;
    assert_eq!(date_of(&a), a.body["now"].as_i64().expect("now"));

    // Paused, the Date is the paused second, however long it has been.
    sim.set_clock_paused(true);
    let at = sim.sim_now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let a = get(&sim, "/v1/balance", key, &h).await;
    assert_eq!(date_of(&a), at);
    assert_eq!(
        chrono::DateTime::from_timestamp(at, 0)
            .expect("in range")
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
        a.header("date")
    );
}

#[tokio::test]
async fn ground_truth_at_now_is_every_live_balance_at_rest() {
    let sim = spawn_with(busy()).await;
    wait_until(30, "activity", || sim.stats().activities >= 300).await;
    sim.set_clock_paused(true);
    let keys = sim.keys().clone();
    let now = sim.sim_now();
    let truth = control(&sim, &format!("/_sim/ledger/balances?at={now}")).await;
    assert_eq!(truth.status, StatusCode::OK, "{}", truth.body);
    assert_eq!(truth.body["at"], now);
    let listed = truth.body["accounts"].as_object().expect("accounts");
    let connected: HashSet<&String> = keys.platforms.iter().flat_map(|p| &p.accounts).collect();
    assert_eq!(
        listed.keys().collect::<HashSet<_>>(),
        connected,
        "every connected account (each has transactions), and only them"
    );
    let mut payouts = 0;
    for platform in &keys.platforms {
        for x in &platform.accounts {
            let h = [("Stripe-Account", x.as_str())];
            let balance = get(&sim, "/v1/balance", &platform.key, &h).await;
            assert_eq!(date_of(&balance), now);
            let expected = truth_of(&truth.body, x);
            assert_ties_out(&balance_sums(&balance.body), &expected, x);
            let currencies: Vec<&str> = truth.body["accounts"][x.as_str()]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["currency"].as_str().expect("currency"))
                .collect();
            assert!(currencies.windows(2).all(|w| w[0] < w[1]), "sorted");
            let txns = all_txns(&sim, &platform.key, x).await;
            assert_eq!(truth_from_txns(&txns, now), expected, "{x}");
            for t in txns.iter().filter(|t| t["type"] == "payout") {
                assert_eq!(t["available_on"], t["created"], "a payout takes at once");
                payouts += 1;
            }
            // One account at a time, the same.
            let one = control(&sim, &format!("/_sim/ledger/balances?at={now}&account={x}")).await;
            assert_eq!(one.body["accounts"].as_object().map(|m| m.len()), Some(1));
            assert_eq!(
                one.body["accounts"][x.as_str()],
                truth.body["accounts"][x.as_str()]
            );
        }
    }
    assert!(payouts > 0, "payouts were checked");
    // Without at: the clock's second; in-process: the same answer.
    let a = control(&sim, "/_sim/ledger/balances").await;
    assert_eq!(a.body, truth.body);
    let in_process = sim.ledger_balances(Some(now), None).expect("ledger mode");
    assert_eq!(serde_json::to_value(&in_process).expect("JSON"), truth.body);
    // The past, from the transactions; the future does not exist yet.
    let x = &keys.platforms[0].accounts[1];
    let txns = all_txns(&sim, &keys.platforms[0].key, x).await;
    let past = txns[txns.len() / 2]["created"].as_i64().expect("created");
    let a = control(
        &sim,
        &format!("/_sim/ledger/balances?at={past}&account={x}"),
    )
    .await;
    assert_eq!(truth_of(&a.body, x), truth_from_txns(&txns, past));
    let a = control(&sim, &format!("/_sim/ledger/balances?at={}", now + 1)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    for bad in ["at=yesterday", "at=1&bogus=2"] {
        let a = control(&sim, &format!("/_sim/ledger/balances?{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(a.body["error"].is_string());
    }
    let a = control(&sim, "/_sim/ledger/balances?account=acct_nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // An account added later opens at the ledger's second: no history before it.
    let y = sim.add_accounts(&keys.platforms[0].id, 1).remove(0);
    let h = [("Stripe-Account", y.as_str())];
    let balance = get(&sim, "/v1/balance", &keys.platforms[0].key, &h).await;
    let txns = all_txns(&sim, &keys.platforms[0].key, &y).await;
    assert!(!txns.is_empty());
    assert!(txns.iter().all(|t| t["created"] == now), "opened at {now}");
    let a = control(&sim, &format!("/_sim/ledger/balances?at={now}&account={y}")).await;
    assert_ties_out(&balance_sums(&balance.body), &truth_of(&a.body, &y), &y);
    let a = control(
        &sim,
        &format!("/_sim/ledger/balances?at={}&account={y}", now - 1),
    )
    .await;
    assert_eq!(a.body["accounts"], serde_json::json!({}));
}

#[tokio::test]
async fn a_balance_ties_out_at_its_date_while_the_clock_runs() {
    // Ten simulated minutes a second: thousands of transactions a second.
    let sim = spawn_with(SimConfig {
        clock_speed: 600.0,
        ..busy()
    })
    .await;
    wait_until(30, "activity", || sim.stats().activities >= 200).await;
    let keys = sim.keys().clone();
    let mut dates = HashSet::new();
    for round in 0..3 {
        for platform in &keys.platforms {
            for x in &platform.accounts {
                let h = [("Stripe-Account", x.as_str())];
                let balance = get(&sim, "/v1/balance", &platform.key, &h).await;
                let date = date_of(&balance);
                dates.insert(date);
                // Later, with more activity in between: the truth at that Date is still
                // exactly what the balance showed.
                let truth = control(
                    &sim,
                    &format!("/_sim/ledger/balances?at={date}&account={x}"),
                )
                .await;
                assert_eq!(truth.status, StatusCode::OK, "{}", truth.body);
                assert_ties_out(
                    &balance_sums(&balance.body),
                    &truth_of(&truth.body, x),
                    &format!("round {round} {x} at {date}"),
                );
            }
        }
    }
    assert!(dates.len() > 3, "the clock ran: {dates:?}");
}

#[tokio::test]
async fn drift_changes_a_balance_without_a_transaction_or_an_event() {
    let sim = spawn_with(SimConfig {
        activity_per_hour: 0.001,
        webhook_duplicate_rate: 0.0,
        ..busy()
    })
    .await;
    sim.set_clock_paused(true);
    let (url, received) = receiver(0).await;
    register(&sim, &url, "enabled_events[]=*").await;
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let x = &keys.platforms[0].accounts[2];
    let h = [("Stripe-Account", x.as_str())];
    let before = get(&sim, "/v1/balance", key, &h).await;
    let txns_before = all_txns(&sim, key, x).await;
    let truth_before = control(&sim, &format!("/_sim/ledger/balances?account={x}")).await;
    let currency = before.body["available"][0]["currency"]
        .as_str()
        .expect("currency")
        .to_string();
    let available = before.body["available"][0]["amount"]
        .as_i64()
        .expect("amount");

    let body =
        serde_json::json!({ "account": x, "currency": currency.to_uppercase(), "amount": -1234 });
    let a = post_json(&sim, "/_sim/ledger/drift", &body.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        serde_json::json!({ "account": x, "currency": currency, "drift": -1234, "available": available - 1234 })
    );
    let after = get(&sim, "/v1/balance", key, &h).await;
    assert_eq!(after.body["available"][0]["amount"], available - 1234);
    assert_eq!(after.body["pending"], before.body["pending"]);
    assert_eq!(all_txns(&sim, key, x).await, txns_before, "no transaction");
    let truth = control(&sim, &format!("/_sim/ledger/balances?account={x}")).await;
    assert_eq!(
        truth.body, truth_before.body,
        "the ground truth ignores drift"
    );
    let live = balance_sums(&after.body);
    let expected = truth_of(&truth.body, x);
    assert_eq!(
        live[&currency].0 - expected.get(&currency).map_or(0, |t| t.0),
        -1234,
        "the balance no longer ties out, by exactly the drift"
    );
    // In-process, and it adds up; a new currency appears in the balance only.
    let applied = sim.inject_drift(x, &currency, 234).expect("applied");
    assert_eq!(
        (applied.drift, applied.available),
        (-1000, available - 1000)
    );
    let a = post_json(
        &sim,
        "/_sim/ledger/drift",
        &serde_json::json!({ "account": x, "currency": "nzd", "amount": 77 }).to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let shown = get(&sim, "/v1/balance", key, &h).await;
    assert_eq!(balance_sums(&shown.body).get("nzd"), Some(&(77, 0)));

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        received.lock().expect("lock").is_empty(),
        "a drift sends no event"
    );

    for (body, status) in [
        (
            serde_json::json!({ "account": "acct_nope", "currency": "usd", "amount": 1 })
                .to_string(),
            StatusCode::NOT_FOUND,
        ),
        ("{".to_string(), StatusCode::BAD_REQUEST),
        (
            serde_json::json!({ "account": x, "currency": "usd" }).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({ "account": x, "currency": "usd", "amount": "12" }).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({ "account": x, "currency": "usd", "amount": 1.5 }).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({ "account": x, "currency": "xyz", "amount": 1 }).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({ "account": x, "currency": "usd", "amount": 1, "amout": 2 })
                .to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({ "account": x, "currency": currency, "amount": i64::MAX })
                .to_string(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let a = post_json(&sim, "/_sim/ledger/drift", &body).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert!(a.body["error"].is_string(), "{body}");
    }

    // Without a ledger there is nothing to drift from, nor a ground truth.
    let still = spawn().await;
    let y = &still.keys().platforms[0].accounts[0];
    let body = serde_json::json!({ "account": y, "currency": "usd", "amount": 5 }).to_string();
    let a = post_json(&still, "/_sim/ledger/drift", &body).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = control(&still, "/_sim/ledger/balances?at=0").await;
    assert_eq!(a.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn balance_transactions_page_through_a_created_range_newest_first() {
    let sim = spawn_with(busy()).await;
    wait_until(30, "activity", || sim.stats().activities >= 400).await;
    sim.set_clock_paused(true);
    let keys = sim.keys().clone();
    let key = &keys.platforms[0].key;
    let mut best = (String::new(), Vec::new());
    for x in &keys.platforms[0].accounts {
        let txns = all_txns(&sim, key, x).await;
        if txns.len() > best.1.len() {
            best = (x.clone(), txns);
        }
    }
    let (x, all) = best;
    assert!(all.len() >= 20, "{} transactions", all.len());
    let created: Vec<i64> = all
        .iter()
        .map(|t| t["created"].as_i64().expect("created"))
        .collect();
    let (hi, lo) = (created[all.len() / 5], created[all.len() * 4 / 5]);
    assert!(lo < hi);
    let ids = |txns: &[Value]| -> Vec<String> {
        txns.iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    };
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        ids(&all
            .iter()
            .filter(|t| keep(t["created"].as_i64().expect("created")))
            .cloned()
            .collect::<Vec<_>>())
    };
    let h = [("Stripe-Account", x.as_str())];
    let org = &keys.organization_key;
    let ctx = format!("{}/{x}", keys.platforms[0].id);
    let org_h = [
        ("Stripe-Version", VERSION),
        ("Stripe-Context", ctx.as_str()),
    ];
    for (query, keep) in [
        (
            format!("created[gte]={lo}&created[lte]={hi}"),
            Box::new(move |c: i64| lo <= c && c <= hi) as Box<dyn Fn(i64) -> bool>,
        ),
        (
            format!("created%5Bgt%5D={lo}&created%5Blt%5D={hi}"),
            Box::new(move |c: i64| lo < c && c < hi),
        ),
        (
            format!("created[gte]={lo}"),
            Box::new(move |c: i64| lo <= c),
        ),
        (format!("created[lt]={hi}"), Box::new(move |c: i64| c < hi)),
    ] {
        let expected = expect(&keep);
        assert!(expected.len() > 3, "{query}");
        for limit in [3, 100] {
            let got = txns_where(&sim, key, &h, &query, limit).await;
            assert_eq!(ids(&got), expected, "{query} limit {limit}");
            let stamps: Vec<i64> = got
                .iter()
                .map(|t| t["created"].as_i64().expect("created"))
                .collect();
            assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "newest first");
        }
        let got = txns_where(&sim, org, &org_h, &query, 7).await;
        assert_eq!(ids(&got), expected, "{query} with Stripe-Context");
    }
    // A range with nothing in it, and a malformed bound.
    let empty = txns_where(
        &sim,
        key,
        &h,
        &format!("created[gt]={hi}&created[lt]={lo}"),
        5,
    )
    .await;
    assert!(empty.is_empty());
    let a = get(&sim, "/v1/balance_transactions?created[gte]=soon", key, &h).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["error"]["param"], "created[gte]");
}

#[tokio::test]
async fn a_clock_started_in_the_past_runs_fast_pauses_and_ties_out() {
    let start = days_ago(5);
    let sim = spawn_with(SimConfig {
        clock_start: Some(start),
        clock_speed: 3_600.0,
        activity_per_hour: 5.0,
        settlement_secs: 86_400,
        ..busy()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sim/clock", sim.base_url());
    let clock = |body: Value| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("answers")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    // An hour a second: a simulated day passes in 24 s, still behind the real clock.
    wait_until(10, "a simulated hour", || sim.sim_now() >= start + 3_600).await;
    assert!(sim.sim_now() < chrono::Utc::now().timestamp() - 86_400);
    let state = clock(serde_json::json!({ "speed": 36_000.0 })).await;
    assert_eq!(state["speed"], 36_000.0);
    assert_eq!(state["paused"], false);
    // Charges settle at the second midnight after them (a day's delay, rounded up).
    wait_until(20, "three simulated days", || {
        sim.sim_now() >= start + 3 * 86_400
    })
    .await;
    let state = clock(serde_json::json!({ "paused": true, "speed": 60.0 })).await;
    assert_eq!(
        (state["paused"].clone(), state["speed"].clone()),
        (true.into(), 60.0.into())
    );
    let paused_at = state["now"].as_i64().expect("now");
    assert!(paused_at < chrono::Utc::now().timestamp());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Paused: a balance, then its transactions, then the truth at the balance's Date.
    let keys = sim.keys().clone();
    let mut tied = 0;
    let mut settled = 0;
    for platform in &keys.platforms {
        for x in &platform.accounts {
            let h = [("Stripe-Account", x.as_str())];
            let balance = get(&sim, "/v1/balance", &platform.key, &h).await;
            let date = date_of(&balance);
            assert_eq!(date, paused_at);
            let txns = txns_where(
                &sim,
                &platform.key,
                &h,
                &format!("created[lte]={date}"),
                100,
            )
            .await;
            let truth = control(
                &sim,
                &format!("/_sim/ledger/balances?at={date}&account={x}"),
            )
            .await;
            let expected = truth_of(&truth.body, x);
            assert_eq!(truth_from_txns(&txns, date), expected, "{x}");
            assert_ties_out(&balance_sums(&balance.body), &expected, x);
            settled += txns
                .iter()
                .filter(|t| t["type"] == "charge" && t["status"] == "available")
                .count();
            tied += 1;
        }
    }
    assert_eq!(tied, 24);
    assert!(settled > 0, "charges settled within the test");

    // Resumed at the new speed; the clock continues from where it stopped.
    let state = clock(serde_json::json!({ "paused": false })).await;
    assert_eq!(state["paused"], false);
    assert!(state["now"].as_i64() >= Some(paused_at));
    wait_until(10, "time to run again", || sim.sim_now() > paused_at + 10).await;
}
