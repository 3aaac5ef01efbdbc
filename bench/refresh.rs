//! Benchmark: the background refresher keeping a large tenant fresh by itself, with
//! one and with three replicas on one database, inside the tenant's Stripe budget
//! (issue 8 item 9); and what the shared budget costs per request.
//!
//!   cargo bench --bench refresh
//!   REFRESH_ACCOUNTS=2000 REFRESH_INTERVAL_SECS=60 REFRESH_REPLICAS=3 REFRESH_STEADY=0 \
//!   REFRESH_BUDGET_CALLS=1000 cargo bench --bench refresh
//!
//! Part 1, per replica count: N accounts (`REFRESH_ACCOUNTS`, 10,000) of one platform
//! tenant paced at R (`REFRESH_RATE`, 100/s) and E per endpoint (`REFRESH_ENDPOINT_RATE`,
//! `stripe.endpoint_rate_limit`: Stripe's default 25/s) against a simulator that answers
//! 429 above 100 requests/s per key and above E per endpoint, 50 ms per request. Each
//! replica is a whole `Application` (HTTP server and refresher) with its own pool and
//! its own Stripe access on the shared budget, as `tally serve` builds it, on a fresh
//! database. After each balance the refresher reads the account's new balance
//! transactions (the daily close), which take the tenant's budget too. Prints the time
//! until every account has a snapshot against the bound max(N/E, L/E, (N + L)/R), L
//! the ledger reads, as bound/wall (the budget spaces slots 1.006 s / rate apart, so
//! about 0.994 is the ceiling), Stripe requests
//! per account (target 1.00-1.02), the highest rate the simulator saw in any
//! one-second window against R (target <= 1) and its 429s (target 0). Then, unless
//! `REFRESH_STEADY=0`, it keeps running one more interval (`REFRESH_INTERVAL_SECS`,
//! 150) and prints the requests of that interval per account (about 1: each account
//! once per interval) and the oldest snapshot's age against the interval. The last
//! line of a run is how many times the budget was asked per slot it granted
//! (background work that found the queue full asks again).
//!
//! Part 2: one reservation in the shared budget (`stripe_budget_reserve_spaced`, one round
//! trip) timed `REFRESH_BUDGET_CALLS` (5,000) times on a tenant whose rate is so high
//! that no reservation waits, from one task and from three tasks on three pools, then
//! the whole `SharedBudget::acquire`, against the in-process limiter (`AdaptiveRate`).
//!
//! The accounts are stored up front and scheduled syncs are off, so what Stripe sees
//! is the refresher's balance fetches and its ledger reads. Nothing here asserts a timing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{add_tenant, env_usize, store_accounts, Replica, ScratchDb};
use secrecy::SecretString;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::shared_budget::SharedBudget;
use tally::shared_budget::SLOT_SPACING;
use tally::sim::{SimConfig, SimStats};
use tally::store;
use tally::stripe::{AdaptiveRate, Priority, RateBudget};

/// The simulator's per-key limit (Stripe's is 100/s in live mode) and latency.
const SIM_RATE_LIMIT: u32 = 100;
const SIM_LATENCY_MS: u64 = 50;
/// How often the fill is looked at.
const POLL: Duration = Duration::from_millis(100);
/// A fill that makes no progress this long is reported as stalled, not waited on.
const STALL: Duration = Duration::from_secs(60);
const BALANCE_PATH: &str = "GET /v1/balance";
const LEDGER_PATH: &str = "GET /v1/balance_transactions";
/// The budget part's tenant rate: slots about 1 µs apart, far closer than one
/// reservation takes, so none waits and only the reservation itself is timed.
const UNCONSTRAINED_RATE: u32 = 1_000_000;

struct Knobs {
    accounts: usize,
    rate: u32,
    endpoint_rate: u32,
    interval: Duration,
    steady: bool,
    replicas: Vec<usize>,
    budget_calls: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            accounts: env_usize("REFRESH_ACCOUNTS", 10_000),
            rate: u32::try_from(env_usize("REFRESH_RATE", 100)).expect("REFRESH_RATE fits u32"),
            endpoint_rate: u32::try_from(env_usize("REFRESH_ENDPOINT_RATE", 25))
                .expect("REFRESH_ENDPOINT_RATE fits u32"),
            interval: Duration::from_secs(env_usize("REFRESH_INTERVAL_SECS", 150) as u64),
            steady: env_usize("REFRESH_STEADY", 1) != 0,
            replicas: std::env::var("REFRESH_REPLICAS")
                .unwrap_or_else(|_| "1,3".into())
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .filter(|n| *n > 0)
                .collect(),
            budget_calls: env_usize("REFRESH_BUDGET_CALLS", 5_000),
        }
    }
}

