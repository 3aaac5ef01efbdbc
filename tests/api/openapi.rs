//! `GET /openapi.json`: the document describes what the server really answers. Real
//! requests (successes and errors, every error code a test can reach) are checked
//! against it: the status is documented for the operation, the content type too, the
//! body validates against the documented schema ($refs resolved in the document),
//! and documented headers are present when required and valid when sent. And every
//! route the router serves is in the document.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tally::domain::Role;
use tally::sim::{sign_webhook, SimHandle};

use crate::helpers::{spawn_app, TestApp};
use crate::sync::{add_platform_tenant, spawn_sim};

const WEBHOOK_SECRET: &str = "whsec_test_openapi_0123456789";

/// The document, and what the checks saw.
struct Contract {
    doc: Value,
    /// (method, path template) → statuses answered.
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
    /// Every error code answered.
    codes: BTreeSet<String>,
    /// Per `GET` path template, a request that succeeded, to ask again with `HEAD`.
    gets: BTreeMap<String, Succeeded>,
}

/// A request that succeeded: its path, token and headers.
type Succeeded = (String, Option<String>, Vec<(String, String)>);

/// One answer, as received.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Contract {
    async fn fetch(app: &TestApp) -> Contract {
        let response = app
            .client
            .get(format!("{}/openapi.json", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 200);
        let doc: Value = response.json().await.expect("a JSON document");
        Contract {
            doc,
            seen: BTreeMap::new(),
            codes: BTreeSet::new(),
            gets: BTreeMap::new(),
        }
    }

    /// Every error code the document lists, on any operation.
    fn documented_codes(&self) -> BTreeSet<String> {
        fn walk(value: &Value, codes: &mut BTreeSet<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(values) = map
                        .get("properties")
                        .and_then(|p| p.get("code"))
                        .and_then(|c| c.get("enum"))
                        .and_then(Value::as_array)
                    {
                        codes.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                    map.values().for_each(|v| walk(v, codes));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, codes)),
                _ => {}
            }
        }
        let mut codes = BTreeSet::new();
        walk(&self.doc["paths"], &mut codes);
        codes
    }

    /// The documented operations, as (method, path template).
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
        operations
    }

    fn operation(&self, method: &str, template: &str) -> &Value {
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        operation
    }

    /// A validator for `schema`, resolving `#/components/...` in the document.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|error| panic!("a valid schema ({error}): {schema}"))
    }

    fn validate(&self, what: &str, schema: &Value, instance: &Value) {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|error| format!("{} at {}", error, error.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match the document: {errors:?}\n{instance}"
        );
    }

    /// Checks `answer` against the document's description of `method template`.
    fn check(&mut self, method: &str, template: &str, answer: &Answer) {
        let what = format!("{method} {template} → {}", answer.status);
        let operation = self.operation(method, template).clone();
        let response = &operation["responses"][answer.status.to_string()];
        assert!(
            response.is_object(),
            "{what}: status not documented; body {}",
            String::from_utf8_lossy(&answer.body)
        );
        if method == "HEAD" {
            assert!(answer.body.is_empty(), "{what}: a body");
            assert!(
                response.get("content").is_none(),
                "{what}: content documented"
            );
        } else {
            self.check_body(&what, response, answer);
        }
        self.check_headers(&what, response, answer);
        self.seen
            .entry((method.to_owned(), template.to_owned()))
            .or_default()
            .insert(answer.status);
    }

    /// The body: its content type documented, and valid against its schema.
    fn check_body(&mut self, what: &str, response: &Value, answer: &Answer) {
        let content_type = answer
            .header("content-type")
            .unwrap_or_else(|| panic!("{what}: no content type"));
        let media = content_type.split(';').next().unwrap_or("").trim();
        let documented = &response["content"][media];
        assert!(
            documented.is_object(),
            "{what}: content type {content_type} not documented ({:?})",
            response["content"]
                .as_object()
                .map(|c| c.keys().collect::<Vec<_>>())
        );
        if media == "application/json" {
            let body = answer.json();
            self.validate(what, &documented["schema"], &body);
            if answer.status >= 400 {
                let code = body["code"].as_str().expect("an error code");
                self.codes.insert(code.to_owned());
            }
        } else {
            let text = std::str::from_utf8(&answer.body).expect("a text body");
            // A CSV answer starts with the header row its schema's example shows.
            if media == "text/csv" {
                let schema = self.resolve(&documented["schema"]);
                assert_eq!(schema["contentMediaType"], "text/csv", "{what}");
                if let Some(example) = schema["examples"][0].as_str() {
                    let header = text.lines().next().unwrap_or_default();
                    assert!(
                        example.starts_with(header) || header.contains("_count"),
                        "{what}: header {header:?}, documented {example:?}"
                    );
                }
            }
        }
    }

    /// A `$ref` to a component, resolved (anything else as it is).
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/schemas/")
                    .expect("a schema reference");
                &self.doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// Documented headers: present when required, valid when sent.
    fn check_headers(&mut self, what: &str, response: &Value, answer: &Answer) {
        if let Some(headers) = response["headers"].as_object() {
            for (name, header) in headers {
                match answer.header(name) {
                    None => assert!(
                        header["required"] != json!(true),
                        "{what}: required header {name} missing"
                    ),
                    Some(value) => {
                        let value = match header["schema"]["type"].as_str() {
                            Some("integer") => json!(value
                                .parse::<i64>()
                                .unwrap_or_else(|_| panic!("{what}: {name} {value:?}"))),
                            _ => json!(value),
                        };
                        self.validate(&format!("{what}: header {name}"), &header["schema"], &value);
                    }
                }
            }
        }
    }
}

/// A request to send and check.
struct Call<'a> {
    method: Method,
    template: &'a str,
    path: String,
    token: Option<&'a str>,
    headers: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
}

