//! Benchmark: the daily close (issue "The daily close").
//!
//!   cargo bench --bench close
//!   CLOSE_ACCOUNTS=10000 CLOSE_DAYS=30 CLOSE_PER_DAY=20 cargo bench --bench close
//!
//! Part 1, at scale in Postgres: a tenant of CLOSE_ACCOUNTS accounts with CLOSE_PER_DAY
//! transactions each per day for CLOSE_DAYS days, and a balance Stripe "answered" a
//! minute after each day's end (so every day ties out). Prints the closer's time per
//! day, one day's answer p50/p99 (target p99 <= 200 ms), that day's CSV time (target
//! <= 2 s) and size, and bytes stored per transaction.
//!
//! Part 2, against the simulator over HTTP: Stripe requests per account when tally
//! reads balance transactions, against the target ⌈new / 100⌉ + 1.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use common::{env_usize, ms, ScratchDb};
use serde_json::json;
use tally::close::compute::{bring_up_to_date, CloseRules};
use tally::close::ingest;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::sim::SimConfig;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};

const DAY_TARGET_MS: f64 = 200.0;
const CSV_TARGET_S: f64 = 2.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let accounts = env_usize("CLOSE_ACCOUNTS", 10_000);
    let days = env_usize("CLOSE_DAYS", 30) as i64;
    let per_day = env_usize("CLOSE_PER_DAY", 20) as i64;
    at_scale(accounts, days, per_day).await;
    ingestion().await;
}