/// What `tally serve` would run with (config/default.toml: tick, pool size, in-flight
/// cap), on the scratch database, with the background refresher on at `interval`.
fn serve_settings(db: &ScratchDb, interval: Duration, endpoint_rate: u32) -> Settings {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&dir, "bench").expect("settings");
    settings.database.url = SecretString::from(db.url.clone());
    settings.server.bind = "127.0.0.1:0".parse().expect("address");
    settings.refresh.enabled = true;
    settings.refresh.interval_secs = interval.as_secs();
    settings.stripe.endpoint_rate_limit = endpoint_rate;
    // The accounts are stored up front; a scheduled sync would list them again.
    settings.sync.interval_secs = 0;
    settings
}

/// A pool of its own for the benchmark's bookkeeping, next to the replicas' pools.
fn side_pool(settings: &Settings, connections: u32) -> sqlx::PgPool {
    let mut database = settings.database.clone();
    database.max_connections = connections;
    store::pool(&database).expect("pool")
}

async fn scalar_i64(pool: &sqlx::PgPool, sql: &str, tenant_id: i64) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .bind(tenant_id)
        .fetch_one(pool)
        .await
        .expect(sql)
}

async fn with_snapshot(pool: &sqlx::PgPool, tenant_id: i64) -> i64 {
    scalar_i64(
        pool,
        "SELECT count(*) FROM latest_balances WHERE tenant_id = $1",
        tenant_id,
    )
    .await
}

/// Waits until every account has a snapshot; the time it took, or `None` when the
/// count stopped moving for `STALL`.
async fn wait_for_fill(
    pool: &sqlx::PgPool,
    tenant_id: i64,
    n: i64,
    started: Instant,
) -> Option<Duration> {
    let (mut last, mut moved_at) = (-1, Instant::now());
    loop {
        let done = with_snapshot(pool, tenant_id).await;
        if done >= n {
            return Some(started.elapsed());
        }
        if done != last {
            (last, moved_at) = (done, Instant::now());
        } else if moved_at.elapsed() >= STALL {
            println!(
                "  STALLED: {done}/{n} accounts with a snapshot, no progress for {} s",
                STALL.as_secs()
            );
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn balance_requests(stats: &SimStats) -> u64 {
    stats.by_path.get(BALANCE_PATH).copied().unwrap_or(0)
}

fn max_rate(stats: &SimStats) -> u64 {
    stats.max_rate_per_key.values().copied().max().unwrap_or(0)
}

fn rate_line(stats: &SimStats, rate: u32) -> String {
    format!(
        "max rate/R {:.2} ({}/s seen in one second, R = {rate}/s); 429s {}",
        max_rate(stats) as f64 / f64::from(rate),
        max_rate(stats),
        stats.rate_limited
    )
}

async fn replicas_run(knobs: &Knobs, replicas: usize) {
    let n = knobs.accounts;
    let db = ScratchDb::create(&format!("tally_bench_refresh{replicas}")).await;
    let settings = serve_settings(&db, knobs.interval, knobs.endpoint_rate);
    let pool = side_pool(&settings, 4);
    store::migrate(&pool).await.expect("migrations");
    // Counts every call of the budget function, granted or not, in every session.
    sqlx::query(&format!(
        r#"ALTER DATABASE "{}" SET track_functions = 'pl'"#,
        db.name
    ))
    .execute(&pool)
    .await
    .expect("track functions");
    let sim = tally::sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: n,
        org_accounts: 0,
        latency_ms: SIM_LATENCY_MS,
        rate_limit: SIM_RATE_LIMIT,
        endpoint_rate_limit: knobs.endpoint_rate,
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
        knobs.rate,
    )
    .await;
    store_accounts(&pool, &sim, tenant.id, &settings).await;
    let plural = if replicas == 1 { "" } else { "s" };
    println!("\n{replicas} replica{plural}:");

    sim.reset_stats();
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..replicas {
        running.push(Replica::start(&settings, &master).await);
    }
    let filled = wait_for_fill(&pool, tenant.id, n as i64, started).await;
    let stats = sim.stats();
    let requests = balance_requests(&stats);
    let fetched_twice = scalar_i64(
        &pool,
        "SELECT count(*) - count(DISTINCT stripeid) FROM balance_snapshots
         WHERE tenant_id = $1 AND source = 'fetch'",
        tenant.id,
    )
    .await;
    let failing = scalar_i64(
        &pool,
        "SELECT count(*) FROM latest_balances WHERE tenant_id = $1 AND NOT ok",
        tenant.id,
    )
    .await;
    let ledger = stats.by_path.get(LEDGER_PATH).copied().unwrap_or(0);
    // Each endpoint's own limit (balances, ledger reads), or the tenant's rate they
    // share, whichever is slower.
    let by_endpoint = n.max(ledger as usize) as f64 / f64::from(knobs.endpoint_rate);
    let by_tenant = (n as f64 + ledger as f64) / f64::from(knobs.rate);
    let bound = by_endpoint.max(by_tenant);
    if let Some(wall) = filled {
        let wall = wall.as_secs_f64();
        println!(
            "  fill: every account has a snapshot after {wall:.1} s, bound max(N/E, L/E, (N + L)/R) = max({by_endpoint:.1}, {by_tenant:.1}) s, bound/wall = {:.3}",
            bound / wall
        );
    }
    println!("  fill: {ledger} ledger reads ({LEDGER_PATH}) beside the balances");
    println!(
        "  fill: requests/account {:.3} ({requests} {BALANCE_PATH} for {n} accounts; {fetched_twice} fetched twice, {failing} failing)",
        requests as f64 / n as f64
    );
    println!("  fill: {}", rate_line(&stats, knobs.rate));

    if knobs.steady && filled.is_some() {
        sim.reset_stats();
        tokio::time::sleep(knobs.interval).await;
        let stats = sim.stats();
        let requests = balance_requests(&stats);
        let oldest: f64 = sqlx::query_scalar(
            "SELECT COALESCE(extract(epoch FROM now() - min(fetched_at))::float8, 0)
             FROM latest_balances WHERE tenant_id = $1",
        )
        .bind(tenant.id)
        .fetch_one(&pool)
        .await
        .expect("oldest snapshot");
        println!(
            "  steady: requests/interval per account {:.3} ({requests} in the {} s after the fill); oldest snapshot age/interval {:.2}",
            requests as f64 / n as f64,
            knobs.interval.as_secs(),
            oldest / knobs.interval.as_secs_f64()
        );
        println!("  steady: {}", rate_line(&stats, knobs.rate));
    }

    for replica in running {
        replica.stop().await;
    }
    // Ended sessions report their function counts as they exit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let granted = scalar_i64(
        &pool,
        "SELECT COALESCE(sum(reserved), 0)::bigint FROM stripe_budgets WHERE tenant_id = $1",
        tenant.id,
    )
    .await;
    // The replicas' sessions have ended, so their function counts are in.
    let asked: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_user_functions
         WHERE funcname = 'stripe_budget_reserve_spaced'",
    )
    .fetch_one(&pool)
    .await
    .expect("function stats");
    println!(
        "  budget: asks per granted slot {:.2} ({asked} calls of stripe_budget_reserve_spaced, {granted} slots)",
        asked as f64 / granted.max(1) as f64
    );
    pool.close().await;
    drop(sim);
    db.drop_now().await;
}

