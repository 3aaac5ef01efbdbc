//! `tally demo`: the whole thing on one machine with no set-up (DESIGN §8): a
//! simulator, a database, two tenants (a platform key and an organization key), a
//! sync, balances with explained failures, and the server, with a token and curl
//! commands to try.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, Executor, PgConnection};

use super::pgcluster::PrivateCluster;
use super::tenant::TenantSpec;
use crate::app::Application;
use crate::config::Settings;
use crate::crypto::MasterKey;
use crate::domain::Role;
use crate::sim::{SimConfig, SimHandle};
use crate::sync::SyncOptions;
use crate::tenants::StripeTenants;

/// Where the demo keeps its data.
enum DemoDatabase {
    /// The database `DATABASE_URL` names.
    Named,
    /// A fresh `tally_demo` database on the local server.
    Local,
    /// A private cluster, stopped and deleted when the demo ends (on drop).
    Private { _cluster: PrivateCluster },
}

const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_DEMO_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/tally_demo";

pub async fn run(mut settings: Settings, bind: SocketAddr, private_db: bool) -> anyhow::Result<()> {
    let database = choose_database(&mut settings, private_db).await?;
    let master_base64 = std::env::var(crate::crypto::MASTER_KEY_ENV).unwrap_or_else(|_| {
        eprintln!(
            "demo: {} is not set; using a fresh key for this run",
            crate::crypto::MASTER_KEY_ENV
        );
        MasterKey::generate_base64()
    });
    let master = Arc::new(MasterKey::from_base64(&master_base64)?);
    let pool = crate::db::connect_and_migrate(&settings).await?;

    eprintln!("demo: starting the Stripe simulator (2 platforms x 50 accounts, 3 accounts directly in the org)");
    let sim = crate::sim::spawn(SimConfig {
        latency_ms: 20,
        jitter_ms: 30,
        ..SimConfig::default()
    })
    .await?;
    add_tenants(&pool, &master, &settings, &sim).await?;

    let stripe =
        Arc::new(StripeTenants::new(&settings.stripe, master)?.with_shared_budget(pool.clone()));
    let options = SyncOptions::from_settings(&settings);
    for slug in ["acme", "org"] {
        let tenant = crate::store::tenants::find_by_slug(&pool, slug)
            .await?
            .context("the demo tenant was just added")?;
        let client = stripe.client_for(&tenant)?;
        let summary =
            crate::sync::run(&pool, &client, &tenant, &options, &crate::sync::Quiet).await?;
        println!("{}", super::sync::summary_line(slug, &summary));
    }

    // Two accounts go wrong after the sync, so the balances show explained failures:
    // one disconnected from its platform, one that Stripe keeps failing.
    let acme_accounts = &sim.keys().platforms[0].accounts;
    sim.revoke(&acme_accounts[0]);
    sim.fail_account(&sim.keys().org_accounts[0], 500);

    for slug in ["acme", "org"] {
        let output = super::balances::run(
            &pool,
            &stripe,
            &settings,
            slug,
            Duration::ZERO,
            super::balances::OutputFormat::Table,
        )
        .await?;
        println!("\n== balances of tenant {slug} ==\n{}", output.text);
    }

    let owner = crate::tokens::create(&pool, Role::Owner, None).await?;
    let reader = crate::tokens::create(&pool, Role::Reader, Some("acme")).await?;
    settings.server.bind = bind;
    let interval = settings.refresh.interval_secs;
    let app = Application::with_parts(settings, pool, stripe)
        .await
        .context("pass --bind 127.0.0.1:0 for any free port")?;
    print_try_it(
        app.address(),
        owner.expose_secret(),
        reader.expose_secret(),
        &sim,
        interval,
    );
    // The server's refresher keeps every account fresh from here on, as in production.
    app.run_until_stopped(crate::tasks::shutdown_signal())
        .await?;
    drop(sim);
    drop(database);
    Ok(())
}

async fn choose_database(
    settings: &mut Settings,
    private_db: bool,
) -> anyhow::Result<DemoDatabase> {
    if !private_db && std::env::var("DATABASE_URL").is_ok() {
        eprintln!("demo: using the database DATABASE_URL names");
        return Ok(DemoDatabase::Named);
    }
    if !private_db {
        if let Ok(mut server) = PgConnection::connect(LOCAL_SERVER).await {
            eprintln!("demo: using a fresh database tally_demo on the local PostgreSQL");
            server
                .execute("DROP DATABASE IF EXISTS tally_demo WITH (FORCE)")
                .await?;
            server.execute("CREATE DATABASE tally_demo").await?;
            settings.database.url = SecretString::from(LOCAL_DEMO_DATABASE.to_owned());
            return Ok(DemoDatabase::Local);
        }
    }
    eprintln!("demo: no PostgreSQL answers; starting a private cluster from the local binaries");
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start).await??;
    eprintln!("demo: private cluster in {}", cluster.dir().display());
    settings.database.url = SecretString::from(cluster.url());
    Ok(DemoDatabase::Private { _cluster: cluster })
}

async fn add_tenants(
    pool: &sqlx::PgPool,
    master: &MasterKey,
    settings: &Settings,
    sim: &SimHandle,
) -> anyhow::Result<()> {
    let keys = sim.keys();
    let specs = [
        TenantSpec {
            api_base: Some(sim.base_url()),
            ..TenantSpec::new("acme", SecretString::from(keys.platforms[0].key.clone()))
        },
        TenantSpec {
            platforms: keys.platforms.iter().map(|p| p.id.clone()).collect(),
            accounts: keys.org_accounts.clone(),
            api_base: Some(sim.base_url()),
            ..TenantSpec::new("org", SecretString::from(keys.organization_key.clone()))
        },
    ];
    for spec in specs {
        let view = super::tenant::add(pool, master, settings, spec).await?;
        println!(
            "tenant {} added: {} key …{}",
            view.slug, view.kind, view.key_last4
        );
    }
    Ok(())
}

fn print_try_it(address: SocketAddr, owner: &str, reader: &str, sim: &SimHandle, interval: u64) {
    let base = format!("http://{address}/api/administrator/connect");
    println!(
        "\n== tally is serving on http://{address} (Ctrl-C to stop) ==\n\
         its refresher keeps every account's balance younger than {interval} s from here on\n\
         owner token (every tenant): {owner}\n\
         reader token (tenant acme): {reader}\n\n\
         admin page: http://{address}/admin\n\
         open it in a browser and sign in by pasting the reader token above (tenant acme's page),\n\
         or the owner token (every tenant, and the sync and refresh buttons)\n\n\
         Or try:\n\
         export TOKEN={reader}\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/stripe-accounts?limit=3'\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/stripe-accounts-count'\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/balances'                       # at once, from what is stored\n\
         curl -si -H \"Authorization: Bearer $TOKEN\" '{base}/balances?max_age=60&wait=5'     # 200, or 202 + Location to poll\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/balances/refreshes'             # what the refresher did\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Accept: text/csv' '{base}/balances?max_age=300'\n\
         curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/stripe-account/balance?stripeid={account}&max_age=0'\n\
         curl -s -H \"Authorization: Bearer {owner}\" '{base}/balances?tenant=org&max_age=300'\n\
         curl -s -X POST -H \"Authorization: Bearer {owner}\" '{base}/sync?tenant=org'\n",
        account = sim.keys().platforms[0].accounts[1],
    );
}
