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
    let received: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: String| async move {
                let signature = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                *sink.lock().expect("lock") = Some((signature, body));
                axum::http::StatusCode::OK
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let x = sim.keys().platforms[0].accounts[2].clone();
    sim.update_account_metadata(&x, "accountid", Some("acct_newowner"));
    let status = sim
        .send_webhook(&url, "whsec_test", "account.updated", &x)
        .await
        .expect("sent");
    assert_eq!(status, StatusCode::OK);

    let (signature, body) = received.lock().expect("lock").clone().expect("received");
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