/// Times `calls` reservations on each of `pools` at once; µs per reservation as each
/// task saw it, and overall (wall time / all reservations).
async fn time_reservations(pools: &[sqlx::PgPool], tenant_id: i64, calls: usize) -> (f64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = pools
        .iter()
        .cloned()
        .map(|pool| {
            tokio::spawn(async move {
                let mut conn = pool.acquire().await.expect("connection");
                let started = Instant::now();
                for _ in 0..calls {
                    let rates = store::stripe_budgets::Rates {
                        tenant: UNCONSTRAINED_RATE as i32,
                        endpoint: "/v1/balance",
                        endpoint_rate: UNCONSTRAINED_RATE as i32,
                    };
                    store::stripe_budgets::reserve(
                        &mut *conn,
                        tenant_id,
                        rates,
                        None,
                        SLOT_SPACING,
                    )
                    .await
                    .expect("reserve");
                }
                started.elapsed()
            })
        })
        .collect();
    let mut per_task = 0.0;
    for task in tasks {
        per_task += task.await.expect("task").as_secs_f64();
    }
    let per_task = per_task / pools.len() as f64 * 1e6 / calls as f64;
    let overall = started.elapsed().as_secs_f64() * 1e6 / (calls * pools.len()) as f64;
    (per_task, overall)
}

/// µs per admission of the in-process limiter, from `tasks` tasks sharing it.
async fn time_local_limiter(tasks: usize, calls: usize) -> f64 {
    // High enough that a whole run fits in one window without waiting.
    let limiter = Arc::new(AdaptiveRate::new(
        u32::try_from(calls * tasks * 2).unwrap_or(u32::MAX),
    ));
    let started = Instant::now();
    let running: Vec<_> = (0..tasks)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                for _ in 0..calls {
                    limiter.acquire().await;
                }
            })
        })
        .collect();
    for task in running {
        task.await.expect("task");
    }
    started.elapsed().as_secs_f64() * 1e6 / (calls * tasks) as f64
}

