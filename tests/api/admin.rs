//! The admin pages over plain HTTP: sessions (cookie flags, revocation, expiry,
//! sign-out, replicas), tenant scoping and what a reader or another site may post.

use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::Response;
use sha2::{Digest, Sha256};
use tally::domain::Role;

use crate::helpers::{spawn_app, spawn_app_on, spawn_app_with, TestApp};

pub const SESSION_COOKIE: &str = "tally_admin_session";

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client")
}

/// Signs in with `token`; returns the `Set-Cookie` header and the cookie pair.
pub async fn sign_in(address: &str, token: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = no_redirects()
        .post(format!("{address}/admin/login"))
        .form(&[("token", token)]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 303, "signed in and sent on");
    assert_eq!(response.headers()[LOCATION], "/admin");
    let set_cookie = response.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    let pair = set_cookie.split(';').next().expect("name=value").to_owned();
    (set_cookie, pair)
}

async fn page(address: &str, path: &str, cookie: &str) -> Response {
    no_redirects()
        .get(format!("{address}{path}"))
        .header(COOKIE, cookie)
        .send()
        .await
        .expect("sent")
}

/// The CSRF token in a page's forms.
pub fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

async fn post(
    address: &str,
    path: &str,
    cookie: &str,
    csrf: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = no_redirects()
        .post(format!("{address}{path}"))
        .header(COOKIE, cookie)
        .form(&[("csrf", csrf)]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sent")
}

/// Signs in with a new token of `role` for acme; the cookie and the page's CSRF token.
async fn signed_in(app: &TestApp, role: Role) -> (String, String) {
    let token = app.token(role, Some("acme")).await;
    let (_, cookie) = sign_in(&app.address, &token, &[]).await;
    let html = page(&app.address, "/admin/tenants/acme", &cookie)
        .await
        .text()
        .await
        .expect("html");
    (cookie, csrf_in(&html))
}

async fn sync_runs(app: &TestApp) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sync_runs")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn signing_in_sets_an_httponly_strict_expiring_cookie_that_is_not_the_token() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let token = app.token(Role::Reader, Some("acme")).await;

    let (set_cookie, pair) = sign_in(&app.address, &token, &[]).await;
    assert!(set_cookie.starts_with(&format!("{SESSION_COOKIE}=")));
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(set_cookie.contains(flag), "{flag}: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(!set_cookie.contains(&token) && !set_cookie.contains(&token[4..]));
    // Only a hash of the session id is stored.
    let session_id = pair.split_once('=').expect("pair").1;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT session_hash FROM admin_sessions")
        .fetch_all(&app.pool)
        .await
        .expect("sessions");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], Sha256::digest(session_id.as_bytes()).to_vec());

    // Behind a TLS proxy the cookie is Secure.
    let (secure, _) = sign_in(&app.address, &token, &[("x-forwarded-proto", "https")]).await;
    assert!(secure.ends_with("; Secure"), "{secure}");

    // The cookie opens the tenant's page; the page says who is signed in, never the token.
    let response = page(&app.address, "/admin", &pair).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/admin/tenants/acme");
    let response = page(&app.address, "/admin/tenants/acme", &pair).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.expect("html");
    assert!(html.contains("Signed in as reader of acme"));
    assert!(!html.contains(&token));
    assert!(html.contains("<html lang=\"en\">"));
}

#[tokio::test]
async fn a_bad_token_is_refused_with_what_to_do_and_no_session() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let response = no_redirects()
        .post(format!("{}/admin/login", app.address))
        .form(&[("token", "tly_not-a-real-token")])
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    assert!(response.headers().get(SET_COOKIE).is_none());
    let html = response.text().await.expect("html");
    assert!(html.contains("not a token this server knows"), "{html}");
    assert!(
        !html.contains("tly_not-a-real-token"),
        "the token is not echoed"
    );

    // Without a session every page sends you to sign in.
    for path in ["/admin", "/admin/tenants/acme"] {
        let response = page(&app.address, path, "tally_admin_session=forged").await;
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()[LOCATION], "/admin/login");
    }
    let login = page(&app.address, "/admin/login", "").await;
    assert_eq!(login.status(), 200);
    let html = login.text().await.expect("html");
    assert!(html.contains("<label for=\"token\">"), "{html}");
}