fn get<'a>(template: &'a str, path: impl Into<String>, token: &'a str) -> Call<'a> {
    Call {
        method: Method::GET,
        template,
        path: path.into(),
        token: Some(token),
        headers: vec![],
        body: None,
    }
}

fn post<'a>(template: &'a str, path: impl Into<String>, token: &'a str) -> Call<'a> {
    Call {
        method: Method::POST,
        ..get(template, path, token)
    }
}

impl<'a> Call<'a> {
    fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.header("content-type", "application/json")
    }

    fn raw(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.header("content-type", "application/json")
    }
}

/// Sends `call`, checks the answer against the document, and returns it.
async fn send(app: &TestApp, contract: &mut Contract, call: Call<'_>) -> Answer {
    let mut request = app
        .client
        .request(call.method.clone(), format!("{}{}", app.address, call.path));
    if let Some(token) = call.token {
        request = request.bearer_auth(token);
    }
    for (name, value) in &call.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = call.body {
        request = request.body(body);
    }
    let response = request.send().await.expect("sent");
    let answer = Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    };
    contract.check(call.method.as_str(), call.template, &answer);
    if call.method == Method::GET && (200..300).contains(&answer.status) {
        let headers = call
            .headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        contract.gets.entry(call.template.to_owned()).or_insert((
            call.path.clone(),
            call.token.map(str::to_owned),
            headers,
        ));
    }
    answer
}

/// Asks again with `HEAD` every `GET` that succeeded: the same status and headers,
/// no body, as the document's `HEAD` operations say.
async fn head_every_get(app: &TestApp, contract: &mut Contract) {
    let gets = contract.gets.clone();
    for (template, (path, token, headers)) in gets {
        let call = Call {
            method: Method::HEAD,
            template: &template,
            path,
            token: token.as_deref(),
            headers: headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone()))
                .collect(),
            body: None,
        };
        let answer = send(app, contract, call).await;
        assert!(
            (200..300).contains(&answer.status),
            "HEAD {template}: {}",
            answer.status
        );
    }
}

/// A method a path does not take: 405 `method-not-allowed`, its body as each of the
/// path's operations documents it, and `Allow` naming exactly the documented methods.
async fn method_not_allowed(app: &TestApp, contract: &mut Contract, path: &str, token: &str) {
    let response = app
        .client
        .request(Method::PATCH, format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let answer = Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    };
    assert_eq!(answer.status, 405, "PATCH {path}");
    let documented: BTreeSet<String> = contract.doc["paths"][path]
        .as_object()
        .expect("a documented path")
        .keys()
        .map(|method| method.to_uppercase())
        .collect();
    let allowed: BTreeSet<String> = answer
        .header("allow")
        .expect("Allow")
        .split(',')
        .map(|method| method.trim().to_uppercase())
        .collect();
    assert_eq!(allowed, documented, "Allow of {path}");
    for method in documented {
        let operation = contract.operation(&method, path).clone();
        let response = &operation["responses"]["405"];
        assert!(response.is_object(), "{method} {path}: 405 not documented");
        assert_eq!(response["headers"]["Allow"]["required"], true);
        let what = format!("PATCH {path} (as {method} documents it)");
        if method != "HEAD" {
            contract.check_body(&what, response, &answer);
        }
        contract.check_headers(&what, response, &answer);
    }
}

/// Sends `call`, checks it against the document, and asserts its status (and code).
async fn expect(
    app: &TestApp,
    contract: &mut Contract,
    call: Call<'_>,
    status: u16,
    code: Option<&str>,
) -> Answer {
    let label = format!("{} {}", call.method, call.path);
    let answer = send(app, contract, call).await;
    assert_eq!(
        answer.status,
        status,
        "{label}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    if let Some(code) = code {
        assert_eq!(answer.json()["code"], code, "{label}");
    }
    answer
}

const LIST: &str = "/api/administrator/connect/stripe-accounts";
const COUNT: &str = "/api/administrator/connect/stripe-accounts-count";
const ONE: &str = "/api/administrator/connect/stripe-account";
const BALANCE: &str = "/api/administrator/connect/stripe-account/balance";
const BALANCES: &str = "/api/administrator/connect/balances";
const HISTORY: &str = "/api/administrator/connect/balances/history";
const TOTALS: &str = "/api/administrator/connect/balances/totals";
const CLOSE: &str = "/api/administrator/connect/balances/close";
const ACCOUNT_CLOSE: &str = "/api/administrator/connect/stripe-account/close";
const REFRESHES: &str = "/api/administrator/connect/balances/refreshes";
const REFRESH: &str = "/api/administrator/connect/balances/refreshes/{id}";
const SYNC: &str = "/api/administrator/connect/sync";
const SYNC_RUN: &str = "/api/administrator/connect/sync/{id}";
const TOKENS: &str = "/api/administrator/tokens";
const TOKEN: &str = "/api/administrator/tokens/{id}";
const WEBHOOK: &str = "/webhooks/stripe/{tenant}";

/// The set-up: a platform tenant on the simulator with its accounts synced, one
/// account stored that the platform cannot reach (Stripe answers 403), and tokens.
struct World {
    app: TestApp,
    _sim: SimHandle,
    owner: String,
    admin: String,
    reader: String,
    /// A reachable account, and one Stripe refuses.
    good: String,
    refused: String,
    owner_of_good: String,
    tenant_id: i64,
}

