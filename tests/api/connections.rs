//! Connections that send nothing, send their head a byte at a time, sit idle after a
//! response, or pile up past the cap: each is closed in bounded time, and a normal
//! request still gets through. Timeouts are set small here and the bounds are
//! generous, so a loaded machine does not fail them.

use std::time::{Duration, Instant};

use serde_json::Value;
use tally::domain::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{account_object, spawn_app_with, TestApp};

/// Far beyond the 1 s timeouts these tests set: only a connection nobody closes
/// takes this long.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.socket_address())
        .await
        .expect("connect")
}

/// Reads until the server closes the connection; what it sent, or `None` if it was
/// still open after `CLOSED_WITHIN`.
async fn until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + CLOSED_WITHIN;
    loop {
        let mut buf = [0_u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn short_timeouts(settings: &mut tally::config::Settings) {
    settings.server.header_read_timeout_secs = 1;
    settings.server.keep_alive_timeout_secs = 1;
}

#[tokio::test]
async fn a_connection_that_sends_no_head_or_sends_it_a_byte_at_a_time_is_closed() {
    let app = spawn_app_with(short_timeouts).await;

    // Nothing at all.
    let mut silent = connect(&app).await;
    let started = Instant::now();
    assert!(
        until_closed(&mut silent).await.is_some(),
        "a silent connection stayed open"
    );
    eprintln!(
        "a silent connection was closed after {:?}",
        started.elapsed()
    );

    // A head trickling in at a byte every 200 ms: it never completes in time, and the
    // bytes arriving do not keep the connection open.
    let mut slow = connect(&app).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Slow: abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n\r\n";
    let started = Instant::now();
    let mut closed = false;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0_u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("answered a head that never completed"),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < CLOSED_WITHIN,
            "the slow head kept its connection"
        );
    }
    assert!(closed, "the whole slow head was taken");
    eprintln!("a slow head was cut off after {:?}", started.elapsed());

    // A normal request on a fresh connection is answered as always.
    let answer = app
        .raw_exchange(b"GET /healthz HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(crate::helpers::parse_raw_answer(&answer).0, 200);
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_idle_but_never_while_it_is_served() {
    let app = spawn_app_with(short_timeouts).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")
        .await
        .expect("written");
    let seen = until_closed(&mut stream).await.expect("closed once idle");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");

    // A request that takes longer than both timeouts (a balance poll waiting on a
    // refresh from a slow Stripe) is answered on its connection: serving is not idling.
    let sim = crate::helpers::spawn_sim(tally::sim::SimConfig {
        platforms: 1,
        accounts_per_platform: 1,
        latency_ms: 2500,
        ..tally::sim::SimConfig::default()
    })
    .await;
    let tenant = app.add_sim_platform_tenant("acme", &sim, 0).await;
    let ids = sim.keys().platforms[0].accounts.clone();
    app.store_sim_accounts(tenant, &sim, &ids, None).await;
    let token = app.token(Role::Reader, Some("acme")).await;
    let mut stream = connect(&app).await;
    let request = format!(
        "GET /api/administrator/connect/balances?max_age=0&wait=25 HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("written");
    let seen = until_closed(&mut stream).await.expect("closed once idle");
    let (status, _, body) = crate::helpers::parse_raw_answer(&seen);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).expect("a whole JSON body");
    assert_eq!(body["accounts"]["ok"], 1, "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Stripe answered in 2.5 s"
    );
}

#[tokio::test]
async fn at_the_connection_cap_idle_connections_make_room_and_a_live_request_is_answered() {
    // Timeouts far beyond the test: only the cap closes anything here.
    let app = spawn_app_with(|settings| {
        settings.server.max_connections = 4;
        settings.server.header_read_timeout_secs = 600;
        settings.server.keep_alive_timeout_secs = 600;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(connect(&app).await);
    }
    // A live client: answered, although twelve idle connections came first.
    let started = Instant::now();
    let response = tokio::time::timeout(
        CLOSED_WITHIN,
        app.client.get(format!("{}/healthz", app.address)).send(),
    )
    .await
    .expect("answered while idle connections hold the cap")
    .expect("sent");
    assert_eq!(response.status(), 200);
    eprintln!(
        "with the cap full of idle connections, /healthz answered in {:?}",
        started.elapsed()
    );
    // The oldest idle ones were closed to make room (at most four stay open).
    let mut closed = 0;
    for stream in idle.iter_mut().take(8) {
        if until_closed(stream).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 8, "the oldest idle connections were closed");
}

#[tokio::test]
async fn a_stalled_stream_that_loses_its_slot_closes_its_connection() {
    let app = spawn_app_with(|settings| {
        settings.api.max_streams_per_token = 1;
        settings.api.stream_idle_timeout_secs = 1;
    })
    .await;
    let tenant = app.add_tenant("acme").await;
    let objects: Vec<Value> = (0..4000)
        .map(|i| {
            let mut object = account_object(&format!("acct_1Cut{i:06}"), 1_600_000_000 + i, None);
            object["business_profile"]["support_address"] = Value::String("x".repeat(2000));
            object
        })
        .collect();
    for batch in objects.chunks(1000) {
        app.store_accounts(tenant, batch).await;
    }
    let token = app.token(Role::Reader, Some("acme")).await;
    let all = "/api/administrator/connect/stripe-accounts?all=true";

    // A client that keeps reading, but only a trickle: its writes make progress, so
    // only the stream's own idle timeout ends it.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut trickle = socket.connect(app.socket_address()).await.expect("connect");
    let request =
        format!("GET {all} HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {token}\r\n\r\n");
    trickle
        .write_all(request.as_bytes())
        .await
        .expect("written");
    let mut head = [0_u8; 64];
    let n = trickle.read(&mut head).await.expect("the answer begins");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            let mut buf = [0_u8; 1024];
            match trickle.read(&mut buf).await {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            }
            if started.elapsed() > Duration::from_secs(120) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // The stream loses its slot...
    let freed = Instant::now();
    loop {
        // (The slot is per token: the same token tells when it is free.)
        let response = app.get(all, &token).await;
        let status = response.status();
        drop(response);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            freed.elapsed() < CLOSED_WITHIN,
            "the trickling stream kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slot_freed_after = freed.elapsed();
    // ...and its connection goes with it, not after the megabytes already buffered
    // for it have trickled out.
    let closed_after = tokio::time::timeout(CLOSED_WITHIN, reader)
        .await
        .expect("the trickling connection was closed")
        .expect("reader task")
        .expect("closed");
    eprintln!("slot freed after {slot_freed_after:?}, connection closed after {closed_after:?}");
}
