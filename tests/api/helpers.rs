//! Test harness: every test gets its own Postgres database (dropped afterwards) and
//! a real tally server on port 0.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tally::app::Application;
use tally::commands::tenant::TenantSpec;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::domain::{Role, StripeAccountId};
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::tenants::StripeTenants;

/// The server Postgres runs on; tests create and drop their own databases in it.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Only the owner drops the database; aliases (other replicas) do not.
    owner: bool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connect to Postgres");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create test database");
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(slash) => format!("{}/{name}", &base[..slash]),
            None => panic!("TEST_DATABASE_URL needs a database path"),
        };
        TestDb {
            name,
            url,
            owner: true,
        }
    }

    /// The same database for another replica; dropping it leaves the database.
    pub fn alias(&self) -> TestDb {
        TestDb {
            name: self.name.clone(),
            url: self.url.clone(),
            owner: false,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let name = self.name.clone();
        // Drop runs outside any async context we can rely on: use a private runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for cleanup");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let _ = admin
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// A pool on `db` migrated as a tally from before migration `version` left it, and
/// every migration, to run the rest with once the test has stored its old rows.
pub async fn migrated_before(db: &TestDb, version: i64) -> (PgPool, sqlx::migrate::Migrator) {
    let pool = PgPool::connect(&db.url).await.expect("connect");
    let all = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
    .expect("migrations");
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            all.iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.expect("the earlier migrations");
    (pool, all)
}

/// How a test's servers and CLI reach its database: a change to their settings, such
/// as `Bouncer::route` (through PgBouncer); `&|_| {}` for directly.
pub type Route<'a> = dyn Fn(&mut Settings) + Sync + 'a;

pub fn test_settings() -> Settings {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    Settings::load_from(&dir, "test").expect("test settings")
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub master: MasterKey,
    /// The same key, base64, for running the CLI against this app's database.
    pub master_base64: String,
    pub settings: Settings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<tokio::task::JoinHandle<()>>,
    // Last: dropped after the pool.
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::create().await;
    spawn_app_on(db, MasterKey::generate_base64(), configure).await
}

/// A server on an existing test database: a second replica of an app, say, or one
/// started with another master key.
pub async fn spawn_app_on(
    db: TestDb,
    master_base64: String,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings();
    settings.database.url = SecretString::from(db.url.clone());
    settings.server.bind = "127.0.0.1:0".parse().expect("address");
    configure(&mut settings);
    let pool = store::pool(&settings.database).expect("pool");
    match &settings.database.migrate_url {
        Some(direct) => store::migrate_at(direct).await,
        None => store::migrate(&pool).await,
    }
    .expect("migrations apply");
    let master = MasterKey::from_base64(&master_base64).expect("master key");
    let stripe = Arc::new(
        StripeTenants::new(
            &settings.stripe,
            Arc::new(MasterKey::from_base64(&master_base64).expect("master key")),
        )
        .expect("stripe client")
        .with_shared_budget(pool.clone()),
    );
    let app = Application::with_parts(settings.clone(), pool.clone(), stripe)
        .await
        .expect("application builds");
    let address = format!("http://{}", app.address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = stopped.await;
        })
        .await
        .expect("the server runs");
    });
    TestApp {
        address,
        pool,
        client: reqwest::Client::new(),
        master,
        master_base64,
        settings,
        stop: Some(stop),
        running: Some(running),
        db,
    }
}

impl TestApp {
    /// What SIGTERM does to `tally serve`: stop accepting, let in-flight work finish
    /// or give it back, and return once everything has stopped.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.await.expect("the server stops cleanly");
        }
    }
}

pub const PLATFORM_KEY: &str = "sk_test_51PlatformSecretKeyValue0001";

impl TestApp {
    /// Adds a platform tenant through the same code path as `tally tenant add`.
    pub async fn add_tenant(&self, slug: &str) -> i64 {
        self.add_tenant_with_key(slug, PLATFORM_KEY).await;
        store::tenants::find_by_slug(&self.pool, slug)
            .await
            .expect("query")
            .expect("tenant exists")
            .id
    }