#[tokio::test]
async fn a_revoked_or_expired_token_ends_its_sessions_on_every_replica_within_two_seconds() {
    let first = spawn_app().await;
    first.add_tenant("acme").await;
    let second = spawn_app_on(first.db.alias(), first.master_base64.clone(), |_| {}).await;
    let owner = first.token(Role::Owner, None).await;
    let reader = first.token(Role::Reader, Some("acme")).await;
    let (_, cookie) = sign_in(&first.address, &reader, &[]).await;
    let response = page(&second.address, "/admin/tenants/acme", &cookie).await;
    assert_eq!(response.status(), 200, "a session works on every replica");

    let id: i64 = sqlx::query_scalar("SELECT token_id FROM admin_sessions")
        .fetch_one(&first.pool)
        .await
        .expect("session");
    let revoked = first
        .client
        .delete(format!("{}/api/administrator/tokens/{id}", first.address))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("sent");
    assert_eq!(revoked.status(), 200);
    let started = Instant::now();
    loop {
        let response = page(&second.address, "/admin/tenants/acme", &cookie).await;
        if response.status() == 303 {
            assert_eq!(response.headers()[LOCATION], "/admin/login");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still signed in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An expiring token: its session ends when the token does.
    let admin = first.token(Role::Admin, Some("acme")).await;
    let (_, cookie) = sign_in(&first.address, &admin, &[]).await;
    assert_eq!(page(&first.address, "/admin", &cookie).await.status(), 303);
    assert_eq!(
        page(&first.address, "/admin/tenants/acme", &cookie)
            .await
            .status(),
        200
    );
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() WHERE revoked_at IS NULL AND role = 'admin'",
    )
    .execute(&first.pool)
    .await
    .expect("expire");
    let response = page(&second.address, "/admin/tenants/acme", &cookie).await;
    assert_eq!(response.status(), 303, "an expired token's session is over");

    // A session's own expiry ends it too.
    let reader = first.token(Role::Reader, Some("acme")).await;
    let (_, cookie) = sign_in(&first.address, &reader, &[]).await;
    sqlx::query("UPDATE admin_sessions SET expires_at = now()")
        .execute(&first.pool)
        .await
        .expect("expire sessions");
    assert_eq!(
        page(&first.address, "/admin/tenants/acme", &cookie)
            .await
            .status(),
        303
    );
}

#[tokio::test]
async fn signing_out_ends_the_session_for_good() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let (cookie, csrf) = signed_in(&app, Role::Reader).await;
    // Without the CSRF token, sign-out is refused (and the session lives on).
    let refused = post(&app.address, "/admin/logout", &cookie, "wrong", &[]).await;
    assert_eq!(refused.status(), 403);
    let response = post(&app.address, "/admin/logout", &cookie, &csrf, &[]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/admin/login");
    let cleared = response.headers()[SET_COOKIE].to_str().expect("ascii");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // Replaying the old cookie gets nothing.
    let response = page(&app.address, "/admin/tenants/acme", &cookie).await;
    assert_eq!(response.status(), 303);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_sessions")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_tenant_token_sees_only_its_tenant_and_an_owner_sees_all() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    app.add_tenant("globex").await;
    let reader = app.token(Role::Reader, Some("acme")).await;
    let (_, cookie) = sign_in(&app.address, &reader, &[]).await;
    let other = page(&app.address, "/admin/tenants/globex", &cookie).await;
    let missing = page(&app.address, "/admin/tenants/nosuch", &cookie).await;
    assert_eq!(other.status(), 404);
    assert_eq!(missing.status(), 404);
    let (other, missing) = (
        other.text().await.expect("html"),
        missing.text().await.expect("html"),
    );
    assert_eq!(
        other.replace("globex", "X"),
        missing.replace("nosuch", "X"),
        "another tenant answers exactly as a missing one"
    );
    assert!(other.contains("data-code=\"invalid-tenant\""));

    let owner = app.token(Role::Owner, None).await;
    let (_, cookie) = sign_in(&app.address, &owner, &[]).await;
    let response = page(&app.address, "/admin", &cookie).await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.expect("html");
    assert!(html.contains("data-tenant=\"acme\"") && html.contains("data-tenant=\"globex\""));
    assert!(html.contains("never synced"));
    for path in ["/admin/tenants/acme", "/admin/tenants/globex"] {
        assert_eq!(page(&app.address, path, &cookie).await.status(), 200);
    }
    // Malformed paging and filters are 400 pages that say what to do.
    for (query, code) in [
        ("page=0", "invalid-page"),
        ("page=abc", "invalid-page"),
        ("owner=%00", "invalid-accountid"),
    ] {
        let response = page(
            &app.address,
            &format!("/admin/tenants/acme?{query}"),
            &cookie,
        )
        .await;
        assert_eq!(response.status(), 400, "{query}");
        let html = response.text().await.expect("html");
        assert!(
            html.contains(&format!("data-code=\"{code}\"")),
            "{query}: {html}"
        );
    }
}

#[tokio::test]
async fn a_reader_cannot_post_and_no_one_can_post_from_another_site() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let origin = app.address.clone();
    let same = [
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];

    let reader = app.token(Role::Reader, Some("acme")).await;
    let (_, cookie) = sign_in(&app.address, &reader, &[]).await;
    let html = page(&app.address, "/admin/tenants/acme", &cookie)
        .await
        .text()
        .await
        .expect("html");
    assert!(!html.contains("/admin/tenants/acme/sync") && !html.contains("/refresh\""));
    let csrf = csrf_in(&html);
    for action in ["sync", "refresh"] {
        let path = format!("/admin/tenants/acme/{action}");
        let response = post(&app.address, &path, &cookie, &csrf, &same).await;
        assert_eq!(response.status(), 403, "a reader may not {action}");
        assert!(response
            .text()
            .await
            .expect("html")
            .contains("data-code=\"forbidden\""));
    }

    let (cookie, csrf) = signed_in(&app, Role::Admin).await;
    let path = "/admin/tenants/acme/refresh";
    for (headers, code) in [
        (
            vec![(ORIGIN.as_str(), "http://evil.example")],
            "cross-site-request",
        ),
        (vec![("origin", "null")], "cross-site-request"),
        (vec![("sec-fetch-site", "cross-site")], "cross-site-request"),
        (vec![("sec-fetch-site", "same-site")], "cross-site-request"),
    ] {
        let response = post(&app.address, path, &cookie, &csrf, &headers).await;
        assert_eq!(response.status(), 403, "{headers:?}");
        assert!(response
            .text()
            .await
            .expect("html")
            .contains(&format!("data-code=\"{code}\"")));
    }
    let response = post(&app.address, path, &cookie, "forged", &same).await;
    assert_eq!(response.status(), 403);
    assert!(response
        .text()
        .await
        .expect("html")
        .contains("invalid-csrf-token"));
    let refreshes: i64 = sqlx::query_scalar("SELECT count(*) FROM balance_refreshes")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(refreshes, 0, "nothing refused started anything");
    assert_eq!(sync_runs(&app).await, 0);

    // The page's own form, as the browser sends it, works.
    let response = post(&app.address, path, &cookie, &csrf, &same).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[LOCATION],
        "/admin/tenants/acme?notice=refresh-started"
    );
}

