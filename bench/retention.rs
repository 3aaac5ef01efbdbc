//! Benchmark: retention (issue 16, item 3).
//!
//!   cargo bench --bench retention
//!   RETENTION_ACCOUNTS=40 RETENTION_DAYS=30 RETENTION_INTERVAL_MIN=5 \
//!   RETENTION_WIDE_ACCOUNTS=10000 RETENTION_WIDE_DAYS=2 RETENTION_WIDE_INTERVAL_MIN=60 \
//!       cargo bench --bench retention
//!
//! A month of 5-minute snapshots for 10,000 accounts is ~86 million rows (~70 GB), more
//! than a shared test machine holds. So it writes, straight into Postgres with the
//! shipped schema, two scenes and extrapolates:
//!
//! * the month: RETENTION_ACCOUNTS accounts over RETENTION_DAYS days at
//!   RETENTION_INTERVAL_MIN minutes (snapshots answered by Stripe at their fetch, the
//!   close's balance transactions, account and day closes, webhook event ids, the
//!   hourly totals); prints bytes per account per day on disk before and after a
//!   pruning pass with the shipped settings (the ratio kept), per table, and the steady
//!   size of a 10,000-account tenant those per-row sizes give under the shipped
//!   settings;
//! * the width: RETENTION_WIDE_ACCOUNTS accounts over RETENTION_WIDE_DAYS days at
//!   RETENTION_WIDE_INTERVAL_MIN minutes: how long a prune batch holds its locks when
//!   a tenant is that wide.
//!
//! For both it prints the time each batch's transaction held its locks (begin to
//! commit): max and p99.

mod common;

use std::time::Instant;

use common::{env_usize, ms, ScratchDb};
use sqlx::PgPool;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::store;
use tokio_util::sync::CancellationToken;

/// The tables a tenant grows with time (what the issue counts), with their indexes.
const GROWING: [&str; 8] = [
    "balance_snapshots",
    "balance_transactions",
    "account_closes",
    "day_closes",
    "balance_totals_history",
    "webhook_events",
    "balance_refreshes",
    "sync_runs",
];

/// Balance transactions per account and day, and webhook events per account and day.
const TRANSACTIONS_PER_DAY: i64 = 10;
const EVENTS_PER_DAY: i64 = 10;

struct Scene {
    accounts: i64,
    days: i64,
    interval_min: i64,
}

#[tokio::main]
async fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let month = Scene {
        accounts: env_usize("RETENTION_ACCOUNTS", 40) as i64,
        days: env_usize("RETENTION_DAYS", 30) as i64,
        interval_min: env_usize("RETENTION_INTERVAL_MIN", 5) as i64,
    };
    let wide = Scene {
        accounts: env_usize("RETENTION_WIDE_ACCOUNTS", 10_000) as i64,
        days: env_usize("RETENTION_WIDE_DAYS", 2) as i64,
        interval_min: env_usize("RETENTION_WIDE_INTERVAL_MIN", 60) as i64,
    };
    let settings = Settings::load().expect("settings");
    println!(
        "\n== a month: {} accounts, {} days, a snapshot every {} min ==",
        month.accounts, month.days, month.interval_min
    );
    run(&month, &settings, true).await;
    println!(
        "\n== width: {} accounts, {} days, a snapshot every {} min ==",
        wide.accounts, wide.days, wide.interval_min
    );
    run(&wide, &settings, false).await;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average at end: {}", load.trim());
}