async fn world() -> World {
    let app = spawn_app().await;
    let sim = spawn_sim(1, 6, 0).await;
    let tenant = add_platform_tenant(&app, &sim, "acme", 0, Some(WEBHOOK_SECRET)).await;
    add_platform_tenant(&app, &sim, "globex", 0, None).await;
    crate::sync::sync_ok(&app, &tenant).await;
    // An account of another platform: this tenant's key gets 403 account_invalid.
    let refused = "acct_1NotConnectedHere0";
    app.store_accounts(
        tenant.id,
        &[crate::helpers::account_object(refused, 1_600_000_000, None)],
    )
    .await;
    let good = sim.keys().platforms[0].accounts[0].clone();
    let owner_of_good = crate::sync::stored(&app, tenant.id, &good)
        .await
        .accountid
        .expect("the simulator's accounts have owners");
    let owner = app.token(Role::Owner, None).await;
    let admin = app.token(Role::Admin, Some("acme")).await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    World {
        app,
        _sim: sim,
        owner,
        admin,
        reader,
        good,
        refused: refused.to_owned(),
        owner_of_good,
        tenant_id: tenant.id,
    }
}

/// A closed day with one account row, stored as the closer stores it (the close's own
/// tests build days from the ledger; this one checks the answers' shape).
async fn seed_close_day(app: &TestApp, tenant_id: i64, stripeid: &str, day: chrono::NaiveDate) {
    use tally::money::{Activity, Split};
    use tally::store::closes::{AccountDay, TieOut};
    let row = AccountDay {
        day,
        stripeid: stripeid.to_owned(),
        currency: "usd".into(),
        opening: Split {
            available: 1_000,
            pending: 0,
        },
        closing: Split {
            available: 1_500,
            pending: 200,
        },
        activity: [(
            "charge".to_owned(),
            Activity {
                count: 1,
                amount: 730,
                fee: 30,
                net: 700,
            },
        )]
        .into_iter()
        .collect(),
        transactions: 1,
        tieout: TieOut::Unverified,
    };
    crate::close::store_closed_day(app, tenant_id, day, &[row]).await;
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let w = world().await;
    let app = &w.app;
    let mut c = Contract::fetch(app).await;
    let c = &mut c;
    let (owner, admin, reader) = (w.owner.as_str(), w.admin.as_str(), w.reader.as_str());

    // Probes and the document itself, without a token.
    expect(
        app,
        c,
        get("/healthz", "/healthz", "").without_token(),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get("/readyz", "/readyz", "").without_token(),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get("/openapi.json", "/openapi.json", "").without_token(),
        200,
        None,
    )
    .await;

    // Authentication, on every kind of caller.
    expect(
        app,
        c,
        get(LIST, LIST, "").without_token(),
        401,
        Some("unauthorized"),
    )
    .await;
    expect(
        app,
        c,
        get(LIST, LIST, "tly_nope"),
        401,
        Some("unauthorized"),
    )
    .await;
    let made = expect(
        app,
        c,
        post(TOKENS, TOKENS, owner)
            .json(&json!({"role": "reader", "tenant": "acme", "name": "short", "expiresIn": "1s"})),
        201,
        None,
    )
    .await
    .json();
    let short = made["token"].as_str().expect("token").to_owned();
    let revoked = expect(
        app,
        c,
        post(TOKENS, TOKENS, owner).json(&json!({"role": "reader", "tenant": "acme"})),
        201,
        None,
    )
    .await
    .json();
    let revoked_id = revoked["id"].as_i64().expect("id");
    let revoked_token = revoked["token"].as_str().expect("token").to_owned();
    let path = format!("/api/administrator/tokens/{revoked_id}");
    let revoke = |token| Call {
        method: Method::DELETE,
        ..get(TOKEN, path.clone(), token)
    };
    expect(app, c, revoke(owner), 200, None).await;
    expect(app, c, revoke(reader), 403, Some("forbidden")).await;
    let gone = Call {
        method: Method::DELETE,
        ..get(TOKEN, "/api/administrator/tokens/999999", owner)
    };
    expect(app, c, gone, 404, Some("invalid-tokenid")).await;
    let not_a_number = Call {
        method: Method::DELETE,
        ..get(TOKEN, "/api/administrator/tokens/x", owner)
    };
    expect(app, c, not_a_number, 404, Some("invalid-tokenid")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    expect(app, c, get(LIST, LIST, &short), 401, Some("token-expired")).await;
    expect(
        app,
        c,
        get(LIST, LIST, &revoked_token),
        401,
        Some("token-revoked"),
    )
    .await;

    // Tenant scope.
    expect(app, c, get(LIST, LIST, owner), 400, Some("missing-tenant")).await;
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?tenant=NOT%20A%20SLUG"), owner),
        400,
        Some("invalid-tenant"),
    )
    .await;
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?tenant=nope"), owner),
        404,
        Some("invalid-tenant"),
    )
    .await;
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?tenant=globex"), reader),
        404,
        Some("invalid-tenant"),
    )
    .await;

    // The listing: pages, cursors, streams, and each malformed parameter.
    let page = expect(
        app,
        c,
        get(LIST, format!("{LIST}?tenant=acme&limit=2"), owner),
        200,
        None,
    )
    .await;
    assert_eq!(page.header("x-total-count"), Some("7"));
    assert!(page
        .header("link")
        .is_some_and(|l| l.contains("rel=\"next\"")));
    let first = page.json()[0]["stripeid"]
        .as_str()
        .expect("stripeid")
        .to_owned();
    let next = expect(
        app,
        c,
        get(
            LIST,
            format!("{LIST}?limit=2&starting_after={first}"),
            reader,
        ),
        200,
        None,
    )
    .await;
    assert!(next
        .header("link")
        .is_some_and(|l| l.contains("rel=\"prev\"")));
    expect(
        app,
        c,
        get(
            LIST,
            format!("{LIST}?limit=2&ending_before={first}"),
            reader,
        ),
        200,
        None,
    )
    .await;
    let all = expect(
        app,
        c,
        get(LIST, format!("{LIST}?all=true"), reader),
        200,
        None,
    )
    .await;
    assert_eq!(all.json().as_array().map(Vec::len), Some(7));
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?limit=501"), reader),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(
            LIST,
            format!("{LIST}?accountid={}", w.owner_of_good),
            reader,
        ),
        200,
        None,
    )
    .await;
    for (query, code) in [
        ("offset=-1", "invalid-offset"),
        ("limit=0", "invalid-limit"),
        ("all=maybe", "invalid-all"),
        ("accountid=a%00b", "invalid-accountid"),
        ("starting_after=acct_1Unknown", "invalid-starting-after"),
        ("ending_before=x", "invalid-ending-before"),
        (
            "starting_after=acct_1A&ending_before=acct_1B",
            "invalid-paging",
        ),
    ] {
        expect(
            app,
            c,
            get(LIST, format!("{LIST}?{query}"), reader),
            400,
            Some(code),
        )
        .await;
    }
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?accountid=nobody"), reader),
        404,
        Some("invalid-accountid"),
    )
    .await;

    // The count and one record.
    let count = expect(app, c, get(COUNT, COUNT, reader), 200, None).await;
    assert_eq!(count.json(), json!(7));
    expect(
        app,
        c,
        get(COUNT, format!("{COUNT}?accountid=a%00"), reader),
        400,
        Some("invalid-accountid"),
    )
    .await;
    expect(
        app,
        c,
        get(COUNT, format!("{COUNT}?accountid=nobody"), reader),
        404,
        Some("invalid-accountid"),
    )
    .await;
    expect(
        app,
        c,
        get(ONE, format!("{ONE}?stripeid={}", w.good), reader),
        200,
        None,
    )
    .await;
    expect(app, c, get(ONE, ONE, reader), 400, Some("invalid-stripeid")).await;
    expect(
        app,
        c,
        get(ONE, format!("{ONE}?stripeid=acct_1Unknown"), reader),
        404,
        Some("invalid-stripeid"),
    )
    .await;

    // One account's balance: live, stored, refused by Stripe, pending, malformed.
    expect(
        app,
        c,
        get(
            BALANCE,
            format!("{BALANCE}?stripeid={}&max_age=0&wait=25", w.good),
            reader,
        ),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(BALANCE, format!("{BALANCE}?stripeid={}", w.good), reader),
        200,
        None,
    )
    .await;
    let failed = expect(
        app,
        c,
        get(
            BALANCE,
            format!("{BALANCE}?stripeid={}&max_age=0&wait=25", w.refused),
            reader,
        ),
        502,
        Some("stripe-request-failed"),
    )
    .await;
    assert_eq!(failed.json()["failure"]["code"], "account_invalid");
    for (query, code) in [
        ("stripeid=acct_1A&max_age=31536001", "invalid-max-age"),
        ("stripeid=acct_1A&wait=26", "invalid-wait"),
        ("stripeid=nope", "invalid-stripeid"),
    ] {
        expect(
            app,
            c,
            get(BALANCE, format!("{BALANCE}?{query}"), reader),
            400,
            Some(code),
        )
        .await;
    }
    expect(
        app,
        c,
        get(BALANCE, format!("{BALANCE}?stripeid=acct_1Unknown"), reader),
        404,
        Some("invalid-stripeid"),
    )
    .await;

    // The aggregate: stored, CSV, pending, malformed.
    let aggregate = expect(app, c, get(BALANCES, BALANCES, reader), 200, None).await;
    assert_eq!(aggregate.json()["accounts"]["total"], 7);
    let csv = expect(
        app,
        c,
        get(BALANCES, BALANCES, reader).header("accept", "text/csv"),
        200,
        None,
    )
    .await;
    assert!(csv
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/csv")));
    expect(
        app,
        c,
        get(
            BALANCES,
            format!("{BALANCES}?accountid={}&currency=USD", w.owner_of_good),
            reader,
        ),
        200,
        None,
    )
    .await;
    let pending = expect(
        app,
        c,
        get(BALANCES, format!("{BALANCES}?max_age=0&wait=0"), reader),
        202,
        None,
    )
    .await;
    let location = pending.header("location").expect("Location").to_owned();
    assert!(location.starts_with("/api/administrator/connect/balances/refreshes/"));
    for (query, code) in [
        ("max_age=x", "invalid-max-age"),
        ("wait=-1", "invalid-wait"),
        ("currency=dollars", "invalid-currency"),
        // Postgres cannot take a NUL: refused before any query (the fuzzer found a 500).
        ("accountid=a%00b", "invalid-accountid"),
    ] {
        expect(
            app,
            c,
            get(BALANCES, format!("{BALANCES}?{query}"), reader),
            400,
            Some(code),
        )
        .await;
    }
    expect(
        app,
        c,
        get(BALANCES, format!("{BALANCES}?accountid=nobody"), reader),
        404,
        Some("invalid-accountid"),
    )
    .await;

    // Refreshes: the one the poll started, the list, starting one, malformed.
    expect(app, c, get(REFRESH, location.clone(), reader), 200, None).await;
    expect(
        app,
        c,
        get(REFRESH, format!("{REFRESHES}/not-a-uuid"), reader),
        404,
        Some("invalid-refreshid"),
    )
    .await;
    expect(
        app,
        c,
        get(
            REFRESH,
            format!("{REFRESHES}/{}", uuid::Uuid::new_v4()),
            reader,
        ),
        404,
        Some("invalid-refreshid"),
    )
    .await;
    expect(
        app,
        c,
        get(REFRESHES, format!("{REFRESHES}?limit=1"), reader),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(REFRESHES, format!("{REFRESHES}?limit=101"), reader),
        400,
        Some("invalid-limit"),
    )
    .await;
    expect(
        app,
        c,
        get(REFRESHES, format!("{REFRESHES}?starting_after=x"), reader),
        400,
        Some("invalid-starting-after"),
    )
    .await;
    expect(
        app,
        c,
        post(REFRESHES, format!("{REFRESHES}?stripeid={}", w.good), admin),
        202,
        None,
    )
    .await;
    expect(
        app,
        c,
        post(REFRESHES, REFRESHES, reader),
        403,
        Some("forbidden"),
    )
    .await;
    for (query, code) in [
        ("stripeid=acct_1A&accountid=x", "invalid-scope"),
        ("stripeid=nope", "invalid-stripeid"),
        ("max_age=-5", "invalid-max-age"),
        ("accountid=a%00b", "invalid-accountid"),
    ] {
        expect(
            app,
            c,
            post(REFRESHES, format!("{REFRESHES}?{query}"), admin),
            400,
            Some(code),
        )
        .await;
    }

    // History.
    expect(
        app,
        c,
        get(HISTORY, format!("{HISTORY}?stripeid={}", w.good), reader),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(
            HISTORY,
            format!("{HISTORY}?stripeid={}&limit=1", w.refused),
            reader,
        ),
        200,
        None,
    )
    .await;
    for (query, code) in [
        ("stripeid=x", "invalid-stripeid"),
        ("stripeid=acct_1A&from=yesterday", "invalid-from"),
        ("stripeid=acct_1A&to=2026", "invalid-to"),
        ("stripeid=acct_1A&limit=1001", "invalid-limit"),
    ] {
        expect(
            app,
            c,
            get(HISTORY, format!("{HISTORY}?{query}"), reader),
            400,
            Some(code),
        )
        .await;
    }
    expect(
        app,
        c,
        get(HISTORY, format!("{HISTORY}?stripeid=acct_1Unknown"), reader),
        404,
        Some("invalid-stripeid"),
    )
    .await;

    // Totals over time.
    let today = chrono::Utc::now().date_naive();
    let week_ago = today - chrono::Duration::days(7);
    expect(
        app,
        c,
        get(TOTALS, format!("{TOTALS}?from={week_ago}"), reader),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(
            TOTALS,
            format!("{TOTALS}?interval=hour&from={today}&currency=usd"),
            reader,
        )
        .header("accept", "text/csv"),
        200,
        None,
    )
    .await;
    for (query, status, code) in [
        (
            format!("from={week_ago}&interval=week"),
            400,
            "invalid-interval",
        ),
        ("interval=day".to_owned(), 400, "invalid-from"),
        (format!("from={week_ago}&to=soon"), 400, "invalid-to"),
        (format!("from={today}&to={week_ago}"), 400, "invalid-range"),
        (
            "from=2020-01-01&interval=hour".to_owned(),
            400,
            "too-many-buckets",
        ),
        (
            format!("from={week_ago}&currency=dollars"),
            400,
            "invalid-currency",
        ),
        (
            format!("from={week_ago}&accountid=nobody"),
            404,
            "invalid-accountid",
        ),
    ] {
        expect(
            app,
            c,
            get(TOTALS, format!("{TOTALS}?{query}"), reader),
            status,
            Some(code),
        )
        .await;
    }

    // The daily close.
    let closed_day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).expect("date");
    seed_close_day(app, w.tenant_id, &w.good, closed_day).await;
    expect(
        app,
        c,
        get(CLOSE, format!("{CLOSE}?date={closed_day}"), reader),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(CLOSE, format!("{CLOSE}?date={closed_day}"), reader).header("accept", "text/csv"),
        200,
        None,
    )
    .await;
    expect(app, c, get(CLOSE, CLOSE, reader), 400, Some("invalid-date")).await;
    expect(
        app,
        c,
        get(CLOSE, format!("{CLOSE}?date=2026-11-01"), reader),
        404,
        Some("close-not-ready"),
    )
    .await;
    let good = &w.good;
    expect(
        app,
        c,
        get(
            ACCOUNT_CLOSE,
            format!("{ACCOUNT_CLOSE}?stripeid={good}&from_date={closed_day}"),
            reader,
        ),
        200,
        None,
    )
    .await;
    for (query, status, code) in [
        ("from_date=2026-11-30".to_owned(), 400, "invalid-stripeid"),
        (
            "stripeid=acct_1Unknown&from_date=2026-11-30".to_owned(),
            404,
            "invalid-stripeid",
        ),
        (format!("stripeid={good}"), 400, "invalid-from-date"),
        (
            format!("stripeid={good}&from_date=2026-11-30&to_date=later"),
            400,
            "invalid-to-date",
        ),
        (
            format!("stripeid={good}&from_date=2026-11-30&to_date=2026-11-01"),
            400,
            "invalid-range",
        ),
    ] {
        expect(
            app,
            c,
            get(ACCOUNT_CLOSE, format!("{ACCOUNT_CLOSE}?{query}"), reader),
            status,
            Some(code),
        )
        .await;
    }

    // Sync.
    let started = expect(app, c, post(SYNC, SYNC, admin), 202, None)
        .await
        .json();
    let run = format!("{SYNC}/{}", started["id"].as_str().expect("run id"));
    expect(app, c, get(SYNC_RUN, run, reader), 200, None).await;
    expect(app, c, post(SYNC, SYNC, reader), 403, Some("forbidden")).await;
    expect(
        app,
        c,
        get(SYNC_RUN, format!("{SYNC}/{}", uuid::Uuid::new_v4()), reader),
        404,
        Some("invalid-syncid"),
    )
    .await;

    // Tokens.
    expect(app, c, get(TOKENS, TOKENS, owner), 200, None).await;
    expect(
        app,
        c,
        get(TOKENS, format!("{TOKENS}?tenant=acme"), owner),
        200,
        None,
    )
    .await;
    expect(
        app,
        c,
        get(TOKENS, format!("{TOKENS}?tenant=nope"), owner),
        404,
        Some("invalid-tenant"),
    )
    .await;
    // A malformed slug is 400, as on every other endpoint.
    expect(
        app,
        c,
        get(TOKENS, format!("{TOKENS}?tenant=ACME"), owner),
        400,
        Some("invalid-tenant"),
    )
    .await;
    expect(
        app,
        c,
        get(TOKENS, format!("{TOKENS}?starting_after=1&limit=1"), owner),
        200,
        None,
    )
    .await;
    expect(app, c, get(TOKENS, TOKENS, admin), 403, Some("forbidden")).await;
    for (body, code) in [
        (json!({"role": "king"}), "invalid-role"),
        (json!({"role": "owner", "tenant": "acme"}), "invalid-tenant"),
        (
            json!({"role": "reader", "tenant": "acme", "name": ""}),
            "invalid-name",
        ),
        (
            json!({"role": "reader", "tenant": "acme", "expiresIn": "soon"}),
            "invalid-expires-in",
        ),
        (json!({"role": "reader", "extra": 1}), "invalid-body"),
    ] {
        expect(
            app,
            c,
            post(TOKENS, TOKENS, owner).json(&body),
            400,
            Some(code),
        )
        .await;
    }
    expect(
        app,
        c,
        post(TOKENS, TOKENS, owner).json(&json!({"role": "admin", "tenant": "nope"})),
        404,
        Some("invalid-tenant"),
    )
    .await;
    expect(
        app,
        c,
        post(TOKENS, TOKENS, owner).raw(vec![b' '; 1024 * 1024 + 1]),
        413,
        Some("body-too-large"),
    )
    .await;

    // The audit log (the token changes above are in it).
    const AUDIT: &str = "/api/administrator/audit";
    let page = expect(
        app,
        c,
        get(AUDIT, format!("{AUDIT}?limit=1"), owner),
        200,
        None,
    )
    .await;
    assert!(page
        .header("link")
        .is_some_and(|l| l.contains("rel=\"next\"")));
    expect(
        app,
        c,
        get(
            AUDIT,
            format!("{AUDIT}?tenant=acme&since=2026-01-01"),
            owner,
        ),
        200,
        None,
    )
    .await;
    expect(app, c, get(AUDIT, AUDIT, admin), 403, Some("forbidden")).await;
    for (query, code) in [
        ("limit=0", "invalid-limit"),
        ("starting_after=x", "invalid-starting-after"),
        ("tenant=A%20B", "invalid-tenant"),
        ("since=later", "invalid-since"),
    ] {
        expect(
            app,
            c,
            get(AUDIT, format!("{AUDIT}?{query}"), owner),
            400,
            Some(code),
        )
        .await;
    }

    // Webhooks: signed events, refusals.
    let hook = "/webhooks/stripe/acme";
    let event = json!({
        "id": "evt_openapi_1", "object": "event", "type": "account.updated", "account": w.good,
        "created": chrono::Utc::now().timestamp(), "data": {"object": {"id": w.good, "object": "account", "created": 1_600_000_000, "metadata": {}}}
    })
    .to_string();
    let signature = sign_webhook(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &event);
    let signed = |body: &str, signature: &str| {
        post(WEBHOOK, hook, "")
            .without_token()
            .header("stripe-signature", signature.to_owned())
            .raw(body.as_bytes().to_vec())
    };
    expect(app, c, signed(&event, &signature), 200, None).await;
    expect(app, c, signed(&event, &signature), 200, None).await;
    expect(
        app,
        c,
        signed(&event, "t=1,v1=00"),
        400,
        Some("invalid-signature"),
    )
    .await;
    let not_an_event = "{\"hello\": 1}";
    let signature = sign_webhook(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), not_an_event);
    expect(
        app,
        c,
        signed(not_an_event, &signature),
        400,
        Some("invalid-event"),
    )
    .await;
    expect(
        app,
        c,
        signed(&" ".repeat(1024 * 1024 + 1), "t=1,v1=00"),
        413,
        Some("body-too-large"),
    )
    .await;

    // A removed tenant: its own tokens are refused (401), an owner naming it gets 404.
    let globex_reader = expect(
        app,
        c,
        post(TOKENS, TOKENS, owner).json(&json!({"role": "reader", "tenant": "globex"})),
        201,
        None,
    )
    .await
    .json()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    tally::commands::tenant::remove(
        &app.pool,
        "globex",
        false,
        false,
        &tally::audit::Actor::cli(),
    )
    .await
    .expect("removed");
    // Verified tokens are cached for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    expect(
        app,
        c,
        get(LIST, LIST, &globex_reader),
        401,
        Some("tenant-removed"),
    )
    .await;
    expect(
        app,
        c,
        get(LIST, format!("{LIST}?tenant=globex"), owner),
        404,
        Some("tenant-removed"),
    )
    .await;

    // HEAD beside every GET, and 405 with Allow for a method a path does not take.
    head_every_get(app, c).await;
    method_not_allowed(app, c, BALANCES, reader).await;
    method_not_allowed(app, c, REFRESHES, reader).await;

    // Every documented operation was answered with a success at least once.
    for (method, template) in c.operations() {
        let statuses = c.seen.get(&(method.clone(), template.clone()));
        assert!(
            statuses.is_some_and(|s| s.iter().any(|status| (200..300).contains(status))),
            "{method} {template} never succeeded here: {statuses:?}"
        );
    }
    // The error codes this test reached; each was checked against its operation's list.
    let reached: Vec<&str> = c.codes.iter().map(String::as_str).collect();
    for code in [
        "unauthorized",
        "token-expired",
        "token-revoked",
        "forbidden",
        "missing-tenant",
        "invalid-tenant",
        "invalid-offset",
        "invalid-limit",
        "invalid-all",
        "invalid-accountid",
        "invalid-starting-after",
        "invalid-ending-before",
        "invalid-stripeid",
        "invalid-max-age",
        "invalid-wait",
        "invalid-currency",
        "invalid-from",
        "invalid-to",
        "invalid-refreshid",
        "invalid-scope",
        "invalid-syncid",
        "invalid-tokenid",
        "invalid-role",
        "invalid-name",
        "invalid-expires-in",
        "invalid-body",
        "body-too-large",
        "invalid-signature",
        "invalid-event",
        "stripe-request-failed",
        "tenant-removed",
        "method-not-allowed",
    ] {
        assert!(reached.contains(&code), "{code} not reached: {reached:?}");
    }
    // Every code the document lists is reached: here, or (faults this test does not
    // inject) by the test named beside it.
    let elsewhere = BTreeSet::from(REACHED_ELSEWHERE.map(|(code, _)| code.to_owned()));
    let unreached: Vec<String> = c
        .documented_codes()
        .into_iter()
        .filter(|code| !c.codes.contains(code) && !elsewhere.contains(code))
        .filter(|code| !NEVER_ANSWERED_TODAY.contains(&code.as_str()))
        .collect();
    assert!(
        unreached.is_empty(),
        "documented but never reached: {unreached:?}"
    );
}

