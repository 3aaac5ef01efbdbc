//! Benchmark: totals over time (issue 10). A year of daily buckets for a 10,000-account
//! tenant whose history has a row at every hour of the year (each account read once a
//! week, spread over the week), served by `GET balances/totals`; target p99 <= 50 ms.
//!
//!   cargo bench --bench totals
//!   BENCH_ACCOUNTS=10000 BENCH_WEEKS=52 BENCH_SECONDS=5 BENCH_CLIENTS=4 cargo bench --bench totals
//!
//! Also prints what keeping the history costs each snapshot (store::snapshots::record
//! with and without the history trigger), and one owner's series (computed from that
//! owner's snapshots) for comparison.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, DurationRound, Utc};
use common::{env_usize, ms};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tally::money::Totals;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::store::snapshots::SnapshotOutcome;

const TARGET_MS: f64 = 50.0;
const BATCH: usize = 5_000;

fn account(i: usize) -> serde_json::Value {
    json!({
        "id": format!("acct_1Totals{i:010}"), "object": "account", "type": "express",
        "created": 1_600_000_000 + i as i64, "country": "US",
        "metadata": {"accountid": format!("owner_{}", i / 2)}
    })
}

/// Lists the accounts a year ago (the history clock pinned there), through the store.
async fn list_accounts(db_url: &str, tenant_id: i64, accounts: usize, at: chrono::DateTime<Utc>) {
    let mut conn = PgConnection::connect(db_url).await.expect("connect");
    sqlx::query("SELECT set_config('tally.clock', $1, false)")
        .bind(at.to_rfc3339())
        .execute(&mut conn)
        .await
        .expect("clock");
    let mut i = 0;
    while i < accounts {
        let end = (i + BATCH).min(accounts);
        let inputs: Vec<AccountInput> = (i..end)
            .map(|n| {
                AccountInput::from_stripe_object(&account(n), None, "accountid").expect("valid")
            })
            .collect();
        store::accounts::upsert(&mut conn, tenant_id, &inputs, Observed::Fetched(Utc::now()))
            .await
            .expect("upsert");
        i = end;
    }
}

/// A year of weekly balances per account in three currencies, written with SQL (the
/// history trigger off), then the history built the way the migration builds it for
/// an existing deployment.
async fn seed_history(
    pool: &sqlx::PgPool,
    tenant_id: i64,
    weeks: i64,
    start: chrono::DateTime<Utc>,
) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::raw_sql("ALTER TABLE balance_snapshots DISABLE TRIGGER balance_snapshots_history")
        .execute(&mut *tx)
        .await
        .expect("trigger off");
    sqlx::query(
        r#"INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance)
           SELECT $1, a.stripeid,
                  $2::timestamptz + w * interval '7 days'
                      + ((hashtext(a.stripeid) & 1048575) % 604800) * interval '1 second',
                  'fetch',
                  jsonb_build_object(
                      'object', 'balance', 'livemode', false,
                      'available', jsonb_build_array(
                          jsonb_build_object('amount', hashtext(a.stripeid || w) % 100000, 'currency', 'usd'),
                          jsonb_build_object('amount', abs(hashtext(w || a.stripeid)) % 5000, 'currency', 'eur')),
                      'pending', jsonb_build_array(
                          jsonb_build_object('amount', abs(hashtext(a.stripeid)) % 900, 'currency', 'usd')),
                      'connect_reserved', jsonb_build_array(
                          jsonb_build_object('amount', w, 'currency', 'jpy')))
           FROM stripe_accounts a CROSS JOIN generate_series(0, $3 - 1) AS w
           WHERE a.tenant_id = $1"#,
    )
    .bind(tenant_id)
    .bind(start)
    .bind(weeks)
    .execute(&mut *tx)
    .await
    .expect("snapshots");
    sqlx::raw_sql("ALTER TABLE balance_snapshots ENABLE TRIGGER balance_snapshots_history")
        .execute(&mut *tx)
        .await
        .expect("trigger on");
    sqlx::query("SELECT balance_history_rebuild($1)")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .expect("rebuild");
    tx.commit().await.expect("commit");
    for table in [
        "balance_snapshots",
        "balance_totals_history",
        "stripe_account_listings",
    ] {
        sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
            .execute(pool)
            .await
            .expect("analyze");
    }
}