async fn run(scene: &Scene, settings: &Settings, report_sizes: bool) {
    let db = ScratchDb::create("tally_bench_retention").await;
    let mut settings = settings.clone();
    settings.database.url = db.url.clone().into();
    settings.database.max_connections = 4;
    let pool = store::pool(&settings.database).expect("pool");
    store::migrate(&pool).await.expect("migrate");
    let master = MasterKey::generate_base64();
    let tenant = common::add_tenant(
        &pool,
        &settings,
        &master,
        "sk_test_51BenchRetentionKey0000001",
        "http://127.0.0.1:9".into(),
        100,
    )
    .await;
    let writing = Instant::now();
    write_scene(&pool, tenant.id, scene).await;
    println!(
        "wrote the scene in {:.1} s",
        writing.elapsed().as_secs_f64()
    );
    vacuum(&pool).await;
    let before = sizes(&pool).await;

    let mut batches = Vec::new();
    let pruning = Instant::now();
    let mut deleted = std::collections::BTreeMap::new();
    loop {
        let pass = tally::retention::pass(&pool, &settings.retention, &CancellationToken::new())
            .await
            .expect("pruning pass");
        batches.extend(pass.batches);
        let total: u64 = pass.deleted.values().sum();
        for (table, rows) in pass.deleted {
            *deleted.entry(table).or_insert(0u64) += rows;
        }
        if total == 0 {
            break;
        }
    }
    println!(
        "pruned in {:.1} s, {} batches of at most {} rows: {deleted:?}",
        pruning.elapsed().as_secs_f64(),
        batches.len(),
        settings.retention.batch_size
    );
    batches.sort();
    if let (Some(max), false) = (batches.last(), batches.is_empty()) {
        let p99 = batches[((batches.len() - 1) as f64 * 0.99).round() as usize];
        let p50 = batches[(batches.len() - 1) / 2];
        println!(
            "a batch holds its locks: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            ms(p50),
            ms(p99),
            ms(*max)
        );
    }
    vacuum(&pool).await;
    let after = sizes(&pool).await;

    if report_sizes {
        let per = |bytes: i64| bytes as f64 / (scene.accounts * scene.days) as f64;
        println!(
            "{:<24} {:>14} {:>14}   (bytes per account per day)",
            "table", "before", "after"
        );
        let (mut all_before, mut all_after) = (0, 0);
        for ((table, b), (_, a)) in before.iter().zip(after.iter()) {
            println!("{table:<24} {:>14.0} {:>14.0}", per(*b), per(*a));
            all_before += b;
            all_after += a;
        }
        println!(
            "{:<24} {:>14.0} {:>14.0}   kept {:.3} of it",
            "all",
            per(all_before),
            per(all_after),
            all_after as f64 / all_before as f64
        );
        steady_state(&pool, scene, &settings).await;
    }
    pool.close().await;
    db.drop_now().await;
}