/// Documented, and kept in the code, but no input reaches them with today's parser:
/// `serde_urlencoded` decodes any query string (bad UTF-8 becomes U+FFFD), so
/// `invalid-query` is the answer only if a future parser refuses one.
const NEVER_ANSWERED_TODAY: [&str; 1] = ["invalid-query"];

/// Error codes only a fault answers, and the test that injects it and checks the answer.
const REACHED_ELSEWHERE: [(&str, &str); 8] = [
    (
        "invalid-request",
        "errors::requests_the_http_layer_cannot_read_answer_with_the_error_body",
    ),
    (
        "uri-too-long",
        "errors::requests_the_http_layer_cannot_read_answer_with_the_error_body",
    ),
    (
        "headers-too-large",
        "errors::requests_the_http_layer_cannot_read_answer_with_the_error_body",
    ),
    (
        "database-unavailable",
        "health::readyz_fails_while_the_database_is_unreachable",
    ),
    (
        "internal-error",
        "http::error::tests::a_panicking_handler_answers_500_json_and_is_logged_once (unit)",
    ),
    (
        "request-timeout",
        "errors::a_request_over_the_time_limit_answers_503_request_timeout",
    ),
    (
        "tenant-credential-unusable",
        "balances::a_key_sealed_under_another_master_key_is_explained_not_leaked",
    ),
    (
        "too-many-streams",
        "streams (32 stalled readers hold every stream slot)",
    ),
];

