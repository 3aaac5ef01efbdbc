//! Benchmark: sync 50,000 accounts from the in-process simulator under its per-key rate
//! limit R, against the bound that limit sets: pages of 100 accounts at R requests/s.
//!
//!   cargo bench --bench sync_accounts
//!   BENCH_ACCOUNTS=20000 BENCH_RATE=25 cargo bench --bench sync_accounts
//!
//! Prints accounts/s, the bound, their ratio, the 429s the simulator served and peak
//! memory, for a first sync (every account new) and a second one (nothing changed).

mod common;

use std::sync::Arc;

use common::{env_usize, peak_rss_mib, ScratchDb};
use secrecy::SecretString;
use tally::commands::tenant::TenantSpec;
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::sim::{SimConfig, SimHandle};
use tally::store;
use tally::store::tenants::Tenant;
use tally::stripe::TenantClient;
use tally::sync::{self, SyncOptions};
use tally::tenants::StripeTenants;

const PAGE: f64 = 100.0;

#[tokio::main]
async fn main() {
    let accounts = env_usize("BENCH_ACCOUNTS", 50_000);
    let rate = u32::try_from(env_usize("BENCH_RATE", 25)).expect("BENCH_RATE fits u32");
    let db = ScratchDb::create("tally_bench_sync").await;
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&config_dir, "test").expect("settings");
    settings.database.url = SecretString::from(db.url.clone());
    let pool = store::pool(&settings.database).expect("pool");
    store::migrate(&pool).await.expect("migrations");

    let sim = tally::sim::spawn(SimConfig {
        platforms: 1,
        accounts_per_platform: accounts,
        org_accounts: 0,
        rate_limit: rate,
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let master = MasterKey::generate_base64();
    let tenant = add_tenant(&pool, &settings, &sim, &master, rate).await;
    let stripe = StripeTenants::new(
        &settings.stripe,
        Arc::new(MasterKey::from_base64(&master).expect("master key")),
    )
    .expect("stripe client");
    let client = stripe.client_for(&tenant).expect("tenant client");
    let options = SyncOptions::from_settings(&settings);

    println!(
        "sync_accounts: {accounts} accounts on one platform; simulator limit {rate} req/s per key, tenant rate {rate}/s"
    );
    let bound = PAGE * f64::from(rate);
    for name in ["first sync (all new)", "second sync (nothing changed)"] {
        run(name, &pool, &client, &tenant, &options, &sim, bound).await;
    }
    println!(
        "peak memory (VmHWM): {:.0} MiB (the in-process simulator's {accounts} accounts included)",
        peak_rss_mib()
    );
    drop(sim);
    pool.close().await;
    db.drop_now().await;
}

async fn add_tenant(
    pool: &sqlx::PgPool,
    settings: &Settings,
    sim: &SimHandle,
    master: &str,
    rate: u32,
) -> Tenant {
    let spec = TenantSpec {
        slug: "bench".to_owned(),
        key: SecretString::from(sim.keys().platforms[0].key.clone()),
        platforms: vec![],
        accounts: vec![],
        api_base: Some(sim.base_url()),
        api_version: None,
        rate_limit: Some(rate),
        webhook_secret: None,
    };
    let master = MasterKey::from_base64(master).expect("master key");
    tally::commands::tenant::add(pool, &master, settings, spec)
        .await
        .expect("tenant added");
    store::tenants::find_by_slug(pool, "bench")
        .await
        .expect("query")
        .expect("tenant")
}

async fn run(
    name: &str,
    pool: &sqlx::PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    options: &SyncOptions,
    sim: &SimHandle,
    bound: f64,
) {
    sim.reset_stats();
    let summary = sync::run(pool, client, tenant, options, &sync::Quiet)
        .await
        .expect("sync succeeds");
    let run = &summary.run;
    let per_second = summary.accounts_per_second();
    println!(
        "{name:<30} {:>6} accounts {:>4} pages in {:>6.2} s: {:>6.0} accounts/s, bound {:.0} accounts/s (100/page x {:.0} pages/s), ratio {:.2}, 429s {}  [{} inserted, {} updated, {} unchanged]",
        run.accounts_seen,
        run.pages,
        summary.elapsed.as_secs_f64(),
        per_second,
        bound,
        bound / PAGE,
        per_second / bound,
        sim.stats().rate_limited,
        run.inserted,
        run.updated,
        run.unchanged
    );
}