async fn budget_part(calls: usize) {
    let db = ScratchDb::create("tally_bench_budget").await;
    let settings = serve_settings(&db, Duration::from_secs(300), UNCONSTRAINED_RATE);
    let pools: Vec<sqlx::PgPool> = (0..3).map(|_| side_pool(&settings, 1)).collect();
    store::migrate(&pools[0]).await.expect("migrations");
    let master = MasterKey::generate_base64();
    let tenant = add_tenant(
        &pools[0],
        &settings,
        &master,
        "sk_test_51BudgetBenchKey000",
        "http://127.0.0.1:9".into(),
        UNCONSTRAINED_RATE,
    )
    .await;
    println!("\nshared budget: {calls} reservations per task on one tenant (rate too high for any to wait):");
    // Warm the connections and the function's plan.
    time_reservations(&pools, tenant.id, 100).await;
    let (one, _) = time_reservations(&pools[..1], tenant.id, calls).await;
    println!("  reserve, 1 task:              {one:>8.1} µs per reservation");
    let (each, overall) = time_reservations(&pools, tenant.id, calls).await;
    println!(
        "  reserve, 3 tasks on 3 pools:  {each:>8.1} µs per reservation per task, {overall:.1} µs overall ({:.0} reservations/s)",
        1e6 / overall
    );
    // What the same reservation costs when its commit does not wait for the WAL
    // flush: the part of the cost that is the disk, not the statement.
    sqlx::query(&format!(
        r#"ALTER DATABASE "{}" SET synchronous_commit = off"#,
        db.name
    ))
    .execute(&pools[0])
    .await
    .expect("synchronous_commit");
    let unflushed: Vec<sqlx::PgPool> = (0..3).map(|_| side_pool(&settings, 1)).collect();
    time_reservations(&unflushed, tenant.id, 100).await;
    let (one_async, _) = time_reservations(&unflushed[..1], tenant.id, calls).await;
    let (_, overall_async) = time_reservations(&unflushed, tenant.id, calls).await;
    println!(
        "  reserve, synchronous_commit = off: {one_async:.1} µs (1 task), {overall_async:.1} µs overall (3 tasks): the rest of the cost is waiting for the WAL flush"
    );
    for pool in unflushed {
        pool.close().await;
    }
    let shared = SharedBudget::new(
        pools[0].clone(),
        tenant.id,
        UNCONSTRAINED_RATE,
        UNCONSTRAINED_RATE,
    );
    let started = Instant::now();
    for _ in 0..calls {
        shared.acquire(Priority::Interactive, "/v1/balance").await;
    }
    let acquire = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
    println!("  SharedBudget::acquire, 1 task:{acquire:>8.1} µs per request (pool checkout, round trip, zero-length sleep)");
    let local_calls = calls * 20;
    let local_one = time_local_limiter(1, local_calls).await;
    let local_three = time_local_limiter(3, local_calls).await;
    println!(
        "  in-process AdaptiveRate::acquire: {local_one:.3} µs (1 task), {local_three:.3} µs (3 tasks), {local_calls} admissions each"
    );
    println!(
        "  shared/in-process per request: {:.0}x; shared budget per request / simulator latency ({SIM_LATENCY_MS} ms): {:.4}",
        acquire / local_one.max(f64::EPSILON),
        acquire / (SIM_LATENCY_MS as f64 * 1000.0)
    );
    for pool in pools {
        pool.close().await;
    }
    db.drop_now().await;
}

#[tokio::main]
async fn main() {
    let knobs = Knobs::from_env();
    if std::env::var_os("RUST_LOG").is_some() {
        tally::telemetry::init(tally::config::LogFormat::Pretty, "warn");
    }
    println!(
        "refresh: N={} accounts on one platform tenant, tenant rate R={}/s, E={}/s per endpoint, simulator limit {SIM_RATE_LIMIT}/s per key and E per endpoint, latency {SIM_LATENCY_MS} ms, refresh.interval_secs={}",
        knobs.accounts,
        knobs.rate,
        knobs.endpoint_rate,
        knobs.interval.as_secs()
    );
    for replicas in &knobs.replicas {
        replicas_run(&knobs, *replicas).await;
    }
    if knobs.budget_calls > 0 {
        budget_part(knobs.budget_calls).await;
    }
}
