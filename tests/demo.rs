//! `tally demo` end to end, as a new user runs it: on a private PostgreSQL cluster
//! (as when no server answers), then the printed token and curl targets work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::test]
async fn the_demo_serves_correct_totals_and_explained_failures_on_a_private_cluster() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["demo", "--bind", "127.0.0.1:0", "--private-db"])
        .env_remove("DATABASE_URL")
        .env_remove("TALLY_MASTER_KEY")
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo starts");
    let stdout = demo.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let started = Instant::now();
    let (mut address, mut reader, mut admin, mut output) = (None, None, None, String::new());
    let mut how_to_sign_in = false;
    while address.is_none() || reader.is_none() || admin.is_none() || !how_to_sign_in {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "demo did not come up:\n{output}"
        );
        let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(240)) else {
            break;
        };
        output.push_str(&line);
        output.push('\n');
        if let Some(rest) = line.strip_prefix("== tally is serving on ") {
            address = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(token) = line.strip_prefix("reader token (tenant acme): ") {
            reader = Some(token.trim().to_owned());
        }
        if let Some(page) = line.strip_prefix("admin page: ") {
            admin = Some(page.trim().to_owned());
        }
        how_to_sign_in |= line.contains("sign in by pasting the reader token");
    }
    let (address, reader, admin) = (
        address.expect("address printed"),
        reader.expect("token printed"),
        admin.expect("the admin page's address printed"),
    );
    assert!(how_to_sign_in, "how to sign in is printed:\n{output}");

    assert!(output.contains("== balances of tenant acme =="), "{output}");
    assert!(
        output.contains("hint:"),
        "failures are explained:\n{output}"
    );

    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client
            .get(format!("{address}/api/administrator/connect/{path}"))
            .bearer_auth(&reader);
        async move {
            request
                .send()
                .await
                .expect("sent")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let body = get("balances?max_age=300").await;
    assert_eq!(body["accounts"]["total"], 50, "{body}");
    assert_eq!(
        body["accounts"]["failed"], 1,
        "one account was revoked: {body}"
    );
    assert!(body["failures"][0]["hint"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    assert!(!body["totals"].as_array().expect("totals").is_empty());
    assert_eq!(get("stripe-accounts-count").await, 50);

    // The balances the demo printed were fetched by its server's own refresher: the
    // refresh it ran is listed, finished, every account tried.
    let refreshes = get("balances/refreshes").await;
    let refresh = &refreshes["data"][0];
    assert_eq!(refresh["object"], "balanceRefresh", "{refreshes}");
    assert_eq!(refresh["status"], "succeeded", "{refresh}");
    assert_eq!(refresh["total"], 50, "{refresh}");
    assert_eq!(refresh["done"], 50, "{refresh}");

    sign_in_to_the_admin_page(&address, &admin, &reader).await;

    let killed = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    if let Some(mut err) = demo.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(status.success(), "demo exits 0 after SIGTERM: {stderr}");
    // The console tells the story; the retries of the two broken accounts are in the
    // log file, not interleaved with it.
    assert!(
        !stderr.contains("WARN") && !output.contains("WARN"),
        "no log lines on the console:\n{stderr}"
    );
    assert!(stderr.contains("demo: logs go to "), "{stderr}");
    let cluster = stderr
        .lines()
        .find_map(|l| l.strip_prefix("demo: private cluster in "))
        .expect("the demo started a private cluster");
    assert!(
        !std::path::Path::new(cluster).exists(),
        "the private cluster was removed"
    );
}

/// Does what the demo tells a person to: opens the admin page it printed, is sent to
/// sign in, pastes the reader token, and lands on tenant acme's page.
async fn sign_in_to_the_admin_page(address: &str, admin: &str, reader: &str) {
    assert_eq!(admin, format!("{address}/admin"));
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let location = |response: &reqwest::Response| {
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let first = browser.get(admin).send().await.expect("sent");
    assert_eq!(first.status(), 303);
    assert_eq!(location(&first), "/admin/login");
    let form = browser
        .get(format!("{address}/admin/login"))
        .send()
        .await
        .expect("sent");
    assert_eq!(form.status(), 200);
    assert!(form.text().await.expect("page").contains("Sign in"));

    let signed_in = browser
        .post(format!("{address}/admin/login"))
        .header("origin", address)
        .form(&[("token", reader)])
        .send()
        .await
        .expect("sent");
    assert_eq!(signed_in.status(), 303, "the reader token signs in");
    assert_eq!(location(&signed_in), "/admin");
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let home = browser
        .get(admin)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(home.status(), 303);
    assert_eq!(location(&home), "/admin/tenants/acme");
    let page = browser
        .get(format!("{address}/admin/tenants/acme"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(html.contains("Tenant acme"), "{html}");
    assert!(
        html.contains("1 account did not"),
        "the revoked account is explained: {html}"
    );
}