    pub async fn add_tenant_with_key(&self, slug: &str, key: &str) {
        let spec = TenantSpec::new(slug, SecretString::from(key.to_owned()));
        tally::commands::tenant::add(&self.pool, &self.master, &self.settings, spec)
            .await
            .expect("tenant added");
    }

    pub async fn token(&self, role: Role, tenant: Option<&str>) -> String {
        use secrecy::ExposeSecret;
        // A pool of its own: a test that drops a sync mid-transaction (a "killed"
        // process) may leave a shared pooled connection inside that transaction for a
        // moment, and a token created there would not be visible to the server.
        let pool = PgPool::connect(&self.db.url).await.expect("connect");
        let token = tally::tokens::create(&pool, role, tenant)
            .await
            .expect("token created")
            .expose_secret()
            .to_owned();
        pool.close().await;
        token
    }

    /// Stores accounts the way sync does: through the store's upsert.
    pub async fn store_accounts(&self, tenant_id: i64, objects: &[Value]) {
        self.store_objects(tenant_id, objects, None).await;
    }

    async fn store_objects(&self, tenant_id: i64, objects: &[Value], platform: Option<&str>) {
        let platform = platform.map(|id| StripeAccountId::parse(id).expect("an acct_ id"));
        let platform = platform.as_ref();
        let inputs: Vec<AccountInput> = objects
            .iter()
            .map(|object| {
                AccountInput::from_stripe_object(
                    object,
                    platform,
                    &self.settings.accounts.owner_metadata_key,
                )
                .expect("valid account object")
            })
            .collect();
        store::accounts::upsert(
            &self.pool,
            tenant_id,
            &inputs,
            Observed::Fetched(chrono::Utc::now()),
        )
        .await
        .expect("upsert");
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{}", self.address, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// The answer to `path` with `Accept: text/csv`.
    pub async fn get_csv(&self, path: &str, token: &str) -> String {
        self.client
            .get(format!("{}{}", self.address, path))
            .bearer_auth(token)
            .header("accept", "text/csv")
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("CSV body")
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self.get(path, token).await;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.expect("JSON body");
        (status, body)
    }
}

/// A Stripe account object in Stripe's shape (trimmed), owned by `owner`.
pub fn account_object(id: &str, created: i64, owner: Option<&str>) -> Value {
    let metadata = match owner {
        Some(owner) => json!({"accountid": owner}),
        None => json!({}),
    };
    json!({
        "id": id,
        "object": "account",
        "business_profile": {"mcc": null, "name": null, "url": null},
        "business_type": "company",
        "capabilities": {"card_payments": "inactive", "transfers": "inactive"},
        "charges_enabled": false,
        "country": "US",
        "created": created,
        "default_currency": "usd",
        "details_submitted": false,
        "email": null,
        "external_accounts": {"object": "list", "data": [], "has_more": false,
                              "total_count": 0, "url": format!("/v1/accounts/{id}/external_accounts")},
        "metadata": metadata,
        "payouts_enabled": false,
        "type": "custom"
    })
}

pub fn ids(body: &Value) -> Vec<String> {
    body.as_array()
        .expect("an array")
        .iter()
        .map(|record| record["stripeid"].as_str().expect("stripeid").to_owned())
        .collect()
}

/// The Stripe simulator, in-process on port 0.
pub async fn spawn_sim(config: tally::sim::SimConfig) -> tally::sim::SimHandle {
    tally::sim::spawn(config).await.expect("simulator starts")
}

impl TestApp {
    /// A platform tenant for the simulator's `index`-th platform.
    pub async fn add_sim_platform_tenant(
        &self,
        slug: &str,
        sim: &tally::sim::SimHandle,
        index: usize,
    ) -> i64 {
        let platform = &sim.keys().platforms[index];
        self.add_sim_tenant(slug, sim, &platform.key, vec![], vec![])
            .await
    }

