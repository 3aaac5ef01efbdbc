//! Benchmark: following what changes (issue "Follow what changes" item 6). A tenant of
//! N connected accounts (`CHANGES_ACCOUNTS`, 10,000) in `events` freshness mode, on
//! Stripe's default limits: the simulator answers 429 above 25 requests/s per
//! endpoint (`--endpoint-rate-limit 25`), 50 ms per request, and generates activity
//! so that about 2 % of the accounts change per 5 simulated minutes
//! (`CHANGES_ACTIVITY_PER_HOUR`, 0.3 per account per simulated hour, skewed: most
//! accounts idle, a few busy), its clock at real time (`CHANGES_CLOCK_SPEED`, 1: an
//! event's `created` must be comparable with tally's clock, as Stripe's is; a faster
//! clock stamps events in tally's future and a paused one in its past). Its Connect
//! endpoint delivers every event to the tally replica under test (`Application`, as
//! `tally serve` builds it).
//!
//!   cargo bench --bench changes
//!   CHANGES_ACCOUNTS=2000 CHANGES_PHASE_SECS=60 CHANGES_FINAL_SWEEP=0 cargo bench --bench changes
//!
//! Every account is read once up front (stored straight from the simulator, as a first
//! pass would: 400 s of Stripe reads at 25/s otherwise; events of changes meanwhile
//! reach the replica once it listens, by Stripe's retries), then for
//! `CHANGES_PHASE_SECS` (300) seconds activity runs and the replica follows it.
//! Printed, per simulated hour:
//! - Stripe balance reads against accounts changed (the simulator's count of distinct
//!   accounts whose balance changed, summed per 5-simulated-minute window): target
//!   reads ≤ 1.1 × changed + N × 3600 / sweep;
//! - event-to-fresh latency, p50 / p95 / max: from an event's arrival at tally to the
//!   stored fetch of its account (target p95 ≤ 5 s);
//! - the oldest unconfirmed account: the age of the aggregate's `oldestConfirmedAt`
//!   against what `poll` mode cannot beat, a whole pass of N / 25 s;
//! - the totals against `/_sim/totals` once the clock is paused and deliveries have
//!   settled, and (unless `CHANGES_FINAL_SWEEP=0`) again after the safety-net sweep
//!   re-read every account: Stripe announces some changes to nobody (its own fees).
//!
//! Nothing here asserts a timing.

mod common;

use std::time::{Duration, Instant};

use common::{add_tenant, env_usize, store_accounts, Replica, ScratchDb};
use secrecy::SecretString;
use serde_json::Value;
use tally::audit::Actor;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::freshness::FreshnessMode;
use tally::money::Totals;
use tally::sim::{SimConfig, SimHandle};
use tally::store;
use tally::store::snapshots::SnapshotOutcome;
use tally::stripe::Balance;

const ENDPOINT_RATE_LIMIT: u32 = 25;
/// The tenant's own pace: under the endpoint's limit, as tally's default (20) is.
const TENANT_RATE: u32 = 24;
const SIM_LATENCY_MS: u64 = 50;
const BALANCE_PATH: &str = "GET /v1/balance";
/// One window of the change count: 5 simulated minutes.
const WINDOW_SIM_SECS: f64 = 300.0;
/// How often a finance poll asks, during the phase.
const POLL_EVERY: Duration = Duration::from_secs(30);
/// The freshness it asks for.
const POLL_MAX_AGE_SECS: u64 = 5;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings_for(db: &ScratchDb, api: &str) -> Settings {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&dir, "bench").expect("settings");
    settings.database.url = SecretString::from(db.url.clone());
    settings.server.bind = api.parse().expect("address");
    settings.refresh.enabled = true;
    // The accounts are stored up front; a scheduled sync would list them again.
    settings.sync.interval_secs = 0;
    settings
}

