//! Benchmark: the stripe-accounts listing over a million-account tenant, against
//! what Postgres alone serves for the same query (pgbench, same clients, same run).
//!
//!   cargo bench --bench list_accounts
//!   BENCH_ACCOUNTS=200000 BENCH_SECONDS=3 cargo bench --bench list_accounts
//!   STREAM_ONLY=1 cargo bench --bench list_accounts    # only `all=true` (STREAM_REPEAT=n: n times)
//!   BENCH_SCENARIOS=cursor,first cargo bench --bench list_accounts   # only those pages (no all=true)
//!
//! Prints latency percentiles and requests/s per scenario at two table sizes (to show
//! the first page, and a `starting_after` page at half depth, do not grow with the
//! table while a deep `offset` does), and tally's rate over pgbench's: each scenario
//! runs tally and pgbench back to back BENCH_ROUNDS times (3; odd, for a median),
//! taking turns at going first, and the median pair is reported with every pair's
//! ratio in run order.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_usize, ms, peak_rss_mib, rss_mib};
use serde_json::json;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};

const BATCH: usize = 5_000;

fn account(i: usize) -> serde_json::Value {
    let id = format!("acct_1Bench{i:010}");
    json!({
        "id": id, "object": "account", "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": true, "country": "US",
        // Several accounts per second, so ties on `created` are exercised too.
        "created": 1_600_000_000 + (i / 3) as i64,
        "default_currency": "usd", "details_submitted": true, "email": null,
        "metadata": {"accountid": format!("owner_{}", i / 2)},
        "payouts_enabled": true, "type": "express"
    })
}

