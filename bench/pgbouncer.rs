//! Benchmark: what running behind PgBouncer costs the hot paths (issue 16 item 2).
//! Each path runs closed-loop from several clients, three ways: directly with the
//! defaults (statements prepared once per connection and cached), directly with
//! `database.pgbouncer = true` (each statement parsed, planned and run in one round
//! trip, `BEGIN` setting the timeout), and through a real PgBouncer in
//! transaction-pooling mode (started like the tests start it); prints operations per
//! second and each as a ratio of direct.
//!
//!   cargo bench --bench pgbouncer
//!   BENCH_ACCOUNTS=10000 BENCH_SECONDS=3 BENCH_CLIENTS=8 cargo bench --bench pgbouncer

mod common;

// The tests' PgBouncer harness and package provisioning, used as they are.
#[allow(dead_code)]
#[path = "../tests/api/bouncer.rs"]
mod bouncer;
#[allow(dead_code)]
#[path = "../tests/api/provision.rs"]
mod provision;
mod helpers {
    pub use crate::common::{admin_url, free_port};
}

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bouncer::Bouncer;
use chrono::Utc;
use common::env_usize;
use secrecy::SecretString;
use serde_json::json;
use sqlx::PgPool;
use tally::config::DatabaseSettings;
use tally::money::Totals;
use tally::shared_budget::SLOT_SPACING;
use tally::store;
use tally::store::accounts::{AccountInput, Observed};
use tally::store::snapshots::SnapshotOutcome;
use tally::store::stripe_budgets::Rates;

fn stripeid(i: usize) -> tally::domain::StripeAccountId {
    tally::domain::StripeAccountId::parse(&format!("acct_1Bouncer{i:010}")).expect("an acct_ id")
}

fn account(i: usize) -> serde_json::Value {
    json!({
        "id": stripeid(i), "object": "account", "type": "express",
        "created": 1_600_000_000 + i as i64, "country": "US",
        "metadata": {"accountid": format!("owner_{}", i / 2)}
    })
}

fn balance(amount: i64) -> (serde_json::Value, Totals) {
    let raw = json!({"object": "balance", "livemode": false,
                     "available": [{"amount": amount, "currency": "usd"}],
                     "pending": [{"amount": 5, "currency": "eur"}]});
    let parsed: tally::stripe::Balance = serde_json::from_value(raw.clone()).expect("balance");
    let totals = Totals::from_balance(&parsed).expect("no overflow");
    (raw, totals)
}

