//! Streamed listings (`all=true`, `limit` above 500) under slow and stalled readers:
//! they never hold the pool, they are capped per token and in total, a reader that
//! stops reading is cut off, and the body is the same array offset paging gives.

use std::time::{Duration, Instant};

use serde_json::Value;
use tally::domain::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{account_object, ids, spawn_app, spawn_app_with, TestApp};

const LIST: &str = "/api/administrator/connect/stripe-accounts";

/// Stores `n` accounts, about 3 KB each as records; `owner` owns every third one.
async fn accounts(app: &TestApp, tenant_id: i64, n: i64, owner: Option<&str>) {
    let objects: Vec<Value> = (0..n)
        .map(|i| {
            // Ten accounts share each `created`, so chunk edges fall inside ties.
            let owned = owner.filter(|_| i % 3 == 0);
            let mut object =
                account_object(&format!("acct_1Str{i:06}"), 1_600_000_000 + i / 10, owned);
            object["business_profile"]["support_address"] = Value::String("x".repeat(2000));
            object
        })
        .collect();
    for batch in objects.chunks(1000) {
        app.store_accounts(tenant_id, batch).await;
    }
}

/// Sends a request for `path` and reads only the start of the answer (its status
/// line), then reads nothing more: a client that went to sleep.
async fn stalled_reader(app: &TestApp, path: &str, token: &str) -> (TcpStream, String) {
    let address = app
        .address
        .strip_prefix("http://")
        .expect("http address")
        .parse()
        .expect("socket address");
    let socket = TcpSocket::new_v4().expect("socket");
    // A small receive window, so the server's writes block early.
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut stream = socket.connect(address).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let mut head = [0_u8; 256];
    let n = stream.read(&mut head).await.expect("the answer begins");
    let text = String::from_utf8_lossy(&head[..n]).into_owned();
    (stream, text)
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

#[tokio::test]
async fn thirty_two_stalled_streams_leave_the_pool_to_everyone_else() {
    // The production pool size (the test config keeps pools small).
    let app = spawn_app_with(|settings| settings.database.max_connections = 16).await;
    assert_eq!(
        app.settings.database.max_connections, 16,
        "the default pool"
    );
    let tenant_id = app.add_tenant("acme").await;
    // About 11 MB per stream: far more than the socket buffers take in.
    accounts(&app, tenant_id, 4000, None).await;
    let mut readers = Vec::new();
    for _ in 0..8 {
        let token = app.token(Role::Reader, Some("acme")).await;
        for _ in 0..4 {
            let (stream, head) = stalled_reader(&app, &format!("{LIST}?all=true"), &token).await;
            assert_eq!(status_of(&head), 200, "{head}");
            readers.push(stream);
        }
    }
    assert_eq!(readers.len(), 32);
    // Give every stream the time to fill what its client will not read.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let other = app.token(Role::Reader, Some("acme")).await;
    let started = Instant::now();
    let response = app.get(&format!("{LIST}?limit=5"), &other).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    eprintln!("with 32 stalled streams an ordinary page answered in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    drop(readers);
}

#[tokio::test]
async fn streams_are_capped_per_token_and_in_total() {
    let app = spawn_app_with(|s| {
        s.api.max_streams = 3;
        s.api.max_streams_per_token = 2;
    })
    .await;
    let tenant_id = app.add_tenant("acme").await;
    accounts(&app, tenant_id, 4000, None).await;
    let all = format!("{LIST}?all=true");
    let first = app.token(Role::Reader, Some("acme")).await;
    let second = app.token(Role::Reader, Some("acme")).await;
    let third = app.token(Role::Reader, Some("acme")).await;

    let (a1, head) = stalled_reader(&app, &all, &first).await;
    assert_eq!(status_of(&head), 200);
    let (_a2, head) = stalled_reader(&app, &all, &first).await;
    assert_eq!(status_of(&head), 200);
    // A third stream of the same token is refused, with the error body.
    let response = app.get(&format!("{LIST}?limit=501"), &first).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "error");
    assert_eq!(body["code"], "too-many-streams");
    // Ordinary pages are not streams: never refused.
    assert_eq!(
        app.get(&format!("{LIST}?limit=500"), &first).await.status(),
        200
    );

    let (_b1, head) = stalled_reader(&app, &all, &second).await;
    assert_eq!(status_of(&head), 200);
    // The server's total is reached: any token is refused.
    let (status, body) = app.get_json(&all, &third).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too-many-streams"))
    );

    // A client that leaves frees its slot.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = app.get(&format!("{LIST}?all=true"), &third).await;
        if response.status() == 200 {
            let body: Value = response.json().await.expect("a whole array");
            assert_eq!(body.as_array().map(Vec::len), Some(4000));
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_its_slot_freed() {
    let app = spawn_app_with(|s| {
        s.api.max_streams_per_token = 1;
        s.api.stream_idle_timeout_secs = 1;
    })
    .await;
    let tenant_id = app.add_tenant("acme").await;
    accounts(&app, tenant_id, 4000, None).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let all = format!("{LIST}?all=true");

    let started = Instant::now();
    let (mut stalled, head) = stalled_reader(&app, &all, &token).await;
    assert_eq!(status_of(&head), 200);
    let (status, _) = app.get_json(&all, &token).await;
    assert_eq!(status, 429, "the token's one stream is taken");

    // After the idle timeout the slot is free again...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.get(&all, &token).await;
        if response.status() == 200 {
            let body: Value = response.json().await.expect("a whole array");
            assert_eq!(body.as_array().map(Vec::len), Some(4000));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled stream kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a stalled stream's slot was free again after {:?}",
        started.elapsed()
    );

    // ...and the stalled client, when it wakes, finds its connection cut before the
    // end of the array (never a short array that looks whole).
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("the server closed the connection");
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "the chunked body must not end cleanly"
    );
}

#[tokio::test]
async fn a_stream_is_byte_for_byte_the_page_and_keeps_offset_order_across_chunks() {
    use tally::store::accounts::CHUNK_ROWS;

    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let owner = "owner_streamed";
    // Past many chunk edges (a first chunk of 64, then as many as 2 MiB holds, at most
    // 2,048), ending inside a chunk.
    let n = 2 * CHUNK_ROWS + 300;
    accounts(&app, tenant_id, n as i64, Some(owner)).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let bytes = |path: String| {
        let app = &app;
        let token = &token;
        async move {
            let response = app.get(&path, token).await;
            assert_eq!(response.status(), 200, "{path}");
            response.bytes().await.expect("body").to_vec()
        }
    };
    // Collected pages of 500 (the largest page not streamed), their records joined
    // into one array: what a stream of the same records must be, byte for byte.
    let joined_pages = |pages: Vec<Vec<u8>>| {
        let records: Vec<&[u8]> = pages
            .iter()
            .map(|page| &page[1..page.len() - 1])
            .filter(|records| !records.is_empty())
            .collect();
        [b"[".as_slice(), &records.join(b",".as_slice()), b"]"].concat()
    };

    let mut pages = Vec::new();
    for offset in (0..n).step_by(500) {
        pages.push(bytes(format!("{LIST}?offset={offset}&limit=500")).await);
    }
    let paged_bytes = joined_pages(pages);
    assert_eq!(bytes(format!("{LIST}?all=true")).await, paged_bytes);
    assert_eq!(bytes(format!("{LIST}?limit={}", n + 1)).await, paged_bytes);

    // Offset pages of 97, joined, are the stream, past every chunk edge.
    let mut paged = Vec::new();
    for offset in (0..n).step_by(97) {
        let (_, body) = app
            .get_json(&format!("{LIST}?offset={offset}&limit=97"), &token)
            .await;
        paged.extend(ids(&body));
    }
    let streamed: Value = serde_json::from_slice(&paged_bytes).expect("json");
    assert_eq!(ids(&streamed), paged);
    // Streamed pages deep in the listing, one across a chunk edge, and one owner's
    // records streamed.
    let (_, deep) = app
        .get_json(&format!("{LIST}?offset=137&limit=600"), &token)
        .await;
    assert_eq!(ids(&deep), paged[137..737]);
    let across = CHUNK_ROWS - 100;
    let (_, across_edge) = app
        .get_json(&format!("{LIST}?offset={across}&limit=600"), &token)
        .await;
    assert_eq!(ids(&across_edge), paged[across..across + 600]);
    let owned_stream = bytes(format!("{LIST}?accountid={owner}&all=true")).await;
    let mut owned_pages = Vec::new();
    for offset in (0..n / 3 + 1).step_by(500) {
        owned_pages.push(
            bytes(format!(
                "{LIST}?accountid={owner}&offset={offset}&limit=500"
            ))
            .await,
        );
    }
    assert_eq!(owned_stream, joined_pages(owned_pages));
    let owned: Value = serde_json::from_slice(&owned_stream).expect("json");
    assert_eq!(ids(&owned).len(), n.div_ceil(3));

    // Rows written before the object was also kept as text stream the same records.
    sqlx::query("UPDATE stripe_accounts SET stripe_object_text = NULL WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&app.pool)
        .await
        .expect("rows from before");
    let from_jsonb: Value =
        serde_json::from_slice(&bytes(format!("{LIST}?all=true")).await).expect("json");
    assert_eq!(from_jsonb, streamed);
}

/// Chunks are sized by bytes: large account objects are read a few dozen at a time and
/// small ones thousands at a time, and a stream whose objects change size partway gives
/// exactly the pages' records, in their order, across every edge.
#[tokio::test]
async fn a_stream_of_objects_whose_size_changes_partway_is_the_pages_joined() {
    let app = spawn_app().await;
    let tenant_id = app.add_tenant("acme").await;
    let n: i64 = 700;
    let objects: Vec<Value> = (0..n)
        .map(|i| {
            let mut object =
                account_object(&format!("acct_1Big{i:06}"), 1_600_000_000 + i / 10, None);
            // The newest 300 (listed first) carry 30 KB each, the rest 100 bytes.
            let size = if i >= 400 { 30_000 } else { 100 };
            object["business_profile"]["support_address"] = Value::String("y".repeat(size));
            object
        })
        .collect();
    for batch in objects.chunks(100) {
        app.store_accounts(tenant_id, batch).await;
    }
    let token = app.token(Role::Reader, Some("acme")).await;

    let streamed = app.get(&format!("{LIST}?all=true"), &token).await;
    assert_eq!(streamed.status(), 200);
    let streamed = streamed.bytes().await.expect("body").to_vec();
    let mut records: Vec<Vec<u8>> = Vec::new();
    for offset in (0..n).step_by(500) {
        let page = app
            .get(&format!("{LIST}?offset={offset}&limit=500"), &token)
            .await
            .bytes()
            .await
            .expect("page")
            .to_vec();
        records.push(page[1..page.len() - 1].to_vec());
    }
    let joined = [b"[".as_slice(), &records.join(b",".as_slice()), b"]"].concat();
    assert_eq!(streamed, joined, "the stream is the pages, byte for byte");
    let listed: Value = serde_json::from_slice(&streamed).expect("json");
    // Newest `created` first, ties by stripeid.
    let mut expected: Vec<(i64, String)> = (0..n)
        .map(|i| (-(i / 10), format!("acct_1Big{i:06}")))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids(&listed), expected);
}