async fn load_accounts(pool: &sqlx::PgPool, tenant_id: i64, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let end = (i + BATCH).min(to);
        let inputs: Vec<AccountInput> = (i..end)
            .map(|n| {
                AccountInput::from_stripe_object(&account(n), None, "accountid").expect("valid")
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
    sqlx::query("VACUUM ANALYZE stripe_accounts")
        .execute(pool)
        .await
        .expect("analyze");
    // The load's dirty pages are written now, not by a checkpoint during the first
    // scenario (which then measured the disk as much as tally).
    sqlx::query("CHECKPOINT")
        .execute(pool)
        .await
        .expect("checkpoint");
}

/// What pgbench served: transactions per second, and Postgres's CPU per transaction.
struct Pgbench {
    tps: f64,
    postgres_us: f64,
    /// The share of the machine's cores that were busy.
    busy: f64,
}

/// Runs pgbench with `clients` clients for `seconds`.
fn pgbench(db_url: &str, script: &str, clients: usize, seconds: u64) -> Pgbench {
    let path = std::env::temp_dir().join(format!("tally-pgbench-{}.sql", std::process::id()));
    std::fs::write(&path, script).expect("write pgbench script");
    let cpu = common::CpuUse::start();
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(db_url)
        .output()
        .expect("pgbench runs (package postgresql-contrib / postgresql client)");
    let machine = common::MachineCpu::now().minus(cpu.machine);
    // The postmaster reaps pgbench's backends just after they exit; then they count.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cpu = cpu.since();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let number = |prefix: &str, nth: usize| -> f64 {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(nth))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "pgbench failed: {stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    };
    let transactions = number("number of transactions actually processed:", 5);
    Pgbench {
        tps: number("tps = ", 2),
        postgres_us: cpu.per(transactions as usize).1,
        busy: machine.busy_share(),
    }
}

const ROW: &str = "a.stripeid, a.accountid, a.platform_id, COALESCE(a.stripe_object_text::text, a.stripe_object::text), a.created_at, a.updated_at, a.removed_at";

/// store::accounts::page_with_total, as one pgbench statement.
fn page_script(tenant: i64, offset: usize) -> String {
    format!(
        "SELECT COALESCE((SELECT listed FROM tenant_account_counts WHERE tenant_id = {tenant}), 0), {ROW} \
         FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT a.* FROM (SELECT stripeid FROM stripe_accounts \
         WHERE tenant_id = {tenant} AND removed_at IS NULL ORDER BY created_at DESC, stripeid \
         OFFSET {offset} LIMIT 10) AS page JOIN stripe_accounts a ON a.tenant_id = {tenant} \
         AND a.stripeid = page.stripeid) AS a ON true ORDER BY a.created_at DESC, a.stripeid;\n"
    )
}

/// store::accounts::page_from_cursor (forward), as one pgbench statement.
fn cursor_script(tenant: i64, after: &str) -> String {
    format!(
        "WITH k AS (SELECT created_at, stripeid FROM stripe_accounts WHERE tenant_id = {tenant} \
         AND stripeid = '{after}' AND removed_at IS NULL) \
         SELECT EXISTS (SELECT 1 FROM k), \
         COALESCE((SELECT listed FROM tenant_account_counts WHERE tenant_id = {tenant}), 0), {ROW} \
         FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT a.* FROM stripe_accounts a \
         WHERE a.tenant_id = {tenant} AND a.removed_at IS NULL \
         AND a.created_at <= (SELECT created_at FROM k) \
         AND (a.created_at < (SELECT created_at FROM k) OR a.stripeid > (SELECT stripeid FROM k)) \
         ORDER BY a.created_at DESC, a.stripeid LIMIT 11) AS a ON true \
         ORDER BY a.created_at DESC, a.stripeid;\n"
    )
}

/// The stripeid at `position` in listing order (the last record of the page before).
async fn stripeid_at(pool: &sqlx::PgPool, tenant: i64, position: usize) -> String {
    sqlx::query_scalar(
        "SELECT stripeid FROM stripe_accounts WHERE tenant_id = $1 AND removed_at IS NULL
         ORDER BY created_at DESC, stripeid OFFSET $2 LIMIT 1",
    )
    .bind(tenant)
    .bind(position as i64)
    .fetch_one(pool)
    .await
    .expect("account at depth")
}

/// The owners the owner-page scenario asks for, in turn: the same set for wrk and for
/// pgbench, so both touch the same pages of the table.
const OWNER_PATHS: usize = 4096;

fn owner_number(i: usize, owners: usize) -> usize {
    (i * 7919) % owners
}

/// store::accounts::page_with_total for one owner, as one pgbench statement, for a
/// random owner of the scenario's set.
fn owner_script(tenant: i64, owners: usize) -> String {
    format!(
        "\\set k random(0, {})\n\
         \\set n (:k * 7919) % {owners}\n\
         SELECT (SELECT count(*) FROM stripe_accounts WHERE tenant_id = {tenant} \
         AND accountid = 'owner_' || :n AND removed_at IS NULL), {ROW} \
         FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT a.* FROM (SELECT stripeid FROM stripe_accounts \
         WHERE tenant_id = {tenant} AND accountid = 'owner_' || :n AND removed_at IS NULL \
         ORDER BY created_at DESC, stripeid OFFSET 0 LIMIT 10) AS page JOIN stripe_accounts a \
         ON a.tenant_id = {tenant} AND a.stripeid = page.stripeid) AS a ON true \
         ORDER BY a.created_at DESC, a.stripeid;\n",
        OWNER_PATHS - 1
    )
}

/// Reads `all=true` to the end and prints records/s and the process's memory.
async fn stream_all(client: &reqwest::Client, base: &str, token: &str, size: usize) {
    let rss_before = rss_mib();
    let started = Instant::now();
    let bytes = match curl_download(base, token).await {
        Some(bytes) => bytes,
        None => {
            let mut response = client
                .get(format!("{base}?all=true"))
                .bearer_auth(token)
                .send()
                .await
                .expect("all");
            let mut bytes = 0usize;
            while let Some(chunk) = response.chunk().await.expect("chunk") {
                bytes += chunk.len();
            }
            bytes
        }
    };
    let elapsed = started.elapsed();
    println!(
        "all=true streaming                 {size} records, {:.1} MiB in {:.2} s = {:.0} records/s; RSS {:.0} -> {:.0} MiB (peak {:.0})",
        bytes as f64 / 1048576.0,
        elapsed.as_secs_f64(),
        size as f64 / elapsed.as_secs_f64(),
        rss_before,
        rss_mib(),
        peak_rss_mib()
    );
}

/// Downloads `all=true` with curl (outside this process, as wrk and pgbench are, so
/// the client does not share the server's runtime); the bytes received, or `None`
/// without curl.
async fn curl_download(base: &str, token: &str) -> Option<usize> {
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{base}?all=true"))
        .output()
        .await
        .ok()?;
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[tokio::main]
async fn main() {
    let total = env_usize("BENCH_ACCOUNTS", 1_000_000);
    let clients = env_usize("BENCH_CLIENTS", 16);
    let seconds = env_usize("BENCH_SECONDS", 5) as u64;
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let scenarios_wanted: Vec<String> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_default()
        .split(',')
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty())
        .collect();
    let sizes = [total / 10, total];
    println!(
        "list_accounts: {total} accounts, {clients} concurrent clients, {seconds} s per run, {rounds} tally/pgbench pairs per scenario\n"
    );

    let common::BenchTenant {
        db,
        settings,
        pool,
        master,
        tenant_id,
    } = common::bench_tenant("tally_bench_list", clients as u32).await;
    let token = common::reader_token(&pool, "bench").await;
    let stripe = Arc::new(
        tally::tenants::StripeTenants::new(&settings.stripe, Arc::new(master)).expect("stripe"),
    );
    let base = format!(
        "{}/api/administrator/connect/stripe-accounts",
        common::serve(settings, pool.clone(), stripe).await
    );
    let host = base
        .trim_end_matches("/api/administrator/connect/stripe-accounts")
        .to_owned();
    println!(
        "load generator: {}",
        if common::which_wrk() {
            "wrk (external, like pgbench)"
        } else {
            "in-process reqwest (install wrk for an external one)"
        }
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let duration = Duration::from_secs(seconds);

    let mut loaded = 0;
    let mut ratios = Vec::new();
    for size in sizes {
        let started = Instant::now();
        load_accounts(&pool, tenant_id, loaded, size).await;
        println!(
            "loaded {} accounts in {:.1} s (through the store's upsert)",
            size - loaded,
            started.elapsed().as_secs_f64()
        );
        loaded = size;
        let owners = size / 2;
        let deep = size / 2;
        if std::env::var("STREAM_ONLY").is_ok() {
            // STREAM_REPEAT streams it again (for a profiler to watch).
            for _ in 0..env_usize("STREAM_REPEAT", 1) {
                stream_all(&client, &base, &token, size).await;
            }
            continue;
        }

        let path = "/api/administrator/connect/stripe-accounts";
        let after = stripeid_at(&pool, tenant_id, deep - 1).await;
        // Each scenario: tally's paths (wrk) and the statement tally runs for them
        // (pgbench), so the ratio is tally's overhead over the database's.
        let scenarios = [
            (
                "first page (limit 10)".to_owned(),
                vec![path.to_owned()],
                page_script(tenant_id, 0),
            ),
            (
                "accountid page".to_owned(),
                (0..OWNER_PATHS)
                    .map(|i| format!("{path}?accountid=owner_{}", owner_number(i, owners)))
                    .collect(),
                owner_script(tenant_id, owners),
            ),
            (
                format!("deep offset ({deep})"),
                vec![format!("{path}?offset={deep}")],
                page_script(tenant_id, deep),
            ),
            (
                format!("cursor at depth {deep}"),
                vec![format!("{path}?starting_after={after}")],
                cursor_script(tenant_id, &after),
            ),
        ];
        println!("\n-- {size} accounts --");
        // BENCH_SCENARIOS=cursor,first: only the scenarios whose name has one of these.
        let wanted = |name: &str| {
            scenarios_wanted.is_empty()
                || scenarios_wanted.iter().any(|w| name.contains(w.as_str()))
        };
        for (name, paths, script) in scenarios.into_iter().filter(|s| wanted(&s.0)) {
            // tally and pgbench back to back, `rounds` times, taking turns at going first:
            // whatever else the machine does drifts over minutes, so pairs measured
            // together are compared, and the median pair is reported.
            let mut pairs = Vec::new();
            for round in 0..rounds {
                let tally_first = round % 2 == 0;
                let pg_before = (!tally_first).then(|| pgbench(&db.url, &script, clients, seconds));
                let report = common::load(&host, &token, clients, duration, paths.clone()).await;
                let pg = pg_before.unwrap_or_else(|| pgbench(&db.url, &script, clients, seconds));
                pairs.push((report.rps() / pg.tps, report, pg));
            }
            let in_order: Vec<String> = pairs.iter().map(|(r, _, _)| format!("{r:.2}")).collect();
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (ratio, report, pg) = &pairs[(pairs.len() - 1) / 2];
            println!("{}", report.line(&name));
            println!(
                "{:<34} {:>8.0} tps (pgbench, same query; Postgres {:.0} us CPU each; cores {:.0} % busy)   tally / Postgres = {ratio:.2} (median of {rounds} pairs; in run order: {})",
                "",
                pg.tps,
                pg.postgres_us,
                pg.busy * 100.0,
                in_order.join(" ")
            );
            ratios.push((format!("{name} @ {size}"), report.p99, *ratio));
        }

        if scenarios_wanted.is_empty() {
            stream_all(&client, &base, &token, size).await;
        }
        println!();
    }
    println!("summary (p99 target <= 10 ms for first and accountid pages, <= 5 ms for a cursor page at any depth; ratio target >= 0.5):");
    for (name, p99, ratio) in ratios {
        println!(
            "  {name:<40} p99 {:>7.2} ms   tally/Postgres {ratio:.2}",
            ms(p99)
        );
    }
    pool.close().await;
    db.drop_now().await;
}