/// Writes the scene set-based; the history trigger is off while snapshots go in (the
/// totals' rows are written as the hourly rows they make).
async fn write_scene(pool: &PgPool, tenant_id: i64, scene: &Scene) {
    let days = scene.days;
    sqlx::query(
        r#"INSERT INTO stripe_accounts (tenant_id, stripeid, accountid, stripe_object, created_at)
           SELECT $1, 'acct_1Ret' || lpad(i::text, 10, '0'), NULL,
                  jsonb_build_object('id', 'acct_1Ret' || lpad(i::text, 10, '0'), 'object', 'account'),
                  to_timestamp(1600000000 + i)
           FROM generate_series(1, $2) i"#,
    )
    .bind(tenant_id)
    .bind(scene.accounts)
    .execute(pool)
    .await
    .expect("accounts");
    sqlx::raw_sql("ALTER TABLE balance_snapshots DISABLE TRIGGER balance_snapshots_history")
        .execute(pool)
        .await
        .expect("trigger off");
    // A balance as Stripe answers an account with two currencies.
    for day in 0..days {
        sqlx::query(
            r#"INSERT INTO balance_snapshots (tenant_id, stripeid, fetched_at, source, balance, stripe_at)
               SELECT a.tenant_id, a.stripeid, t, 'fetch',
                      jsonb_build_object(
                        'object', 'balance', 'livemode', false,
                        'available', jsonb_build_array(
                            jsonb_build_object('amount', (extract(epoch FROM t)::bigint % 100000),
                                               'currency', 'usd',
                                               'source_types', jsonb_build_object('card', 1234, 'bank_account', 0)),
                            jsonb_build_object('amount', 4321, 'currency', 'eur',
                                               'source_types', jsonb_build_object('card', 4321))),
                        'pending', jsonb_build_array(
                            jsonb_build_object('amount', 250, 'currency', 'usd',
                                               'source_types', jsonb_build_object('card', 250)),
                            jsonb_build_object('amount', 0, 'currency', 'eur',
                                               'source_types', jsonb_build_object('card', 0))),
                        'connect_reserved', jsonb_build_array(
                            jsonb_build_object('amount', 0, 'currency', 'usd')),
                        'instant_available', jsonb_build_array(
                            jsonb_build_object('amount', 1000, 'currency', 'usd',
                                               'net_available', jsonb_build_array(
                                                   jsonb_build_object('amount', 990, 'destination', 'ba_1Bench'))))),
                      t
               FROM stripe_accounts a
               CROSS JOIN generate_series(now() - make_interval(days => $2::int - $3::int),
                                          LEAST(now(), now() - make_interval(days => $2::int - $3::int - 1))
                                              - interval '1 second',
                                          make_interval(mins => $4::int)) t
               WHERE a.tenant_id = $1"#,
        )
        .bind(tenant_id)
        .bind(days as i32)
        .bind(day as i32)
        .bind(scene.interval_min as i32)
        .execute(pool)
        .await
        .expect("snapshots");
    }
    sqlx::raw_sql("ALTER TABLE balance_snapshots ENABLE TRIGGER balance_snapshots_history")
        .execute(pool)
        .await
        .expect("trigger on");
    sqlx::query(
        r#"INSERT INTO latest_balances (tenant_id, stripeid, snapshot_id, fetched_at, ok, amounts,
                                        good_snapshot_id, good_at)
           SELECT DISTINCT ON (s.stripeid) s.tenant_id, s.stripeid, s.id, s.fetched_at, true, '[]',
                  s.id, s.fetched_at
           FROM balance_snapshots s WHERE s.tenant_id = $1
           ORDER BY s.stripeid, s.fetched_at DESC"#,
    )
    .bind(tenant_id)
    .execute(pool)
    .await
    .expect("latest");
    sqlx::query(
        r#"INSERT INTO ledger_reads (tenant_id, stripeid, complete_from, complete_to)
           SELECT tenant_id, stripeid, now() - make_interval(days => $2::int), now()
           FROM stripe_accounts WHERE tenant_id = $1"#,
    )
    .bind(tenant_id)
    .bind(days as i32)
    .execute(pool)
    .await
    .expect("ledger reads");
    sqlx::query(
        r#"INSERT INTO balance_transactions (tenant_id, id, stripeid, type, reporting_category,
                                             amount, fee, net, currency, created, available_on,
                                             status, source)
           SELECT a.tenant_id, 'txn_1' || md5(a.stripeid || n::text), a.stripeid, 'charge', 'charge',
                  2000, 88, 1912, 'usd', t + interval '17 seconds', t + interval '2 days 17 seconds',
                  'available', 'ch_1' || md5(a.stripeid || n::text)
           FROM stripe_accounts a
           CROSS JOIN LATERAL generate_series(1, $2::int * $3::int) n
           CROSS JOIN LATERAL (SELECT now() - make_interval(days => $2::int)
                                     + (n * interval '1 day' / $3::int) AS t) tt
           WHERE a.tenant_id = $1"#,
    )
    .bind(tenant_id)
    .bind(days as i32)
    .bind(TRANSACTIONS_PER_DAY as i32)
    .execute(pool)
    .await
    .expect("transactions");
    sqlx::query(
        r#"INSERT INTO webhook_events (tenant_id, event_id, event_type, account, received_at)
           SELECT a.tenant_id, 'evt_1' || md5(a.stripeid || n::text), 'account.updated', a.stripeid,
                  now() - make_interval(days => $2::int) + (n * interval '1 day' / $3::int)
           FROM stripe_accounts a CROSS JOIN generate_series(1, $2::int * $3::int) n
           WHERE a.tenant_id = $1"#,
    )
    .bind(tenant_id)
    .bind(days as i32)
    .bind(EVENTS_PER_DAY as i32)
    .execute(pool)
    .await
    .expect("events");
    // Every day closed: a row per account and currency, and the day's row.
    sqlx::query(
        r#"INSERT INTO day_closes (tenant_id, day, timezone, starts_at, ends_at, computed_at,
                                   closed_at, summary)
           SELECT $1, d::date, 'UTC', d, d + interval '1 day', d + interval '1 day 1 hour',
                  d + interval '1 day 1 hour',
                  '{"usd": {"opening": {"available": 1, "pending": 2}, "closing": {"available": 3, "pending": 4}, "transactions": 100, "accounts": 40}}'
           FROM generate_series(date_trunc('day', now()) - make_interval(days => $2::int),
                                date_trunc('day', now()) - interval '1 day', interval '1 day') d"#,
    )
    .bind(tenant_id)
    .bind(days as i32)
    .execute(pool)
    .await
    .expect("days");
    sqlx::query(
        r#"INSERT INTO account_closes (tenant_id, day, stripeid, currency, opening_available,
                                       opening_pending, closing_available, closing_pending,
                                       activity, transactions, tieout, difference_available,
                                       difference_pending, checked_snapshot_id, checked_stripe_at)
           SELECT d.tenant_id, d.day, a.stripeid, c, 1000, 200, 1100, 300,
                  '{"charge": {"count": 10, "amount": 20000, "fee": 880, "net": 19120}}',
                  10, 'matched', 0, 0, 1, d.ends_at
           FROM day_closes d
           JOIN stripe_accounts a ON a.tenant_id = d.tenant_id
           CROSS JOIN (VALUES ('usd'), ('eur')) cur(c)
           WHERE d.tenant_id = $1"#,
    )
    .bind(tenant_id)
    .execute(pool)
    .await
    .expect("account closes");
    sqlx::query(
        r#"INSERT INTO balance_totals_history (tenant_id, at, accounts, missing, totals)
           SELECT $1, h, $3, 0, '{"usd": [100000, 2000, 0, 5000, 40], "eur": [4000, 0, 0, 0, 40]}'
           FROM generate_series(date_trunc('hour', now()) - make_interval(days => $2::int),
                                date_trunc('hour', now()), interval '1 hour') h"#,
    )
    .bind(tenant_id)
    .bind(days as i32)
    .bind(i64::from(scene.accounts as i32))
    .execute(pool)
    .await
    .expect("history");
}