    /// An organization tenant with every platform and org account of the simulator.
    pub async fn add_sim_org_tenant(&self, slug: &str, sim: &tally::sim::SimHandle) -> i64 {
        let keys = sim.keys();
        let platforms = keys.platforms.iter().map(|p| p.id.clone()).collect();
        self.add_sim_tenant(
            slug,
            sim,
            &keys.organization_key,
            platforms,
            keys.org_accounts.clone(),
        )
        .await
    }

    async fn add_sim_tenant(
        &self,
        slug: &str,
        sim: &tally::sim::SimHandle,
        key: &str,
        platforms: Vec<String>,
        accounts: Vec<String>,
    ) -> i64 {
        let spec = TenantSpec {
            slug: slug.to_owned(),
            key: SecretString::from(key.to_owned()),
            platforms,
            accounts,
            api_base: Some(sim.base_url()),
            api_version: None,
            rate_limit: Some(1000),
            webhook_secret: None,
        };
        tally::commands::tenant::add(&self.pool, &self.master, &self.settings, spec)
            .await
            .expect("tenant added");
        store::tenants::find_by_slug(&self.pool, slug)
            .await
            .expect("query")
            .expect("tenant exists")
            .id
    }

    /// Stores the simulator's account objects as tally's records, controlled by `platform`.
    pub async fn store_sim_accounts(
        &self,
        tenant_id: i64,
        sim: &tally::sim::SimHandle,
        ids: &[String],
        platform: Option<&str>,
    ) {
        let objects: Vec<Value> = ids
            .iter()
            .map(|id| {
                sim.account_object(id)
                    .expect("the simulator holds the account")
            })
            .collect();
        self.store_objects(tenant_id, &objects, platform).await;
    }
}

/// A free TCP port on loopback, for a server process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The `tally` binary with the database `settings` name (through PgBouncer with
/// `database.pgbouncer`, migrations over `migrate_url`), `master_base64` as its master
/// key, and the test config.
pub fn tally_command_with(settings: &Settings, master_base64: &str) -> std::process::Command {
    use secrecy::ExposeSecret;
    let database = &settings.database;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    if database.pgbouncer {
        command.env("TALLY__DATABASE__PGBOUNCER", "true");
    }
    if let Some(direct) = &database.migrate_url {
        command.env("TALLY__DATABASE__MIGRATE_URL", direct.expose_secret());
    }
    command
        .env("DATABASE_URL", database.url.expose_secret())
        .env("TALLY_MASTER_KEY", master_base64)
        .env("TALLY_ENV", "test")
        .env(
            "TALLY_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        );
    command
}

impl TestApp {
    /// The `tally` binary with this app's database (behind PgBouncer, as the app is),
    /// master key and the test config.
    pub fn tally_command(&self) -> std::process::Command {
        tally_command_with(&self.settings, &self.master_base64)
    }

    /// Waits until a `tally serve` process at `base` answers `/healthz`.
    pub async fn wait_until_serving(&self, base: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "serve never came up");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// `tally serve` as a separate process on `port`, with extra settings from `env`.
    pub fn serve_process(&self, port: u16, env: &[(&str, &str)]) -> std::process::Child {
        self.tally_command()
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("serve starts")
    }
}

/// Every record of a Stripe-style list (tokens, audit, refreshes), from `first`
/// (a path with `limit=…`) following `Link: rel="next"` until there is none; each
/// page holds at most `limit` and says `has_more` exactly when a next link follows.
pub async fn walk_list(app: &TestApp, first: &str, token: &str, limit: usize) -> Vec<Value> {
    let mut records = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages <= 1000, "the Link chain never ends: {path}");
        let response = app.get(&path, token).await;
        assert_eq!(response.status(), 200, "{path}");
        next = response
            .headers()
            .get("link")
            .map(|link| link.to_str().expect("ascii").to_owned())
            .map(|link| {
                assert!(link.ends_with("rel=\"next\""), "{link}");
                link[1..link.find('>').expect("<…>")].to_owned()
            });
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["object"], "list");
        let page = body["data"].as_array().expect("data").clone();
        assert!(page.len() <= limit, "{path}: {} records", page.len());
        assert_eq!(body["has_more"], next.is_some(), "{path}");
        records.extend(page);
    }
    records
}