async fn at_scale(accounts: usize, days: i64, per_day: i64) {
    let db = ScratchDb::create("tally_bench_close").await;
    let mut settings = Settings::load().expect("settings");
    settings.database.url = db.url.clone().into();
    settings.database.max_connections = 16;
    settings.refresh.worker = false;
    settings.close.read_ledger = false;
    let pool = store::pool(&settings.database).expect("pool");
    store::migrate(&pool).await.expect("migrate");
    let master = MasterKey::generate_base64();
    let tenant = common::add_tenant(
        &pool,
        &settings,
        &master,
        "sk_test_51BenchCloseKey0000000001",
        "http://127.0.0.1:9".into(),
        100,
    )
    .await;

    let started = Instant::now();
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(5_000) {
        let inputs: Vec<AccountInput> = chunk
            .iter()
            .map(|i| {
                let object = json!({"id": format!("acct_1Close{i:010}"), "object": "account",
                    "created": 1_600_000_000 + *i as i64, "metadata": {}});
                AccountInput::from_stripe_object(&object, None, "accountid").expect("account")
            })
            .collect();
        store::accounts::upsert(&pool, tenant.id, &inputs, Observed::Fetched(Utc::now()))
            .await
            .expect("accounts");
    }
    // Days from 2026-10-01 (UTC). Transactions never fall within a day's first 600 s,
    // so the balance answered a minute after a day's end is the day's closing.
    let first = NaiveDate::from_ymd_opt(2026, 10, 1).expect("date");
    let start: DateTime<Utc> = first.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    for d in 0..days {
        sqlx::query(
            r#"INSERT INTO balance_transactions (tenant_id, id, stripeid, type, reporting_category,
                   amount, fee, net, currency, created, available_on, status, source)
               SELECT $1, 'txn_' || a.n || '_' || $3 || '_' || k.k,
                      'acct_1Close' || lpad(a.n::text, 10, '0'),
                      kind, category, amount, fee, amount - fee, 'usd', created,
                      CASE WHEN kind = 'charge' THEN created + interval '2 days' ELSE created END,
                      'available', 'src_' || a.n || '_' || $3 || '_' || k.k
               FROM generate_series(0, $4 - 1) a(n), generate_series(0, $5 - 1) k(k),
               LATERAL (SELECT
                   CASE WHEN k.k % 10 = 9 THEN 'payout' WHEN k.k % 10 = 8 THEN 'refund'
                        WHEN k.k % 10 = 7 THEN 'stripe_fee' ELSE 'charge' END AS kind,
                   CASE WHEN k.k % 10 = 9 THEN 'payout' WHEN k.k % 10 = 8 THEN 'refund'
                        WHEN k.k % 10 = 7 THEN 'fee' ELSE 'charge' END AS category,
                   CASE WHEN k.k % 10 = 9 THEN -5000 WHEN k.k % 10 = 8 THEN -700
                        WHEN k.k % 10 = 7 THEN -150 ELSE 1000 + (a.n + k.k) % 900 END AS amount,
                   CASE WHEN k.k % 10 < 7 THEN 59 ELSE 0 END AS fee,
                   $2::timestamptz + make_interval(days => $3::int,
                       secs => (600 + k.k * (79000 / $5) + a.n % 3000)::float8) AS created) t"#,
        )
        .bind(tenant.id)
        .bind(start)
        .bind(d as i32)
        .bind(accounts as i32)
        .bind(per_day as i32)
        .execute(&pool)
        .await
        .expect("transactions");
    }
    // What Stripe answered a minute after each day's end (and the start): the balance
    // from the transactions, per account. Loaded without the per-row totals-history
    // trigger (the close does not read that history; with it the load takes many minutes).
    sqlx::query("ALTER TABLE balance_snapshots DISABLE TRIGGER balance_snapshots_history")
        .execute(&pool)
        .await
        .expect("trigger off");
    sqlx::query(
        r#"WITH grid AS (
               SELECT a.stripeid, d.d, $2::timestamptz + make_interval(days => d.d) AS at
               FROM stripe_accounts a, generate_series(0, $3) d(d) WHERE a.tenant_id = $1),
           created AS (
               SELECT stripeid, floor(extract(epoch FROM created - $2) / 86400)::int + 1 AS d,
                      sum(net) AS net FROM balance_transactions WHERE tenant_id = $1 GROUP BY 1, 2),
           released AS (
               SELECT stripeid, floor(extract(epoch FROM GREATEST(created, available_on) - $2) / 86400)::int + 1 AS d,
                      sum(net) AS net FROM balance_transactions WHERE tenant_id = $1 GROUP BY 1, 2),
           cumulative AS (
               SELECT g.stripeid, g.at,
                      sum(COALESCE(c.net, 0)) OVER w AS total,
                      sum(COALESCE(r.net, 0)) OVER w AS available
               FROM grid g
               LEFT JOIN created c ON c.stripeid = g.stripeid AND c.d = g.d
               LEFT JOIN released r ON r.stripeid = g.stripeid AND r.d = g.d
               WINDOW w AS (PARTITION BY g.stripeid ORDER BY g.d))
           INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance, stripe_at)
           SELECT $1, stripeid, at + interval '1 minute', 'fetch',
                  jsonb_build_object('object', 'balance', 'livemode', false,
                      'available', jsonb_build_array(jsonb_build_object('amount', available, 'currency', 'usd')),
                      'pending', jsonb_build_array(jsonb_build_object('amount', total - available, 'currency', 'usd'))),
                  at + interval '1 minute'
           FROM cumulative"#,
    )
    .bind(tenant.id)
    .bind(start)
    .bind(days as i32)
    .execute(&pool)
    .await
    .expect("snapshots");
    sqlx::query("ALTER TABLE balance_snapshots ENABLE TRIGGER balance_snapshots_history")
        .execute(&pool)
        .await
        .expect("trigger on");
    sqlx::query(
        r#"INSERT INTO ledger_reads (tenant_id, stripeid, complete_from, complete_to)
           SELECT $1, stripeid, $2::timestamptz - interval '1 day',
                  $2::timestamptz + make_interval(days => $3) + interval '1 hour'
           FROM stripe_accounts WHERE tenant_id = $1"#,
    )
    .bind(tenant.id)
    .bind(start)
    .bind(days as i32)
    .execute(&pool)
    .await
    .expect("reads");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM balance_transactions")
        .fetch_one(&pool)
        .await
        .expect("count");
    let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('balance_transactions')")
        .fetch_one(&pool)
        .await
        .expect("size");
    let close_bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('account_closes')")
        .fetch_one(&pool)
        .await
        .expect("size");
    println!(
        "loaded {accounts} accounts × {days} days × {per_day} transactions = {count} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "stored: {:.0} bytes per transaction (table and indexes)",
        bytes as f64 / count as f64
    );

    let tenant = store::tenants::find_by_id(&pool, tenant.id)
        .await
        .expect("tenant")
        .expect("tenant");
    let rules = CloseRules {
        settle: TimeDelta::zero(),
        settlement_days: 1,
        final_after_days: None,
    };
    let closing = Instant::now();
    let pass = bring_up_to_date(&pool, &tenant, rules)
        .await
        .expect("close");
    let took = closing.elapsed().as_secs_f64();
    println!(
        "closer: {} days computed in {:.1} s ({:.2} s per day of {accounts} accounts)",
        pass.computed.len(),
        took,
        took / pass.computed.len().max(1) as f64
    );
    let close_bytes_after: i64 =
        sqlx::query_scalar("SELECT pg_total_relation_size('account_closes')")
            .fetch_one(&pool)
            .await
            .expect("size");
    println!(
        "closes stored: {:.0} bytes per account and day",
        (close_bytes_after - close_bytes) as f64 / (accounts as f64 * days as f64)
    );

    let host = common::serve(
        settings.clone(),
        pool.clone(),
        std::sync::Arc::new(
            tally::tenants::StripeTenants::new(
                &settings.stripe,
                std::sync::Arc::new(MasterKey::from_base64(&master).expect("key")),
            )
            .expect("stripe"),
        ),
    )
    .await;
    let token = common::reader_token(&pool, "bench").await;
    let client = reqwest::Client::new();
    let day = first + TimeDelta::days(days / 2);
    let url = format!("{host}/api/administrator/connect/balances/close?date={day}");
    let mut times = Vec::new();
    let mut body = serde_json::Value::Null;
    for _ in 0..200 {
        let sent = Instant::now();
        let response = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("day");
        assert_eq!(response.status(), 200);
        body = response.json().await.expect("JSON");
        times.push(ms(sent.elapsed()));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let p99 = percentile(&times, 0.99);
    let usd = &body["currencies"][0];
    println!(
        "one day's close ({day}): p50 {:.1} ms, p99 {:.1} ms ({:.2} of the {DAY_TARGET_MS} ms target); {} accounts, {} matched, {} differences, {} transactions",
        percentile(&times, 0.5),
        p99,
        p99 / DAY_TARGET_MS,
        usd["accounts"],
        usd["matched"],
        usd["difference"],
        usd["transactions"]
    );
    let sent = Instant::now();
    let csv = client
        .get(&url)
        .bearer_auth(&token)
        .header("Accept", "text/csv")
        .send()
        .await
        .expect("csv")
        .bytes()
        .await
        .expect("csv body");
    let csv_s = sent.elapsed().as_secs_f64();
    println!(
        "that day's CSV: {} rows, {:.1} MB in {:.2} s ({:.2} of the {CSV_TARGET_S} s target); peak RSS {:.0} MiB",
        csv.iter().filter(|b| **b == b'\n').count().saturating_sub(1),
        csv.len() as f64 / 1e6,
        csv_s,
        csv_s / CSV_TARGET_S,
        common::peak_rss_mib()
    );
    pool.close().await;
    db.drop_now().await;
}