/// Stores every account's balance as the simulator answers it now (clock paused), as
/// one fetch each: the state a first full pass leaves.
async fn store_first_pass(pool: &sqlx::PgPool, sim: &SimHandle, tenant_id: i64) {
    let accounts = sim.keys().platforms[0].accounts.clone();
    let mut conn = pool.acquire().await.expect("connection");
    for account in &accounts {
        let raw = sim.balance_of(account).expect("balance");
        let balance: Balance = serde_json::from_value(raw.clone()).expect("a balance");
        let totals = Totals::from_balance(&balance).expect("fits");
        store::snapshots::record(
            &mut conn,
            tenant_id,
            &tally::domain::StripeAccountId::parse(account).expect("an acct_ id"),
            chrono::Utc::now(),
            "fetch",
            SnapshotOutcome::Balance {
                raw: &raw,
                totals: &totals,
            },
        )
        .await
        .expect("snapshot");
    }
}

/// Registers the tenant's Connect endpoint at the simulator and returns its secret.
async fn register_endpoint(sim: &SimHandle, url: &str) -> String {
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/webhook_endpoints", sim.base_url()))
        .bearer_auth(&sim.keys().platforms[0].key)
        .form(&[("url", url), ("enabled_events[]", "*"), ("connect", "true")])
        .send()
        .await
        .expect("endpoint")
        .json()
        .await
        .expect("endpoint json");
    created["secret"].as_str().expect("secret").to_owned()
}

async fn aggregate(api: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{api}/api/administrator/connect/balances"))
        .bearer_auth(token)
        .send()
        .await
        .expect("aggregate")
        .json()
        .await
        .expect("json")
}

/// `(currency, available, pending)` per currency.
type TotalsRows = Vec<(String, i64, i64)>;

