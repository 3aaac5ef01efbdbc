//! Cursor paging beside offset paging (issue 9): `starting_after` / `ending_before`
//! on the Dashboard listing, the body still an array, an RFC 8288 `Link` on every
//! page; a cursor walk returns each account once, in offset order, even while
//! accounts are inserted.

use serde_json::Value;
use tally::domain::Role;

use crate::helpers::{account_object, ids, spawn_app, TestApp};

const LIST: &str = "/api/administrator/connect/stripe-accounts";

/// The `rel` link of a response, as a path.
fn link(response: &reqwest::Response, rel: &str) -> Option<String> {
    let header = response.headers().get("link")?.to_str().ok()?.to_owned();
    header.split(", ").find_map(|part| {
        let (target, params) = part.split_once(">; ")?;
        (params == format!("rel=\"{rel}\"")).then(|| target.trim_start_matches('<').to_owned())
    })
}

async fn page(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (Vec<String>, Option<String>, Option<String>) {
    let response = app.get(path, token).await;
    assert_eq!(response.status(), 200, "{path}");
    assert!(response.headers().contains_key("x-total-count"));
    let (next, prev) = (link(&response, "next"), link(&response, "prev"));
    let body: Value = response.json().await.expect("json");
    (ids(&body), next, prev)
}

#[tokio::test]
async fn a_cursor_walk_equals_the_offset_walk_even_while_accounts_arrive() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    // 53 accounts, three sharing each `created`, so pages end inside ties.
    let objects: Vec<Value> = (0..53)
        .map(|i| account_object(&format!("acct_1Cur{i:04}"), 1_700_000_000 + i / 3, None))
        .collect();
    app.store_accounts(tenant_id, &objects).await;
    let token = app.token(Role::Reader, Some("acme")).await;

    let mut by_offset = Vec::new();
    for offset in (0..53).step_by(7) {
        let (ids, _, _) = page(&app, &format!("{LIST}?offset={offset}&limit=7"), &token).await;
        by_offset.extend(ids);
    }
    assert_eq!(by_offset.len(), 53);

    let mut by_cursor = Vec::new();
    let mut next = Some(format!("{LIST}?limit=7"));
    let mut arrived = 0;
    let mut last_prev = None;
    while let Some(path) = next {
        let (ids, following, prev) = page(&app, &path, &token).await;
        by_cursor.extend(ids);
        next = following;
        last_prev = prev;
        // Newer accounts arrive mid-walk: they sort before the cursor, so the walk
        // neither repeats nor skips anything.
        arrived += 1;
        let newcomer = account_object(
            &format!("acct_1New{arrived:04}"),
            1_800_000_000 + arrived,
            None,
        );
        app.store_accounts(tenant_id, &[newcomer]).await;
    }
    assert_eq!(by_cursor, by_offset, "same accounts, same order, each once");

    // Walking back from the last page by rel="prev" gives the same, reversed (the
    // newcomers excepted, which are newer than everything walked).
    let mut backward = Vec::new();
    let mut prev = last_prev;
    let mut last_page: Vec<String> = by_cursor[by_cursor.len() - (53 % 7)..].to_vec();
    backward.extend(last_page.drain(..).rev());
    while let Some(path) = prev {
        let (ids, _, earlier) = page(&app, &path, &token).await;
        backward.extend(ids.into_iter().rev());
        prev = earlier;
    }
    let newcomers = backward
        .iter()
        .filter(|id| id.starts_with("acct_1New"))
        .count();
    assert_eq!(
        newcomers, arrived as usize,
        "the walk back reaches the newest"
    );
    let walked_back: Vec<String> = backward
        .into_iter()
        .filter(|id| !id.starts_with("acct_1New"))
        .collect();
    let mut expected = by_offset.clone();
    expected.reverse();
    assert_eq!(walked_back, expected);
}

#[tokio::test]
async fn one_owners_cursor_walk_equals_its_offset_walk() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    // Two owners interleaved; the cursor walk of one must never show the other's.
    let objects: Vec<Value> = (0..30)
        .map(|i| {
            let owner = if i % 3 == 0 { "owner_a" } else { "owner_b" };
            account_object(
                &format!("acct_1Own{i:04}"),
                1_700_000_000 + i / 2,
                Some(owner),
            )
        })
        .collect();
    app.store_accounts(tenant_id, &objects).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let (by_offset, _, _) =
        page(&app, &format!("{LIST}?accountid=owner_a&limit=100"), &token).await;
    assert_eq!(by_offset.len(), 10);
    let mut by_cursor = Vec::new();
    let mut next = Some(format!("{LIST}?accountid=owner_a&limit=3"));
    while let Some(path) = next {
        let response = app.get(&path, &token).await;
        assert_eq!(response.headers()["x-total-count"], "10", "{path}");
        let following = link(&response, "next");
        let body: Value = response.json().await.expect("json");
        by_cursor.extend(ids(&body));
        next = following;
    }
    assert_eq!(by_cursor, by_offset);
    // A valid cursor with an owner nobody has is still an unknown owner.
    let (status, body) = app
        .get_json(
            &format!("{LIST}?accountid=owner_z&starting_after={}", by_offset[0]),
            &token,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("invalid-accountid"))
    );
}

#[tokio::test]
async fn cursors_are_checked() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    app.store_accounts(
        tenant_id,
        &[account_object("acct_1Only", 1_700_000_000, None)],
    )
    .await;
    let token = app.token(Role::Reader, Some("acme")).await;
    for (query, code) in [
        ("starting_after=acct_1Nobody", "invalid-starting-after"),
        ("ending_before=acct_1Nobody", "invalid-ending-before"),
        ("starting_after=nonsense", "invalid-starting-after"),
        (
            "starting_after=acct_1Only&ending_before=acct_1Only",
            "invalid-paging",
        ),
        ("starting_after=acct_1Only&offset=1", "invalid-paging"),
        ("ending_before=acct_1Only&all=true", "invalid-paging"),
        ("starting_after=acct_1Only&limit=501", "invalid-limit"),
    ] {
        let (status, body) = app.get_json(&format!("{LIST}?{query}"), &token).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    // The only account: nothing after it, and an empty array says so.
    let (status, body) = app
        .get_json(&format!("{LIST}?starting_after=acct_1Only"), &token)
        .await;
    assert_eq!((status, body), (200, serde_json::json!([])));
}
