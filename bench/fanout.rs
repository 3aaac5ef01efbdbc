//! Benchmark: the balance fan-out against the simulator, and the cached whole-tenant
//! aggregate at scale.
//!
//!   cargo bench --bench fanout
//!   FANOUT_ACCOUNTS=2000 FANOUT_LATENCY_MS=50 FANOUT_RATE=200 FANOUT_IN_FLIGHT=16 \
//!   AGGREGATE_SIZES=100000,1000000 cargo bench --bench fanout
//!
//! Part 1 prints the wall time of a fan-out of N accounts with simulator latency L,
//! tally rate R (the simulator limits each key to R as well) and in-flight cap C, the
//! bound max(N/R, N*L/C), their ratio, the 429s seen, and the speed-up over a
//! sequential baseline (one request at a time) measured on the same simulator.
//! Part 2 loads 100k / 1M accounts with latest snapshots and measures the cached
//! whole-tenant aggregate (max_age large, so no Stripe calls) under 16 clients.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_usize, ScratchDb};
use secrecy::SecretString;
use tally::commands::tenant::TenantSpec;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::sim::SimConfig;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::tenants::StripeTenants;

struct Env {
    pool: sqlx::PgPool,
    settings: Settings,
    master_base64: String,
}

async fn env(db: &ScratchDb, in_flight: usize) -> Env {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&dir, "test").expect("settings");
    settings.database.url = SecretString::from(db.url.clone());
    settings.database.max_connections = 24;
    settings.stripe.max_in_flight = in_flight;
    let pool = store::pool(&settings.database).expect("pool");
    store::migrate(&pool).await.expect("migrate");
    Env {
        pool,
        settings,
        master_base64: MasterKey::generate_base64(),
    }
}

impl Env {
    fn master(&self) -> MasterKey {
        MasterKey::from_base64(&self.master_base64).expect("key")
    }

    fn stripe(&self) -> Arc<StripeTenants> {
        Arc::new(
            StripeTenants::new(&self.settings.stripe, Arc::new(self.master()))
                .expect("stripe")
                .with_shared_budget(self.pool.clone()),
        )
    }

    async fn tenant(
        &self,
        slug: &str,
        key: &str,
        base: String,
        rate: u32,
    ) -> store::tenants::Tenant {
        let spec = TenantSpec {
            api_base: Some(base),
            rate_limit: Some(rate),
            ..TenantSpec::new(slug, SecretString::from(key.to_owned()))
        };
        tally::commands::tenant::add(&self.pool, &self.master(), &self.settings, spec)
            .await
            .expect("tenant");
        store::tenants::find_by_slug(&self.pool, slug)
            .await
            .expect("q")
            .expect("tenant")
    }
}