/// The totals rows of tally's aggregate and of the simulator.
fn totals_rows(aggregate: &Value, sim: &SimHandle) -> (TotalsRows, TotalsRows) {
    let ours = aggregate["totals"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|t| {
                    (
                        t["currency"].as_str().unwrap_or_default().to_owned(),
                        t["available"].as_i64().unwrap_or_default(),
                        t["pending"].as_i64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let platform = sim.keys().platforms[0].id.clone();
    let theirs = sim
        .totals(&platform)
        .expect("totals")
        .currencies
        .iter()
        .map(|c| (c.currency.clone(), c.available, c.pending))
        .collect();
    (ours, theirs)
}

/// Differences, per currency, between tally's totals and the simulator's.
fn totals_diff(ours: &[(String, i64, i64)], theirs: &[(String, i64, i64)]) -> String {
    if ours == theirs {
        return "equal to the cent".to_owned();
    }
    let mut out = Vec::new();
    for (currency, available, pending) in theirs {
        let mine = ours.iter().find(|(c, _, _)| c == currency);
        let (a, p) = mine.map_or((0, 0), |(_, a, p)| (*a, *p));
        if (a, p) != (*available, *pending) {
            out.push(format!(
                "{currency}: available {} pending {} off",
                a - available,
                p - pending
            ));
        }
    }
    format!("differ ({})", out.join("; "))
}

async fn latency_percentiles(
    pool: &sqlx::PgPool,
    tenant_id: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> (f64, f64, f64, i64) {
    // For each event that named an account (not balance.available, which carries its
    // balance), the first fetch of that account stored at or after its arrival.
    let row: (Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lat),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY lat),
                max(lat), count(*)
         FROM (SELECT extract(epoch FROM (
                   SELECT min(s.fetched_at) FROM balance_snapshots s
                   WHERE s.tenant_id = e.tenant_id AND s.stripeid = e.account
                     AND s.source = 'fetch' AND s.fetched_at >= e.received_at)
                 - e.received_at)::float8 AS lat
               FROM webhook_events e
               WHERE e.tenant_id = $1 AND e.received_at >= $2
                 AND e.event_type <> 'balance.available' AND e.account IS NOT NULL) x
         WHERE lat IS NOT NULL",
    )
    .bind(tenant_id)
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("latency");
    (
        row.0.unwrap_or(0.0),
        row.1.unwrap_or(0.0),
        row.2.unwrap_or(0.0),
        row.3,
    )
}

#[tokio::main]
async fn main() {
    let n = env_usize("CHANGES_ACCOUNTS", 10_000);
    let activity = env_f64("CHANGES_ACTIVITY_PER_HOUR", 0.3);
    let speed = env_f64("CHANGES_CLOCK_SPEED", 1.0);
    let phase = Duration::from_secs(env_usize("CHANGES_PHASE_SECS", 300) as u64);
    let final_sweep = env_usize("CHANGES_FINAL_SWEEP", 1) != 0;
    if std::env::var_os("RUST_LOG").is_some() {
        tally::telemetry::init(tally::config::LogFormat::Pretty, "warn");
    }
    println!(
        "changes: N={n} accounts, {activity} activities per account per simulated hour, clock x{speed}, endpoint limit {ENDPOINT_RATE_LIMIT}/s, tenant rate {TENANT_RATE}/s, latency {SIM_LATENCY_MS} ms, phase {} s",
        phase.as_secs()
    );

    let db = ScratchDb::create("tally_bench_changes").await;
    let port = common::free_port();
    let api = format!("http://127.0.0.1:{port}");
    let settings = settings_for(&db, &format!("127.0.0.1:{port}"));
    let mut side = settings.database.clone();
    side.max_connections = 4;
    let pool = store::pool(&side).expect("pool");
    store::migrate(&pool).await.expect("migrations");
    let sim = tally::sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: n,
        org_accounts: 0,
        latency_ms: SIM_LATENCY_MS,
        endpoint_rate_limit: ENDPOINT_RATE_LIMIT,
        activity_per_hour: activity,
        clock_speed: speed,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let master = MasterKey::generate_base64();
    let tenant = add_tenant(
        &pool,
        &settings,
        &master,
        &sim.keys().platforms[0].key,
        sim.base_url(),
        TENANT_RATE,
    )
    .await;
    store_accounts(&pool, &sim, tenant.id, &settings).await;
    let secret = register_endpoint(&sim, &format!("{api}/webhooks/stripe/bench")).await;
    tally::commands::tenant::update(
        &pool,
        &MasterKey::from_base64(&master).expect("master"),
        "bench",
        tally::commands::tenant::TenantUpdate {
            webhook_secret: Some(SecretString::from(secret)),
            freshness: Some(FreshnessMode::Events),
            ..Default::default()
        },
        &Actor::cli(),
    )
    .await
    .expect("events mode");
    let token = common::reader_token(&pool, "bench").await;
    // The stream was live before the first pass (as when the endpoint was registered
    // first): what an arriving event records. The replica starts after the pass, so
    // its refresher finds every account read.
    store::changes::heard(
        &pool,
        tenant.id,
        chrono::Utc::now(),
        settings.webhooks.max_silence_secs as f64,
    )
    .await
    .expect("stream");
    let filled = Instant::now();
    store_first_pass(&pool, &sim, tenant.id).await;
    println!(
        "  first pass stored in {:.1} s (a real one: N/25 = {:.0} s of Stripe reads)",
        filled.elapsed().as_secs_f64(),
        n as f64 / 25.0
    );
    let replica = Replica::start(&settings, &master).await;

    // The phase: activity runs, tally follows. Stats are read per 5-simulated-minute
    // window, so an account changed in two windows counts twice, as it needs two reads.
    let phase_started = chrono::Utc::now();
    sim.reset_stats();
    let window = Duration::from_secs_f64(WINDOW_SIM_SECS / speed);
    let (mut reads, mut changed, mut activities, mut events, mut rate429) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let phase_end = Instant::now() + phase;
    let mut oldest_confirmed_age: f64 = 0.0;
    let mut poll_answers: Vec<(u16, f64)> = Vec::new();
    let mut window_end = Instant::now() + window;
    while Instant::now() < phase_end {
        tokio::time::sleep(POLL_EVERY.min(phase_end - Instant::now())).await;
        if Instant::now() >= window_end || Instant::now() >= phase_end {
            let stats = sim.stats();
            sim.reset_stats();
            reads += stats.by_path.get(BALANCE_PATH).copied().unwrap_or(0);
            changed += stats.changed_accounts;
            activities += stats.activities;
            events += stats.webhooks.events;
            rate429 += stats.rate_limited;
            window_end += window;
        }
        // What a finance poll asking for data no older than 5 s gets.
        let asked = Instant::now();
        let response = reqwest::Client::new()
            .get(format!(
                "{api}/api/administrator/connect/balances?max_age={POLL_MAX_AGE_SECS}&wait=10"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("poll");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        poll_answers.push((status, asked.elapsed().as_secs_f64()));
        if let Some(at) = body["oldestConfirmedAt"].as_str() {
            let at = chrono::DateTime::parse_from_rfc3339(at).expect("time");
            let age = (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_milliseconds()
                as f64
                / 1000.0;
            oldest_confirmed_age = oldest_confirmed_age.max(age);
        }
    }
    sim.set_clock_paused(true);
    let sim_hours = phase.as_secs_f64() * speed / 3600.0;
    let sweep = settings.refresh.sweep_interval_secs as f64;
    let per_hour = |x: u64| x as f64 / sim_hours;
    let sweep_share = n as f64 * 3600.0 / sweep;
    println!(
        "  activity: {activities} activities, {events} events, {changed} account-changes (distinct per 5-min window) in {sim_hours:.2} simulated h; reads per activity {:.3}",
        reads as f64 / activities.max(1) as f64
    );
    println!(
        "  reads: {:.0} balance reads/h for {:.0} account-changes/h: reads/changed = {:.3}; target <= 1.1 x changed + N x 3600 / sweep = {:.0}/h (sweep {sweep:.0} s): reads/target = {:.3}; 429s {rate429}",
        per_hour(reads),
        per_hour(changed),
        reads as f64 / changed.max(1) as f64,
        1.1 * per_hour(changed) + sweep_share,
        per_hour(reads) / (1.1 * per_hour(changed) + sweep_share),
    );
    println!(
        "  versus polling: keeping N fresh every 5 min would take {:.0} reads/h, {:.0}x these (and cannot: N/25 = {:.0} s per pass)",
        n as f64 * 12.0,
        n as f64 * 12.0 / per_hour(reads).max(1.0),
        n as f64 / 25.0
    );

    // Deliveries settle (late ones arrive within seconds), changed accounts are fetched.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (p50, p95, max, count) = latency_percentiles(&pool, tenant.id, phase_started).await;
    println!(
        "  event-to-fresh: p50 {p50:.2} s, p95 {p95:.2} s, max {max:.2} s over {count} events (target p95 <= 5 s; refresh.change_delay_ms = {})",
        settings.refresh.change_delay_ms
    );
    let bound = n as f64 / 25.0;
    let answered = poll_answers.iter().filter(|(s, _)| *s == 200).count();
    let slowest = poll_answers.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    println!(
        "  polls with max_age={POLL_MAX_AGE_SECS}: {answered} of {} answered 200 (slowest {slowest:.2} s); oldest confirmed account in an answer {oldest_confirmed_age:.1} s old, against poll mode's floor N/25 = {bound:.0} s: {:.4} of it",
        poll_answers.len(),
        oldest_confirmed_age / bound
    );
    let body = aggregate(&api, &token).await;
    let (ours, theirs) = totals_rows(&body, &sim);
    let waiting = store::changes::waiting(&pool, tenant.id)
        .await
        .expect("waiting");
    println!(
        "  totals at rest, events only: {} ({} changed accounts waiting; stream live: {})",
        totals_diff(&ours, &theirs),
        waiting.accounts,
        body["streamLive"]
    );
    if final_sweep {
        // The poll rule, so the stream's word does not count: every account is read.
        tally::commands::tenant::update(
            &pool,
            &MasterKey::from_base64(&master).expect("master"),
            "bench",
            tally::commands::tenant::TenantUpdate {
                freshness: Some(FreshnessMode::Poll),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .expect("poll mode");
        let swept = Instant::now();
        let client = reqwest::Client::new();
        let started = client
            .get(format!(
                "{api}/api/administrator/connect/balances?max_age=0&wait=0"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("sweep");
        let location = started
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        if let Some(location) = location {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let refresh: Value = client
                    .get(format!("{api}{location}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("refresh")
                    .json()
                    .await
                    .expect("json");
                if refresh["status"] != "running" {
                    break;
                }
            }
        }
        let body = aggregate(&api, &token).await;
        let (ours, theirs) = totals_rows(&body, &sim);
        println!(
            "  totals after a sweep re-read every account ({:.0} s): {}",
            swept.elapsed().as_secs_f64(),
            totals_diff(&ours, &theirs)
        );
    }
    replica.stop().await;
    pool.close().await;
    drop(sim);
    db.drop_now().await;
}