/// The paths the router serves, read from its `Debug` rendering (axum prints each
/// route's path), so a route added anywhere, documented or not, shows up here.
fn routed_paths(app: &axum::Router) -> BTreeSet<String> {
    let rendered = format!("{app:?}");
    // The fallback router (unknown paths) is printed after the routes.
    let routes = rendered
        .split("fallback_router")
        .next()
        .expect("split yields one piece");
    let mut paths = BTreeSet::new();
    for piece in routes.split("RouteId(").skip(1) {
        // `3): "/healthz"` — the route id, then its path.
        if let Some((_, rest)) = piece.split_once("): \"") {
            if let Some((path, _)) = rest.split_once('"') {
                paths.insert(path.to_owned());
            }
        }
    }
    paths
}

/// What a path answers for methods it does not take: 405 with `Allow` (`HEAD` included).
async fn allowed_methods(app: &TestApp, path: &str) -> BTreeSet<String> {
    let response = app
        .client
        .request(
            Method::from_bytes(b"PROBE").expect("method"),
            format!("{}{path}", app.address),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 405, "{path}");
    response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(|m| m.trim().to_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}

#[tokio::test]
async fn every_route_the_router_serves_is_in_the_document() {
    let app = spawn_app().await;
    let contract = Contract::fetch(&app).await;
    let state = tally::http::AppState::new(
        app.pool.clone(),
        std::sync::Arc::new(app.settings.clone()),
        std::sync::Arc::new(
            tally::tenants::StripeTenants::new(
                &app.settings.stripe,
                std::sync::Arc::new(
                    tally::crypto::MasterKey::from_base64(&app.master_base64).expect("master key"),
                ),
            )
            .expect("stripe"),
        ),
        tally::tasks::Tasks::new(),
    );
    let router = tally::http::app(state);
    let routed = routed_paths(&router);
    assert!(
        routed.contains("/healthz") && routed.len() >= 10,
        "could not read the routes from the router: {routed:?}"
    );
    // Outside the document on purpose: Prometheus text, and the HTML pages for people.
    let outside =
        |path: &str| path == "/metrics" || path == "/admin" || path.starts_with("/admin/");
    let documented: BTreeSet<(String, String)> = contract.operations();
    let documented_paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in routed.iter().filter(|p| !outside(p)) {
        assert!(
            documented_paths.contains(path),
            "{path} is routed but not in /openapi.json"
        );
        // The methods it takes, as its 405 says (`HEAD` with every `GET`): exactly
        // those documented.
        let concrete = path.replace("{id}", "1").replace("{tenant}", "acme");
        let allowed = allowed_methods(&app, &concrete).await;
        for method in &allowed {
            assert!(
                documented.contains(&(method.clone(), path.clone())),
                "{method} {path} is routed but not in /openapi.json"
            );
        }
        for (method, _) in documented.iter().filter(|(_, p)| p == path) {
            assert!(
                allowed.contains(method),
                "{method} {path} is documented but its 405 does not allow it"
            );
        }
    }
    // And the other way: nothing documented that is not served.
    for (method, path) in &documented {
        assert!(
            routed.contains(path),
            "{method} {path} is documented but not routed"
        );
    }
    let doc = &contract.doc;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"].get("/metrics").is_none());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Every `$ref` in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                found.push(reference.to_owned());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// Whether a property's schema lets `null` through.
fn nullable(schema: &Value) -> bool {
    let null = json!("null");
    schema["type"] == null
        || schema["type"]
            .as_array()
            .is_some_and(|types| types.contains(&null))
        || ["oneOf", "anyOf"].iter().any(|key| {
            schema[*key]
                .as_array()
                .is_some_and(|items| items.iter().any(|item| item["type"] == null))
        })
}

/// What an outside client generator found in the document, each checked: it must be
/// able to generate every documented answer.
#[tokio::test]
async fn the_document_is_one_a_client_generator_can_use() {
    let app = spawn_app().await;
    let contract = Contract::fetch(&app).await;
    let doc = &contract.doc;
    let schemas = &doc["components"]["schemas"];

    // Every reference resolves.
    let mut found = Vec::new();
    references(doc, &mut found);
    for reference in &found {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} is not a schema reference"));
        assert!(schemas[name].is_object(), "{reference} does not resolve");
    }

    // No `allOf` declares a property twice with a different shape: a field declared
    // in two branches may only narrow `code` (a string) to some of its values, never
    // turn a nullable field into a required one (the 502 could not be generated).
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    let mut all_ofs = Vec::new();
    fn collect_all_ofs(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                if let Some(items) = map.get("allOf") {
                    out.push(items.clone());
                }
                map.values().for_each(|v| collect_all_ofs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_all_ofs(v, out)),
            _ => {}
        }
    }
    collect_all_ofs(doc, &mut all_ofs);
    assert!(!all_ofs.is_empty());
    for items in &all_ofs {
        let mut declared: BTreeMap<String, Vec<(Value, bool)>> = BTreeMap::new();
        for item in items.as_array().expect("allOf items") {
            let branch = contract.resolve(item);
            let required: Vec<&str> = branch["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, property) in branch["properties"].as_object().into_iter().flatten() {
                declared
                    .entry(name.clone())
                    .or_default()
                    .push((property.clone(), required.contains(&name.as_str())));
            }
        }
        for (name, declarations) in declared.iter().filter(|(_, d)| d.len() > 1) {
            assert_eq!(name, "code", "{name} declared twice in {items}");
            for (property, _) in declarations {
                assert!(!nullable(property), "{name} nullable in {items}");
                assert_eq!(property["type"], "string", "{items}");
            }
        }
    }
    // The 502 of one account's balance: its own schema, `failure` required, not null.
    let bad_gateway = &contract.operation("GET", BALANCE)["responses"]["502"]["content"]
        ["application/json"]["schema"];
    let upstream = contract.resolve(bad_gateway);
    assert!(upstream["required"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("failure"))));
    assert!(!nullable(&upstream["properties"]["failure"]));
    assert_eq!(
        upstream["properties"]["code"]["enum"],
        json!(["stripe-request-failed"])
    );
    assert!(schemas["Error"]["properties"].get("failure").is_none());

    // One account's balance carries Stripe's own names, as the server sends them.
    let balance = &schemas["StripeBalance"]["properties"];
    for name in [
        "connect_reserved",
        "instant_available",
        "available",
        "pending",
    ] {
        assert!(balance[name].is_object(), "StripeBalance lacks {name}");
    }
    for name in ["connectReserved", "instantAvailable"] {
        assert!(balance.get(name).is_none(), "StripeBalance has {name}");
    }
    assert_eq!(
        schemas["AccountBalance"]["allOf"][0]["$ref"],
        "#/components/schemas/StripeBalance"
    );
    assert!(schemas["BalanceAmount"]["properties"]["source_types"].is_object());
    assert!(schemas["InstantAmount"]["properties"]["net_available"].is_object());

    for (method, path, operation) in &operations {
        // 405 with `Allow` on every operation.
        let not_allowed = &operation["responses"]["405"];
        assert_eq!(
            not_allowed["headers"]["Allow"]["required"], true,
            "{method} {path}: 405 with Allow not documented"
        );
        // Integer ids used as cursors (and in paths) are integers.
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let integer_ids = path.starts_with(TOKENS) || path == "/api/administrator/audit";
            let name = parameter["name"].as_str().expect("name");
            if integer_ids && matches!(name, "starting_after" | "id") {
                assert_eq!(
                    parameter["schema"]["type"], "integer",
                    "{method} {path}: {name}"
                );
            }
            // A malformed query parameter is answered with its own code.
            if parameter["in"] == "query" && method != "HEAD" {
                let code = match name {
                    "refresh" => "invalid-refreshid".to_owned(),
                    other => format!("invalid-{}", other.replace('_', "-")),
                };
                let bad_request = operation["responses"]["400"].to_string();
                assert!(
                    bad_request.contains(&format!("\"{code}\"")),
                    "{method} {path}: {name}'s code {code} is not documented"
                );
            }
        }
        // Every CSV answer has a schema a generator can use: a string of `text/csv`
        // whose description names the columns.
        for response in operation["responses"]
            .as_object()
            .expect("responses")
            .values()
        {
            if let Some(csv) = response["content"].get("text/csv") {
                let schema = contract.resolve(&csv["schema"]);
                assert_eq!(schema["type"], "string", "{method} {path}");
                assert_eq!(schema["contentMediaType"], "text/csv", "{method} {path}");
                assert!(
                    schema["description"]
                        .as_str()
                        .is_some_and(|d| d.contains("Columns: `")),
                    "{method} {path}: {schema}"
                );
            }
        }
    }
    // `HEAD` beside every `GET`, with the same answers and no body.
    for (method, path, operation) in operations.iter().filter(|(m, ..)| m == "GET") {
        let head = contract.operation("HEAD", path);
        let statuses = |op: &Value| -> BTreeSet<String> {
            op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(statuses(head), statuses(operation), "{method} {path}");
        assert!(head["responses"]
            .as_object()
            .expect("responses")
            .values()
            .all(|r| r.get("content").is_none()));
    }
    let csv_operations = [("GET", BALANCES), ("GET", TOTALS), ("GET", CLOSE)];
    for (method, path) in csv_operations {
        assert!(
            contract.operation(method, path)["responses"]["200"]["content"]["text/csv"].is_object(),
            "{method} {path}"
        );
    }
}