/// Microseconds per `store::snapshots::record` (one account's new balance, as the
/// refresher stores it), over `n` accounts.
async fn record_cost(db_url: &str, tenant_id: i64, n: usize, round: i64) -> f64 {
    let mut conn = PgConnection::connect(db_url).await.expect("connect");
    let started = Instant::now();
    for i in 0..n {
        let raw = json!({"object": "balance", "livemode": false,
                         "available": [{"amount": round * 10 + i as i64, "currency": "usd"}],
                         "pending": [{"amount": 5, "currency": "eur"}]});
        let parsed: tally::stripe::Balance = serde_json::from_value(raw.clone()).expect("balance");
        let totals = Totals::from_balance(&parsed).expect("no overflow");
        store::snapshots::record(
            &mut conn,
            tenant_id,
            &tally::domain::StripeAccountId::parse(&format!("acct_1Totals{i:010}"))
                .expect("an acct_ id"),
            Utc::now(),
            "fetch",
            SnapshotOutcome::Balance {
                raw: &raw,
                totals: &totals,
            },
        )
        .await
        .expect("recorded");
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::main]
async fn main() {
    let accounts = env_usize("BENCH_ACCOUNTS", 10_000);
    let weeks = env_usize("BENCH_WEEKS", 52) as i64;
    let clients = env_usize("BENCH_CLIENTS", 4);
    let seconds = env_usize("BENCH_SECONDS", 5) as u64;
    println!(
        "totals: {accounts} accounts, {weeks} weeks of weekly balances each, {clients} clients, {seconds} s per scenario\n"
    );

    let common::BenchTenant {
        db,
        settings,
        pool,
        master,
        tenant_id,
    } = common::bench_tenant("tally_bench_totals", (clients as u32).max(4)).await;

    let today = Utc::now()
        .duration_trunc(Days::days(1))
        .expect("a day boundary");
    let start = today - Days::weeks(weeks);
    let started = Instant::now();
    list_accounts(&db.url, tenant_id, accounts, start - Days::hours(1)).await;
    seed_history(&pool, tenant_id, weeks, start).await;
    println!(
        "seeded {} snapshots in {:.1} s; history: {} rows (one per hour with a change)",
        count(&pool, "SELECT count(*) FROM balance_snapshots").await,
        started.elapsed().as_secs_f64(),
        count(&pool, "SELECT count(*) FROM balance_totals_history").await,
    );

    // What keeping the history adds to each snapshot write.
    let n = 2_000.min(accounts);
    let with = record_cost(&db.url, tenant_id, n, 1).await;
    sqlx::raw_sql("ALTER TABLE balance_snapshots DISABLE TRIGGER balance_snapshots_history")
        .execute(&pool)
        .await
        .expect("trigger off");
    let without = record_cost(&db.url, tenant_id, n, 2).await;
    sqlx::raw_sql("ALTER TABLE balance_snapshots ENABLE TRIGGER balance_snapshots_history")
        .execute(&pool)
        .await
        .expect("trigger on");
    println!(
        "snapshot write (store::snapshots::record, {n} accounts): {with:.0} µs with the history, {without:.0} µs without (+{:.0} µs)\n",
        with - without
    );

    let token = common::reader_token(&pool, "bench").await;
    let stripe = Arc::new(
        tally::tenants::StripeTenants::new(&settings.stripe, Arc::new(master)).expect("stripe"),
    );
    let host = common::serve(settings, pool.clone(), stripe).await;
    println!(
        "load generator: {}",
        if common::which_wrk() {
            "wrk (external)"
        } else {
            "in-process reqwest (install wrk for an external one)"
        }
    );
    let client = reqwest::Client::new();
    let year_from = (today - Days::days(364)).format("%Y-%m-%d").to_string();
    let year_to = today.format("%Y-%m-%d").to_string();
    let daily = format!(
        "/api/administrator/connect/balances/totals?interval=day&from={year_from}&to={year_to}"
    );
    let check: serde_json::Value = client
        .get(format!("{host}{daily}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let buckets = check["data"].as_array().map_or(0, Vec::len);
    assert_eq!(buckets, 365, "a year of days: {check}");
    assert_eq!(
        check["data"][0]["accounts"], accounts as i64,
        "{}",
        check["data"][0]
    );
    let hourly_from = (today - Days::hours(1000)).to_rfc3339();
    let hourly = format!(
        "/api/administrator/connect/balances/totals?interval=hour&from={}&to={}",
        hourly_from.replace('+', "%2B"),
        today.to_rfc3339().replace('+', "%2B")
    );
    let owner = format!("{daily}&accountid=owner_7");

    // Where the time goes: the SQL alone, and the use case (SQL and shaping) without HTTP.
    let ends = tally::totals::bucket_ends(
        tally::totals::Interval::Day,
        today - Days::days(364),
        today + Days::days(1),
    )
    .expect("a year of days");
    let mut sql = Vec::new();
    let mut use_case = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        store::totals_history::tenant_series(&pool, tenant_id, &ends)
            .await
            .expect("series");
        sql.push(started.elapsed());
        let started = Instant::now();
        tally::totals::totals_over_time(
            &pool,
            tenant_id,
            tally::totals::Interval::Day,
            today - Days::days(364),
            today + Days::days(1),
            None,
            None,
        )
        .await
        .expect("totals");
        use_case.push(started.elapsed());
    }
    sql.sort_unstable();
    use_case.sort_unstable();
    println!(
        "365 days without HTTP (50 calls): SQL p50 {:.2} ms p99 {:.2} ms; use case p50 {:.2} ms p99 {:.2} ms",
        ms(sql[25]),
        ms(sql[49]),
        ms(use_case[25]),
        ms(use_case[49])
    );

    let duration = Duration::from_secs(seconds);
    let mut summary = Vec::new();
    let floor = "/api/administrator/connect/stripe-accounts-count".to_owned();
    for (name, path, concurrency) in [
        ("HTTP floor: accounts count", &floor, 1),
        ("365 days, 1 client", &daily, 1),
        ("365 days", &daily, clients),
        ("1000 hours", &hourly, clients),
        ("365 days, one owner (scans)", &owner, clients),
    ] {
        let report = common::load(&host, &token, concurrency, duration, vec![path.clone()]).await;
        println!(
            "{}",
            report.line(&format!("{name} ({concurrency} clients)"))
        );
        summary.push((name, concurrency, report.p50, report.p99, report.errors));
    }
    println!("\nsummary (target: a year of daily buckets, p99 <= {TARGET_MS} ms):");
    for (name, concurrency, p50, p99, errors) in summary {
        println!(
            "  {name:<30} {concurrency:>2} clients  p50 {:>7.2} ms  p99 {:>7.2} ms  p99 / target = {:.2}{}",
            ms(p50),
            ms(p99),
            ms(p99) / TARGET_MS,
            if errors > 0 { format!("  ({errors} errors)") } else { String::new() }
        );
    }
    pool.close().await;
    db.drop_now().await;
}