/// Collects everything a tracing subscriber writes, for the no-secret-in-logs checks.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl TestApp {
    /// The server's socket address (`127.0.0.1:port`), for raw connections.
    pub fn socket_address(&self) -> std::net::SocketAddr {
        self.address
            .strip_prefix("http://")
            .expect("an http address")
            .parse()
            .expect("a socket address")
    }

    /// Sends `request` as raw bytes on a new connection and reads until the server
    /// closes it (at most 20 s): what a client that builds its own requests sees.
    pub async fn raw_exchange(&self, request: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.socket_address())
            .await
            .expect("connect");
        stream.write_all(request).await.expect("request written");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stream.read_to_end(&mut answer),
        )
        .await;
        assert!(read.is_ok(), "the server kept the connection open");
        answer
    }
}

/// A raw HTTP/1.1 answer's status, headers (names lowercased) and body.
pub fn parse_raw_answer(answer: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, answer[end + 4..].to_vec())
}

/// The shared budget's spacing: a tenant's slots are at least `SLOT_SPACING_SECS / rate`
/// apart, whichever replica reserves them (`tally::shared_budget::SLOT_SPACING`).
pub const SLOT_SPACING_SECS: f64 = tally::shared_budget::SLOT_SPACING;

/// How late a request may reach the simulator after its slot, for the rate tests.
/// The budget guarantees when slots are, not when requests arrive: the sender gives a
/// slot up once it wakes more than 5 ms late (`LATE_TOLERANCE`), then the request
/// still goes through reqwest, loopback and the simulator's own tasks, which a busy
/// machine (2 cores shared with builds and other tests) delays by tens of milliseconds,
/// unevenly. Requests that arrive within one second had their slots within
/// 1 s + this spread. 250 ms keeps the bound at a tenant's 20/s below Stripe's 25/s
/// (24): the headroom between the two is what absorbs such delays in production too.
pub const ARRIVAL_SPREAD_SECS: f64 = 0.25;

/// The most requests of one tenant at `rate` the simulator can see in any one second
/// (its `max_rate_per_key`): the slots in 1 s + `ARRIVAL_SPREAD_SECS`, which, spaced
/// `SLOT_SPACING_SECS / rate` apart with no burst (an idle budget restarts from now,
/// never from a backlog of unused slots), number at most ⌊W·rate/SLOT_SPACING_SECS⌋ + 1.
pub fn most_requests_in_a_second(rate: u32) -> u64 {
    let window = 1.0 + ARRIVAL_SPREAD_SECS;
    (window * f64::from(rate) / SLOT_SPACING_SECS).floor() as u64 + 1
}

/// The least time `requests` slots of one budget at `rate` can span, first to last.
/// Exact on any machine: a delay only makes it longer.
pub fn least_span(requests: u32, rate: u32) -> Duration {
    Duration::from_secs_f64(
        f64::from(requests.saturating_sub(1)) * SLOT_SPACING_SECS / f64::from(rate),
    )
}

/// What the simulator saw of a tenant paced by the shared budget at `rate`: no 429
/// (Stripe's 25/s is above the bound) and no second with more than
/// `most_requests_in_a_second(rate)`.
pub fn assert_within_the_budget(stats: &tally::sim::SimStats, rate: u32) {
    assert_eq!(stats.rate_limited, 0, "no 429s: {stats:?}");
    let most = most_requests_in_a_second(rate);
    let max_rate = stats.max_rate_per_key.values().copied().max().unwrap_or(0);
    assert!(
        max_rate <= most,
        "at most {most} in a second at the tenant's {rate}/s: saw {max_rate}"
    );
}

/// A Stripe account id a test names; panics on a malformed one.
pub fn acct(id: &str) -> StripeAccountId {
    StripeAccountId::parse(id).expect("an acct_ id")
}