async fn vacuum(pool: &PgPool) {
    for table in GROWING {
        sqlx::raw_sql(&format!("VACUUM (FULL, ANALYZE) {table}"))
            .execute(pool)
            .await
            .expect("vacuum");
    }
}

async fn sizes(pool: &PgPool) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in GROWING {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
            .bind(table)
            .fetch_one(pool)
            .await
            .expect("size");
        out.push((table, bytes));
    }
    out
}

/// Bytes per row of `table` on disk (with its indexes), after the pass.
async fn bytes_per_row(pool: &PgPool, table: &str) -> f64 {
    let (bytes, rows): (i64, i64) = sqlx::query_as(&format!(
        "SELECT pg_total_relation_size('{table}'), (SELECT count(*) FROM {table})"
    ))
    .fetch_one(pool)
    .await
    .expect("per row");
    if rows == 0 {
        0.0
    } else {
        bytes as f64 / rows as f64
    }
}

/// The size a 10,000-account tenant levels off at under the settings, from the per-row
/// sizes measured: every snapshot of the full days, about two a day after that (the
/// day's last and the close's checkpoint, while the day is open; one after), the
/// transactions of `ledger_days`, two account rows a day for `closes_days`, event ids
/// for `webhook_events_days`, the hourly totals.
async fn steady_state(pool: &PgPool, scene: &Scene, settings: &Settings) {
    let r = &settings.retention;
    let accounts = 10_000.0;
    let per_day = (24 * 60 / scene.interval_min) as f64;
    let snapshot = bytes_per_row(pool, "balance_snapshots").await;
    let transaction = bytes_per_row(pool, "balance_transactions").await;
    let close = bytes_per_row(pool, "account_closes").await;
    let event = bytes_per_row(pool, "webhook_events").await;
    let days = |d: u32| if d == 0 { 3650.0 } else { f64::from(d) };
    let snapshots = accounts
        * snapshot
        * (per_day * days(r.snapshots_full_days)
            + 2.0 * days(r.ledger_days).min(days(r.snapshots_days))
            + (days(r.snapshots_days) - days(r.ledger_days)).max(0.0));
    let transactions = accounts * transaction * TRANSACTIONS_PER_DAY as f64 * days(r.ledger_days);
    let closes = accounts * close * 2.0 * days(r.closes_days);
    let events = accounts * event * EVENTS_PER_DAY as f64 * days(r.webhook_events_days);
    let gb = |b: f64| b / 1e9;
    println!(
        "per row on disk: snapshot {snapshot:.0} B, transaction {transaction:.0} B, account close {close:.0} B, event id {event:.0} B"
    );
    println!(
        "a 10,000-account tenant at a {}-minute interval levels off at ~{:.1} GB: snapshots {:.1}, transactions {:.1}, closes {:.1}, event ids {:.2} (GB)",
        scene.interval_min,
        gb(snapshots + transactions + closes + events),
        gb(snapshots),
        gb(transactions),
        gb(closes),
        gb(events)
    );
    let without = accounts * per_day * snapshot * 30.0
        + accounts * transaction * TRANSACTIONS_PER_DAY as f64 * 30.0
        + accounts * close * 2.0 * 30.0
        + accounts * event * EVENTS_PER_DAY as f64 * 30.0;
    println!(
        "without pruning the same tenant grows {:.1} GB a month",
        gb(without)
    );
}