/// Reads every account's ledger from the simulator twice (the first read, then after a
/// few simulated hours) and compares requests with ⌈new / 100⌉ + 1.
async fn ingestion() {
    let accounts = env_usize("CLOSE_SIM_ACCOUNTS", 200);
    let db = ScratchDb::create("tally_bench_close_sim").await;
    let mut settings = Settings::load().expect("settings");
    settings.database.url = db.url.clone().into();
    let pool = store::pool(&settings.database).expect("pool");
    store::migrate(&pool).await.expect("migrate");
    let now = Utc::now().timestamp();
    let sim = tally::sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: accounts,
        org_accounts: 0,
        activity_per_hour: 1.0,
        clock_start: Some(now - 3 * 86_400),
        clock_speed: 7_200.0,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let master = MasterKey::generate_base64();
    let key = sim.keys().platforms[0].key.clone();
    let tenant = common::add_tenant(&pool, &settings, &master, &key, sim.base_url(), 100).await;
    common::store_accounts(&pool, &sim, tenant.id, &settings).await;
    let stripe = tally::tenants::StripeTenants::new(
        &settings.stripe,
        std::sync::Arc::new(MasterKey::from_base64(&master).expect("key")),
    )
    .expect("stripe")
    .with_shared_budget(pool.clone());
    let client = stripe.client_for(&tenant).expect("client");
    let listed = store::ledger::listed_accounts(&pool, tenant.id)
        .await
        .expect("accounts");
    // Two simulated days of activity, then two reads with a few hours between.
    tokio::time::sleep(Duration::from_secs(24)).await;
    for round in [
        "first read (back to the settlement window)",
        "a few simulated hours later",
    ] {
        sim.set_clock_paused(true);
        let (mut requests, mut bound, mut stored, mut over) = (0u64, 0u64, 0u64, 0usize);
        for account in &listed {
            let read = ingest::read_new(&pool, &client, &tenant, account, None, 7)
                .await
                .expect("read");
            let target = read.listed.div_ceil(100) + 1;
            requests += u64::from(read.requests);
            bound += target;
            stored += read.stored;
            if u64::from(read.requests) > target {
                over += 1;
            }
        }
        println!(
            "ingestion, {round}: {} accounts, {stored} new transactions, {requests} requests = {:.2} per account; {:.2} of the ⌈new/100⌉+1 bound; {over} accounts over it",
            listed.len(),
            requests as f64 / listed.len() as f64,
            requests as f64 / bound as f64
        );
        sim.set_clock_paused(false);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    pool.close().await;
    db.drop_now().await;
}