async fn fanout_part() {
    let n = env_usize("FANOUT_ACCOUNTS", 2000);
    let latency = env_usize("FANOUT_LATENCY_MS", 50) as u64;
    let rate = env_usize("FANOUT_RATE", 200) as u32;
    let in_flight = env_usize("FANOUT_IN_FLIGHT", 16);
    // Stripe's limit per key; the tenant's rate stays below it, as an operator sets it.
    let sim_rate = env_usize("FANOUT_SIM_RATE", rate as usize) as u32;
    let db = ScratchDb::create("tally_bench_fanout").await;
    let mut env = env(&db, in_flight).await;
    // One endpoint (/v1/balance) carries the whole fan-out: its limit is the key's here,
    // as for an account whose Stripe limits were raised (Stripe's default is 25/s).
    env.settings.stripe.endpoint_rate_limit = rate;
    let sim = tally::sim::spawn(SimConfig {
        platforms: 2,
        accounts_per_platform: n,
        org_accounts: 0,
        latency_ms: latency,
        rate_limit: sim_rate,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let keys = sim.keys().clone();
    let owner_key = env.settings.accounts.owner_metadata_key.clone();

    let tenant = env
        .tenant("fan", &keys.platforms[0].key, sim.base_url(), rate)
        .await;
    let inputs: Vec<AccountInput> = keys.platforms[0]
        .accounts
        .iter()
        .map(|id| {
            AccountInput::from_stripe_object(&sim.account_object(id).expect("o"), None, &owner_key)
                .expect("v")
        })
        .collect();
    store::accounts::upsert(
        &env.pool,
        tenant.id,
        &inputs,
        Observed::Fetched(chrono::Utc::now()),
    )
    .await
    .expect("upsert");

    println!("fan-out: N={n} accounts, latency L={latency} ms, rate R={rate}/s (simulator limit {sim_rate}/s per key), in-flight C={in_flight}");
    sim.reset_stats();
    let started = Instant::now();
    tracing::info!("fan-out starts");
    // Where the time goes: when the simulator answered the first and the last balance
    // request (it counts a request when it answers, `latency` after it arrived).
    let watch = async {
        let (mut first, mut last) = (None, None);
        let give_up = started + Duration::from_secs(120);
        while last.is_none() && Instant::now() < give_up {
            let seen = sim
                .stats()
                .by_path
                .get("GET /v1/balance")
                .copied()
                .unwrap_or(0);
            if seen >= 1 && first.is_none() {
                first = Some(started.elapsed());
            }
            if seen >= n as u64 {
                last = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (first.unwrap_or_default(), last.unwrap_or_default())
    };
    // The path `tally balances --max-age 0` takes: a worker that claims, fetches
    // under the shared budget, and stores each snapshot.
    let stripe = env.stripe();
    let fan_out = tally::commands::balances::run(
        &env.pool,
        &stripe,
        &env.settings,
        &tenant.slug,
        Duration::ZERO,
        tally::commands::balances::OutputFormat::Json,
    );
    let (summary, (first, last)) = tokio::join!(fan_out, watch);
    let summary = summary.expect("fan-out");
    let wall = started.elapsed().as_secs_f64();
    let stats = sim.stats();
    let bound = (n as f64 / rate as f64).max(n as f64 * latency as f64 / 1000.0 / in_flight as f64);
    println!(
        "  first request sent at about {:.3} s (answered at {:.3} s); last answered at {:.3} s, {:.3} s after the first \
         (slot-spaced ideal: {:.3} s); the result {:.3} s after the last answer",
        first.as_secs_f64() - latency as f64 / 1000.0,
        first.as_secs_f64(),
        last.as_secs_f64(),
        (last - first).as_secs_f64(),
        (n as f64 - 1.0) * tally::shared_budget::SLOT_SPACING / rate as f64,
        wall - last.as_secs_f64(),
    );
    println!(
        "  wall {wall:.2} s, bound max(N/R, N*L/C) = {bound:.2} s, bound/wall = {:.3} (target >= 0.95); fetched {}, failed {}; 429s {}; max observed rate {:?}/s; max in flight {}",
        bound / wall,
        summary.total,
        summary.failed,
        stats.rate_limited,
        stats.max_rate_per_key.values().max(),
        stats.max_in_flight
    );

    // Sequential baseline: the second platform's accounts, one request at a time,
    // on the same simulator (a sample, scaled to N).
    let sample = env_usize("FANOUT_SEQUENTIAL_SAMPLE", 100).min(n);
    let sequential_tenant = env
        .tenant("seq", &keys.platforms[1].key, sim.base_url(), rate)
        .await;
    let client = tally::stripe::StripeClient::new(Default::default())
        .expect("client")
        .tenant(
            tally::stripe::Credential::new(
                SecretString::from(keys.platforms[1].key.clone()),
                sequential_tenant.api_version.clone(),
                url::Url::parse(&sim.base_url()).expect("url"),
            )
            .expect("credential"),
            tally::stripe::RateSettings {
                per_second: rate,
                max_in_flight: 1,
            },
        );
    let started = Instant::now();
    for id in keys.platforms[1].accounts.iter().take(sample) {
        let id = tally::domain::StripeAccountId::parse(id).expect("an acct_ id");
        client.retrieve_balance(&id, None).await.expect("balance");
    }
    let per_account = started.elapsed().as_secs_f64() / sample as f64;
    let sequential = per_account * n as f64;
    println!(
        "  sequential baseline: {:.1} ms per account ({sample} measured) -> {sequential:.1} s for N; fan-out speed-up = {:.1}x",
        per_account * 1000.0,
        sequential / wall
    );
    drop(sim);
    env.pool.close().await;
    db.drop_now().await;
}

/// Loads `size` accounts with a latest snapshot each, every other one two hours old
/// (older than the refresh interval: stale, as with a refresher that is behind).
/// Accounts go through the store's upsert; the snapshots are written in bulk SQL (the per-account path would take
/// hours at a million) with totals computed from them, which is what the read measures.
async fn load_snapshots(pool: &sqlx::PgPool, tenant_id: i64, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + 5000).min(to);
        let inputs: Vec<AccountInput> = (i..end)
            .map(|n| {
                let object = serde_json::json!({"id": format!("acct_1Agg{n:010}"), "object": "account",
                    "created": 1_600_000_000 + n as i64, "metadata": {"accountid": format!("owner_{}", n / 2)}});
                AccountInput::from_stripe_object(&object, None, "accountid").expect("valid")
            })
            .collect();
        store::accounts::upsert(
            pool,
            tenant_id,
            &inputs,
            Observed::Fetched(chrono::Utc::now()),
        )
        .await
        .expect("upsert");
        i = end;
    }
    let statements = [
        format!(
            "INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance)
             SELECT {tenant_id}, 'acct_1Agg' || lpad(n::text, 10, '0'),
                    now() - (n % 2) * interval '2 hours', 'fetch',
                    jsonb_build_object('object', 'balance', 'livemode', false,
                        'available', jsonb_build_array(jsonb_build_object('amount', n % 1000 - 100, 'currency', 'usd')),
                        'pending', jsonb_build_array(jsonb_build_object('amount', n % 77, 'currency', 'eur')))
             FROM generate_series({from}, {} ) AS n", to - 1),
        // Statistics first: planned with those of the previous (smaller) step, the
        // unfetched-accounts trigger below once joined 900,000 rows by nested loop.
        "ANALYZE unfetched_accounts, balance_snapshots, latest_balances".to_owned(),
        format!(
            "INSERT INTO latest_balances (tenant_id, stripeid, snapshot_id, fetched_at, ok, amounts)
             SELECT tenant_id, stripeid, id, fetched_at, true, '[]' FROM balance_snapshots
             WHERE tenant_id = {tenant_id} ON CONFLICT DO NOTHING"),
        format!(
            "INSERT INTO tenant_balance_counts (tenant_id, ok) VALUES ({tenant_id}, {to})
             ON CONFLICT (tenant_id) DO UPDATE SET ok = {to}"),
        format!(
            "INSERT INTO tenant_balance_totals (tenant_id, currency, available, pending, holders)
             VALUES ({tenant_id}, 'usd', 1, 0, {to}), ({tenant_id}, 'eur', 0, 1, {to})
             ON CONFLICT (tenant_id, currency) DO UPDATE SET holders = {to}"),
        "VACUUM ANALYZE".to_owned(),
        // The load's writes are flushed before measuring (a running service wrote them
        // long ago): a checkpoint started by them stalled the first polls.
        "CHECKPOINT".to_owned(),
    ];
    // The snapshots go in without their history trigger: one statement inserting every
    // snapshot updates the same hourly history rows once per snapshot inside one
    // transaction, whose versions cannot be pruned until it ends, so the load took
    // minutes at 100,000 (the refresher writes one snapshot per transaction and never
    // meets this). The aggregate does not read the history.
    let (snapshots, rest) = statements.split_first().expect("statements");
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bulk load mode (needs a superuser, as the local postgres is)");
    sqlx::query(snapshots)
        .execute(&mut *tx)
        .await
        .expect("bulk snapshot load");
    tx.commit().await.expect("commit");
    for statement in rest {
        sqlx::query(statement)
            .execute(pool)
            .await
            .expect("bulk snapshot load");
    }
}

/// Records balance snapshots of random accounts at 100/s until cancelled, as a
/// refresher does; returns how many.
async fn write_snapshots(
    pool: sqlx::PgPool,
    tenant_id: i64,
    size: usize,
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    let balance = serde_json::json!({"object": "balance", "livemode": false,
        "available": [{"amount": 500, "currency": "usd"}], "pending": []});
    let parsed: tally::stripe::Balance = serde_json::from_value(balance.clone()).expect("balance");
    let totals = tally::money::Totals::from_balance(&parsed).expect("totals");
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut written = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        let n = rand::random_range(0..size);
        let id = tally::domain::StripeAccountId::parse(&format!("acct_1Agg{n:010}")).expect("id");
        let mut conn = pool.acquire().await.expect("conn");
        store::snapshots::record(
            &mut conn,
            tenant_id,
            &id,
            chrono::Utc::now(),
            "fetch",
            store::snapshots::SnapshotOutcome::Balance {
                raw: &balance,
                totals: &totals,
            },
        )
        .await
        .expect("snapshot");
        written += 1;
    }
    written
}

async fn aggregate_part() {
    let sizes: Vec<usize> = std::env::var("AGGREGATE_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let clients = env_usize("BENCH_CLIENTS", 16);
    let seconds = env_usize("BENCH_SECONDS", 5) as u64;
    let db = ScratchDb::create("tally_bench_aggregate").await;
    let env = env(&db, 16).await;
    let tenant = env
        .tenant(
            "agg",
            "sk_test_51AggregateBenchKey00",
            "http://127.0.0.1:9".into(),
            20,
        )
        .await;
    let token = common::reader_token(&env.pool, "agg").await;
    // An API-only replica (`refresh.worker = false`): its refresher would otherwise
    // start on the accounts being loaded (fetching from a Stripe that is not there).
    let mut serving = env.settings.clone();
    serving.refresh.worker = false;
    let host = common::serve(serving, env.pool.clone(), env.stripe()).await;
    let path = "/api/administrator/connect/balances?max_age=86400";
    let url = format!("{host}{path}");
    let client = reqwest::Client::new();
    let mut loaded = 0;
    println!(
        "\ncached whole-tenant aggregate, {clients} clients through {}, {seconds} s (target p99 <= 10 ms at 1,000,000):",
        if common::which_wrk() {
            "wrk (external, like pgbench)"
        } else {
            "in-process reqwest (install wrk for an external one)"
        }
    );
    for size in sizes {
        let loading = Instant::now();
        load_snapshots(&env.pool, tenant.id, loaded, size).await;
        println!(
            "  loaded {} accounts with snapshots in {:.1} s",
            size - loaded,
            loading.elapsed().as_secs_f64()
        );
        loaded = size;
        let body: serde_json::Value = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(
            body["accounts"]["total"], size,
            "every account counted: {body}"
        );
        assert_eq!(body["complete"], true);
        println!(
            "  {} of them stale (fetched before the refresh interval)",
            body["accounts"]["stale"]
        );
        let poll = |label: String| {
            let (host, token) = (host.clone(), token.clone());
            async move {
                let report = common::load(
                    &host,
                    &token,
                    clients,
                    Duration::from_secs(seconds),
                    vec![path.to_owned()],
                )
                .await;
                println!("  {}", report.line(&label));
            }
        };
        poll(format!("{size} accounts, half stale")).await;
        // The refresher's writes, at Stripe's live rate per account (100/s): each a
        // snapshot through the store's own path, moving an account to this minute.
        let writing = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn(write_snapshots(
            env.pool.clone(),
            tenant.id,
            size,
            writing.clone(),
        ));
        poll(format!(
            "{size} accounts, while 100 snapshots/s are written"
        ))
        .await;
        writing.cancel();
        let written = writer.await.expect("writer");
        println!("    ({written} snapshots written meanwhile)");
    }
    env.pool.close().await;
    db.drop_now().await;
}

#[tokio::main]
async fn main() {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    }
    if std::env::var("SKIP_FANOUT").is_err() {
        fanout_part().await;
    }
    if std::env::var("SKIP_AGGREGATE").is_err() {
        aggregate_part().await;
    }
}