async fn record(pool: &PgPool, tenant_id: i64, i: usize, amount: i64) {
    let (raw, totals) = balance(amount);
    let mut conn = pool.acquire().await.expect("connection");
    store::snapshots::record(
        &mut conn,
        tenant_id,
        &stripeid(i),
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

static NEXT_AMOUNT: AtomicI64 = AtomicI64::new(1_000);

/// Operations per second of `op(client, n)` from `clients` tasks for `seconds`.
async fn per_second<F, Fut>(clients: usize, seconds: u64, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    op(client, n).await;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The four hot paths on `pool`, operations per second each.
async fn hot_paths(
    pool: &PgPool,
    tenant_id: i64,
    accounts: usize,
    clients: usize,
    seconds: u64,
) -> [f64; 4] {
    let listing = {
        let pool = pool.clone();
        per_second(clients, seconds, move |_, _| {
            let pool = pool.clone();
            async move {
                store::accounts::page_with_total(&pool, tenant_id, None, 0, 10)
                    .await
                    .expect("page");
            }
        })
        .await
    };
    let balance = {
        let pool = pool.clone();
        per_second(clients, seconds, move |client, n| {
            let pool = pool.clone();
            async move {
                let i = (client * 7919 + n as usize * 104_729) % accounts;
                store::snapshots::latest_and_good_at(&pool, tenant_id, &stripeid(i))
                    .await
                    .expect("balance")
                    .expect("a snapshot");
            }
        })
        .await
    };
    let budget = {
        let pool = pool.clone();
        per_second(clients, seconds, move |_, _| {
            let pool = pool.clone();
            async move {
                let rates = Rates {
                    tenant: 100,
                    endpoint: "/v1/balance",
                    endpoint_rate: 25,
                };
                store::stripe_budgets::reserve(&pool, tenant_id, rates, Some(1_000), SLOT_SPACING)
                    .await
                    .expect("reservation");
            }
        })
        .await
    };
    let snapshot = {
        let pool = pool.clone();
        per_second(clients, seconds, move |client, n| {
            let pool = pool.clone();
            async move {
                // Each client writes its own accounts, as refreshers holding leases do,
                // each time a new amount, so every write moves the tenant's totals (an
                // unchanged balance moves nothing and costs less).
                let i = (client + clients * n as usize) % accounts;
                let amount = NEXT_AMOUNT.fetch_add(1, Ordering::Relaxed);
                record(&pool, tenant_id, i, amount).await;
            }
        })
        .await
    };
    [listing, balance, budget, snapshot]
}

#[tokio::main]
async fn main() {
    let accounts = env_usize("BENCH_ACCOUNTS", 10_000);
    let clients = env_usize("BENCH_CLIENTS", 8);
    let seconds = env_usize("BENCH_SECONDS", 3) as u64;
    println!("pgbouncer: {accounts} accounts, {clients} concurrent clients, {seconds} s per path and setting\n");

    let common::BenchTenant {
        db,
        settings,
        pool: direct,
        tenant_id,
        ..
    } = common::bench_tenant("tally_bench_pgbouncer", clients as u32).await;
    let inputs: Vec<AccountInput> = (0..accounts)
        .map(|i| AccountInput::from_stripe_object(&account(i), None, "accountid").expect("valid"))
        .collect();
    for chunk in inputs.chunks(5_000) {
        store::accounts::upsert(&direct, tenant_id, chunk, Observed::Fetched(Utc::now()))
            .await
            .expect("upsert");
    }
    for i in 0..accounts {
        record(&direct, tenant_id, i, 100).await;
    }

    let pgbouncer = Bouncer::start();
    let settings_for = |database: &DatabaseSettings| {
        let mut database = database.clone();
        database.pgbouncer = true;
        database
    };
    let direct_flagged = settings_for(&settings.database);
    let mut behind = direct_flagged.clone();
    behind.url = SecretString::from(pgbouncer.url_for(&db.url));

    // Direct with the defaults first: a pool built with `pgbouncer = true` makes every
    // later `BEGIN` of this process set the timeout too (store::begin).
    // One untimed second of each path first, so what the first measured setting pays
    // for cold caches (the snapshot history's pages, the budget rows) no one does.
    hot_paths(&direct, tenant_id, accounts, clients, 1).await;
    let mut results = vec![(
        "direct",
        hot_paths(&direct, tenant_id, accounts, clients, seconds).await,
    )];
    direct.close().await;
    for (name, database) in [
        ("direct, pgbouncer = true", &direct_flagged),
        ("through PgBouncer", &behind),
    ] {
        let pool = store::pool(database).expect("pool");
        results.push((
            name,
            hot_paths(&pool, tenant_id, accounts, clients, seconds).await,
        ));
        pool.close().await;
    }

    let paths = [
        "first listing page (page_with_total)",
        "one account's balance (latest_and_good_at)",
        "shared-budget reservation (stripe_budgets::reserve)",
        "snapshot write (snapshots::record)",
    ];
    let base = results[0].1;
    for (p, path) in paths.iter().enumerate() {
        println!("{path}:");
        for (name, rates) in &results {
            println!(
                "  {name:<26} {:>8.0} /s   ratio {:.2}",
                rates[p],
                rates[p] / base[p]
            );
        }
    }
    drop(pgbouncer);
    db.drop_now().await;
}