#[tokio::test]
async fn an_empty_tenant_page_says_what_to_do_for_each_role() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let (admin, _) = signed_in(&app, Role::Admin).await;
    let html = page(&app.address, "/admin/tenants/acme", &admin)
        .await
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("No accounts stored yet. Start a sync above"),
        "{html}"
    );
    assert!(html.contains("No balances read yet. Start a refresh above"));
    assert!(html.contains("None: every account's latest balance was read."));
    // Every form field has a label a screen reader reads.
    assert!(html.contains("<label for=\"owner\">"), "{html}");

    let (reader, _) = signed_in(&app, Role::Reader).await;
    let html = page(&app.address, "/admin/tenants/acme", &reader)
        .await
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("Ask an admin to sync the tenant (or run <code>tally sync acme</code>)"),
        "{html}"
    );
    assert!(html.contains("They appear once the refresher has read the accounts."));

    // A filter that matches nothing says so and how to clear it.
    let html = page(
        &app.address,
        "/admin/tenants/acme?owner=user_nobody",
        &reader,
    )
    .await
    .text()
    .await
    .expect("html");
    assert!(
        html.contains("No listed account has owner “user_nobody”"),
        "{html}"
    );
}

#[tokio::test]
async fn a_removed_tenant_is_not_listed_and_its_page_and_buttons_answer_tenant_removed() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    app.add_tenant("globex").await;
    let owner = app.token(Role::Owner, None).await;
    let (_, cookie) = sign_in(&app.address, &owner, &[]).await;
    let html = page(&app.address, "/admin/tenants/acme", &cookie)
        .await
        .text()
        .await
        .expect("html");
    let csrf = csrf_in(&html);
    tally::commands::tenant::remove(&app.pool, "acme", false, false, &tally::audit::Actor::cli())
        .await
        .expect("removed");

    let overview = page(&app.address, "/admin", &cookie)
        .await
        .text()
        .await
        .expect("html");
    assert!(overview.contains("/admin/tenants/globex"), "{overview}");
    assert!(!overview.contains("/admin/tenants/acme"), "{overview}");
    let response = page(&app.address, "/admin/tenants/acme", &cookie).await;
    assert_eq!(response.status(), 404);
    let html = response.text().await.expect("html");
    assert!(html.contains("data-code=\"tenant-removed\""), "{html}");

    let same = [
        ("origin", app.address.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    for action in ["sync", "refresh"] {
        let path = format!("/admin/tenants/acme/{action}");
        let response = post(&app.address, &path, &cookie, &csrf, &same).await;
        assert_eq!(response.status(), 404, "{action}");
        let html = response.text().await.expect("html");
        assert!(
            html.contains("data-code=\"tenant-removed\""),
            "{action}: {html}"
        );
    }
    let refreshes: i64 = sqlx::query_scalar("SELECT count(*) FROM balance_refreshes")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(refreshes, 0, "no refresh started for a removed tenant");
    assert_eq!(
        sync_runs(&app).await,
        0,
        "no sync started for a removed tenant"
    );
}

#[tokio::test]
async fn the_pages_origin_is_the_host_served_or_configured_never_a_clients_forwarded_host() {
    let app = spawn_app().await;
    app.add_tenant("acme").await;
    let (cookie, csrf) = signed_in(&app, Role::Admin).await;
    let path = "/admin/tenants/acme/refresh";
    // A client naming its own origin in X-Forwarded-Host does not make it ours.
    let forged = [
        ("x-forwarded-host", "evil.example"),
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "same-origin"),
    ];
    let response = post(&app.address, path, &cookie, &csrf, &forged).await;
    assert_eq!(response.status(), 403);
    let html = response.text().await.expect("html");
    assert!(html.contains("data-code=\"cross-site-request\""), "{html}");
    // The Host it was sent to is the origin, whatever is forwarded.
    let own = [
        ("x-forwarded-host", "evil.example"),
        ("origin", app.address.as_str()),
    ];
    assert_eq!(
        post(&app.address, path, &cookie, &csrf, &own)
            .await
            .status(),
        303
    );

    // Configured, only server.public_url is the origin.
    let configured = spawn_app_with(|settings| {
        settings.server.public_url = Some("https://tally.example.com".into());
    })
    .await;
    configured.add_tenant("acme").await;
    let (cookie, csrf) = signed_in(&configured, Role::Admin).await;
    let response = post(
        &configured.address,
        path,
        &cookie,
        &csrf,
        &sent_from("https://tally.example.com"),
    )
    .await;
    assert_eq!(response.status(), 303);
    let response = post(
        &configured.address,
        path,
        &cookie,
        &csrf,
        &sent_from(&configured.address),
    )
    .await;
    assert_eq!(response.status(), 403);

    // Behind a proxy trusted to say it, the forwarded origin counts.
    let proxied = spawn_app_with(|settings| settings.server.trust_forwarded_headers = true).await;
    proxied.add_tenant("acme").await;
    let (cookie, csrf) = signed_in(&proxied, Role::Admin).await;
    let forwarded = [
        ("x-forwarded-host", "tally.example.com"),
        ("x-forwarded-proto", "https"),
        ("origin", "https://tally.example.com"),
    ];
    assert_eq!(
        post(&proxied.address, path, &cookie, &csrf, &forwarded)
            .await
            .status(),
        303
    );
}

/// The headers a browser sends with a form posted from a page of `origin`.
fn sent_from(origin: &str) -> [(&str, &str); 2] {
    [("origin", origin), ("sec-fetch-site", "same-origin")]
}
