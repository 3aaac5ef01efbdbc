//! The `tally` CLI (DESIGN §8). Thin: parse, load settings, init tracing, call the
//! library. Results go to stdout, progress and logs to stderr; failures exit
//! non-zero with a one-line reason.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use tally::audit::Actor;
use tally::commands::{self, tenant::TenantSpec};
use tally::config::Settings;
use tally::crypto::MasterKey;
use tally::domain::Role;

#[derive(Parser)]
#[command(name = "tally", version, about = "Stripe Connect balance aggregation")]
struct Cli {
    /// Show a one-shot command's log on stderr (retries, requests; `RUST_LOG` does too).
    /// `serve` and `stripe-sim` always log, by `log.level` and `log.format`.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Serve the admin API (applies pending migrations first).
    Serve {
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Manage tenants (one Stripe credential each).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Refresh balances older than --max-age and print per-currency totals; exits
    /// non-zero when any account failed.
    Balances {
        slug: String,
        /// Serve snapshots younger than this many seconds; fetch the rest live
        /// (at most a year, 31536000).
        #[arg(long, value_name = "SECONDS", default_value_t = 0,
              value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
        max_age: u64,
        #[arg(long, value_enum, default_value = "table")]
        format: commands::balances::OutputFormat,
        /// Totals over time instead, per UTC day or hour, from stored data only (nothing
        /// is fetched from Stripe); needs --from.
        #[arg(
            long,
            value_enum,
            value_name = "INTERVAL",
            requires = "from",
            conflicts_with = "max_age"
        )]
        history: Option<commands::history::HistoryInterval>,
        /// With --history: the first bucket (RFC 3339, or a date: 2026-11-01).
        #[arg(long, value_name = "TIME", requires = "history")]
        from: Option<String>,
        /// With --history: the end (RFC 3339, or a date meaning the whole day); default now.
        #[arg(long, value_name = "TIME", requires = "history")]
        to: Option<String>,
    },
    /// The daily close: each account's day per currency, tied out to Stripe's ledger.
    #[command(subcommand)]
    Close(CloseCommand),
    /// Import a tenant's connected accounts from Stripe (progress on stderr).
    Sync { slug: String },
    /// Run everything offline: simulator, database, tenants, sync, balances, server.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Use a private PostgreSQL cluster even when a server answers.
        #[arg(long)]
        private_db: bool,
    },
    /// Run the Stripe simulator (an organization, its platforms and accounts) offline.
    StripeSim(SimArgs),
    /// Recompute the per-tenant balance totals and counts from the stored accounts and
    /// snapshots; report drift (exit non-zero), or fix it with --repair.
    Doctor {
        #[arg(long)]
        repair: bool,
    },
    /// Re-seal every stored secret under TALLY_MASTER_KEY, in one transaction
    /// (TALLY_MASTER_KEY_PREVIOUS opens those sealed with the old key).
    Rekey,
    /// Who changed what: tenants, tokens, syncs and refreshes started over the API,
    /// rekeys; newest first.
    Audit {
        #[arg(long, value_name = "SLUG")]
        tenant: Option<String>,
        /// Only changes at or after this time (2026-12-01T10:00:00Z, or 2026-12-01).
        #[arg(long, value_name = "TIME", value_parser = tally::audit::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
        /// The page after this event id (the last id of the page before).
        #[arg(long, value_name = "ID")]
        starting_after: Option<i64>,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:12111")]
    bind: SocketAddr,
    #[arg(long, default_value_t = 2)]
    platforms: usize,
    #[arg(long, default_value_t = 50)]
    accounts_per_platform: usize,
    #[arg(long, default_value_t = 3)]
    org_accounts: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Requests per second per key answered before 429s (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// Fraction of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of requests answered slowly (after --slow-ms).
    #[arg(long, default_value_t = 0.0)]
    slow_rate: f64,
    #[arg(long, default_value_t = 2000)]
    slow_ms: u64,
    /// Requests per key per endpoint (method and path) per second before 429s with
    /// `Stripe-Rate-Limited-Reason: endpoint-rate` (0: unlimited; Stripe's default is 25).
    #[arg(long, default_value_t = 0)]
    endpoint_rate_limit: u32,
    /// Average balance-changing activities per connected account per simulated hour;
    /// 0 keeps the static world, above 0 balances come from a ledger of balance transactions.
    #[arg(long, default_value_t = 0.0)]
    activity_per_hour: f64,
    /// Simulated time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    clock_speed: f64,
    /// Simulated start time: unix seconds or RFC 3339 (default: now).
    #[arg(long, value_name = "TIME", value_parser = tally::sim::parse_clock_start)]
    clock_start: Option<i64>,
    /// Simulated seconds from a charge to its available_on (Stripe: about two days).
    #[arg(long, default_value_t = 172_800)]
    settlement_secs: i64,
    /// Fraction of balance changes that send no event.
    #[arg(long, default_value_t = 0.0)]
    silent_change_rate: f64,
    /// Fraction of first webhook delivery attempts treated as failed and retried.
    #[arg(long, default_value_t = 0.0)]
    webhook_fail_rate: f64,
    /// Fraction of events delivered twice.
    #[arg(long, default_value_t = 0.02)]
    webhook_duplicate_rate: f64,
    /// Fraction of events delivered 1-5 s late.
    #[arg(long, default_value_t = 0.02)]
    webhook_late_rate: f64,
    /// First webhook retry after about this long, doubling, at most 64 times as long.
    #[arg(long, default_value_t = 1000)]
    webhook_retry_base_ms: u64,
    /// Write the keys and account ids the simulator serves, as JSON.
    #[arg(long, value_name = "PATH")]
    keys_file: Option<std::path::PathBuf>,
}

/// What `tenant add` sets and `tenant update` changes, besides the key.
#[derive(clap::Args)]
struct TenantSettingsArgs {
    /// Organization keys: a platform in the organization (repeatable; on update, replaces the list).
    #[arg(long = "platform", value_name = "acct_P")]
    platforms: Vec<String>,
    /// Organization keys: an account directly in the organization (repeatable; on update, replaces the list).
    #[arg(long = "account", value_name = "acct_X")]
    accounts: Vec<String>,
    /// Stripe API base URL (the simulator's, for example).
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// Stripe-Version pinned for this tenant (default from config stripe.api_version).
    #[arg(long, value_name = "V")]
    api_version: Option<String>,
    /// Requests per second to Stripe for this credential.
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<u32>,
    /// Environment variable holding the webhook endpoint secret (whsec_…).
    #[arg(long, value_name = "VAR")]
    webhook_secret_env: Option<String>,
}

impl TenantSettingsArgs {
    /// The webhook secret named by `--webhook-secret-env`, read from the environment.
    fn webhook_secret(&self) -> anyhow::Result<Option<secrecy::SecretString>> {
        self.webhook_secret_env
            .as_deref()
            .map(secret_from_env)
            .transpose()
    }
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant; the kind is inferred from the key's prefix.
    Add {
        slug: String,
        /// Environment variable holding the Stripe key (keys never go on the command line).
        #[arg(long, value_name = "VAR")]
        key_env: String,
        #[command(flatten)]
        settings: TenantSettingsArgs,
        /// Store the key without checking it with Stripe (offline set-up).
        #[arg(long)]
        no_verify: bool,
    },
    /// Rotate a tenant's Stripe key without downtime: checked with Stripe, then every
    /// server uses it within 2 s (requests already sent finish with the old one).
    SetKey {
        slug: String,
        /// Environment variable holding the new key.
        #[arg(long, value_name = "VAR")]
        key_env: String,
        /// Store the key without checking it with Stripe (offline set-up).
        #[arg(long)]
        no_verify: bool,
    },
    /// Change a tenant's settings (tenant add's flags; --platform / --account replace
    /// the lists); every server uses them within 2 s.
    Update {
        slug: String,
        #[command(flatten)]
        settings: TenantSettingsArgs,
        /// Organization keys: empty the list of platforms (--platform replaces it).
        #[arg(long, conflicts_with = "platforms")]
        clear_platforms: bool,
        /// Organization keys: empty the list of accounts directly in the organization.
        #[arg(long, conflicts_with = "accounts")]
        clear_accounts: bool,
        /// How balances are kept current: `poll` re-reads every account each
        /// refresh.interval_secs; `events` re-reads the accounts Connect events name and
        /// lets a live event stream vouch for the rest (needs the tenant's webhook
        /// endpoint: `tally tenant webhooks`, or --webhook-secret-env).
        #[arg(long, value_name = "poll|events")]
        freshness: Option<tally::freshness::FreshnessMode>,
        /// The zone the daily close cuts days in (an IANA name: Europe/Berlin; default UTC).
        #[arg(long, value_name = "ZONE")]
        close_timezone: Option<String>,
    },
    /// Disable a tenant (its tokens are refused, the refresher and sync skip it, its
    /// data stays); --purge --yes deletes it and everything it owns.
    Remove {
        slug: String,
        #[arg(long)]
        purge: bool,
        /// Confirms --purge.
        #[arg(long)]
        yes: bool,
    },
    /// Register the tenant's Connect webhook endpoint at Stripe (one per platform for
    /// an organization key) and store its signing secret sealed; found, not doubled, when
    /// run again. --remove deletes them at Stripe and in tally.
    Webhooks {
        slug: String,
        /// Where Stripe delivers: this server's https://…/webhooks/stripe/<slug>.
        #[arg(long, value_name = "URL", required_unless_present = "remove")]
        url: Option<String>,
        /// Event types to receive (repeatable or comma-separated; default `*`, every
        /// type: any event marks its account changed).
        #[arg(long = "events", value_name = "TYPE", conflicts_with = "remove")]
        events: Vec<String>,
        /// Delete the tenant's registered endpoints at Stripe and in tally.
        #[arg(long, conflicts_with = "url")]
        remove: bool,
    },
    /// List tenants (keys shown as last four only).
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(Subcommand)]
enum CloseCommand {
    /// A day's close per currency (brings the tenant's days up to date first).
    Show {
        slug: String,
        /// The local date in the tenant's close timezone (2026-11-30).
        #[arg(long, value_name = "DATE")]
        date: chrono::NaiveDate,
        #[arg(long, value_enum, default_value = "table")]
        format: commands::balances::OutputFormat,
    },
    /// Load every account's balance transactions back to a local date (progress on
    /// stderr; paced by the tenant's Stripe budget; run again to resume).
    Backfill {
        slug: String,
        #[arg(long, value_name = "DATE")]
        since: chrono::NaiveDate,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it (only once; only its hash is stored).
    Create {
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long, value_name = "SLUG")]
        tenant: Option<String>,
        /// What the token is for ("finance-bot").
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: 90d, 12h, 30m, 45s (default: no expiry).
        #[arg(long, value_name = "LIFETIME", value_parser = tally::tokens::parse_lifetime)]
        expires_in: Option<std::time::Duration>,
    },
    /// List tokens (id, name, role, tenant, first characters, created, last used,
    /// expires, status); never the tokens themselves.
    List {
        #[arg(long, value_name = "SLUG")]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Revoke a token: every server refuses it within 2 s.
    Revoke { id: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Settings::load()
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            match &cli.command {
                Command::Demo { .. } => {
                    let path = std::env::temp_dir().join("tally-demo.log");
                    tally::telemetry::init_to_file(&settings.log.level, &path)
                        .with_context(|| format!("opening the demo's log {}", path.display()))?;
                    eprintln!("demo: logs go to {}", path.display());
                }
                Command::Serve { .. } | Command::StripeSim(_) => {
                    tally::telemetry::init(settings.log.format, &settings.log.level)
                }
                _ => tally::telemetry::init_one_shot(
                    settings.log.format,
                    &settings.log.level,
                    cli.verbose,
                ),
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(run(cli.command, settings))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Progress for a person: checking a key can take seconds while Stripe is retried.
fn say_checking_key(slug: &str, no_verify: bool) {
    if !no_verify {
        eprintln!("{slug}: checking the key with Stripe…");
    }
}

/// Reads a secret from the environment variable the operator named.
fn secret_from_env(var: &str) -> anyhow::Result<SecretString> {
    let value =
        std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
    anyhow::ensure!(
        !value.trim().is_empty(),
        "environment variable {var} is empty"
    );
    Ok(SecretString::from(value))
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            tally::db::connect_and_migrate(&settings).await?;
            println!("migrations applied");
        }
        Command::Serve { bind } => commands::serve::run(settings, bind).await?,
        Command::Close(CloseCommand::Show { slug, date, format }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            print!(
                "{}",
                commands::close::show(&pool, &settings, &slug, date, format).await?
            );
        }
        Command::Close(CloseCommand::Backfill { slug, since }) => {
            let (pool, stripe) = commands::stripe_context(&settings).await?;
            let done = commands::close::backfill(&pool, &stripe, &settings, &slug, since).await?;
            println!(
                "{slug}: {} accounts read back to {since}, {} transactions stored, {} Stripe requests{}",
                done.accounts,
                done.stored,
                done.requests,
                if done.failed > 0 {
                    format!("; {} accounts failed (run again to resume)", done.failed)
                } else {
                    String::new()
                }
            );
            if done.failed > 0 {
                anyhow::bail!("{} accounts could not be read", done.failed);
            }
        }
        Command::Sync { slug } => {
            let summary = commands::sync::run(&settings, &slug).await?;
            println!("{}", commands::sync::summary_line(&slug, &summary));
        }
        Command::Tenant(TenantCommand::Add {
            slug,
            key_env,
            settings: flags,
            no_verify,
        }) => {
            let spec = TenantSpec {
                slug,
                key: secret_from_env(&key_env)?,
                webhook_secret: flags.webhook_secret()?,
                platforms: flags.platforms,
                accounts: flags.accounts,
                api_base: flags.api_base,
                api_version: flags.api_version,
                rate_limit: flags.rate_limit,
            };
            let (pool, stripe) = commands::stripe_context(&settings).await?;
            let verify_with = (!no_verify).then_some(stripe.as_ref());
            say_checking_key(&spec.slug, no_verify);
            let tenant = commands::tenant::add_as(
                &pool,
                stripe.master(),
                &settings,
                spec,
                verify_with,
                &Actor::cli(),
            )
            .await?;
            println!(
                "tenant {} added: {} key …{}, Stripe-Version {}{}",
                tenant.slug,
                tenant.kind,
                tenant.key_last4,
                tenant.api_version,
                unchecked_note(no_verify)
            );
        }
        Command::Tenant(TenantCommand::SetKey {
            slug,
            key_env,
            no_verify,
        }) => {
            let key = secret_from_env(&key_env)?;
            let (pool, stripe) = commands::stripe_context(&settings).await?;
            let verify_with = (!no_verify).then_some(stripe.as_ref());
            say_checking_key(&slug, no_verify);
            let tenant = commands::tenant::set_key(
                &pool,
                stripe.master(),
                &settings,
                &slug,
                &key,
                verify_with,
                &Actor::cli(),
            )
            .await?;
            println!(
                "tenant {} now uses key …{}{}; running servers switch within 2 s",
                tenant.slug,
                tenant.key_last4,
                unchecked_note(no_verify)
            );
        }
        Command::Tenant(TenantCommand::Update {
            slug,
            settings: flags,
            clear_platforms,
            clear_accounts,
            freshness,
            close_timezone,
        }) => {
            let master = MasterKey::from_env()?;
            // No flag leaves a list as it is; a flag replaces it; --clear-… empties it.
            let list =
                |given: Vec<String>, clear: bool| (clear || !given.is_empty()).then_some(given);
            let change = commands::tenant::TenantUpdate {
                webhook_secret: flags.webhook_secret()?,
                platforms: list(flags.platforms, clear_platforms),
                accounts: list(flags.accounts, clear_accounts),
                api_base: flags.api_base,
                api_version: flags.api_version,
                rate_limit: flags.rate_limit,
                freshness,
                close_timezone,
            };
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let tenant =
                commands::tenant::update(&pool, &master, &slug, change, &Actor::cli()).await?;
            println!(
                "tenant {} updated; running servers use it within 2 s",
                tenant.slug
            );
        }
        Command::Tenant(TenantCommand::Remove { slug, purge, yes }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            match commands::tenant::remove(&pool, &slug, purge, yes, &Actor::cli()).await? {
                commands::tenant::Removal::Disabled(true) => println!(
                    "tenant {slug} removed: its tokens are refused, its data is kept \
                     (tally tenant remove {slug} --purge --yes deletes it)"
                ),
                commands::tenant::Removal::Disabled(false) => {
                    println!("tenant {slug} was already removed")
                }
                commands::tenant::Removal::Purged { accounts, tokens } => println!(
                    "tenant {slug} purged: deleted with {accounts} accounts and {tokens} tokens"
                ),
            }
        }
        Command::Tenant(TenantCommand::Webhooks {
            slug,
            url,
            events,
            remove,
        }) => {
            let (pool, stripe) = commands::stripe_context(&settings).await?;
            let actor = Actor::cli();
            let done = match url {
                Some(url) if !remove => {
                    commands::tenant_webhooks::register(
                        &pool, &stripe, &slug, &url, &events, &actor,
                    )
                    .await?
                }
                _ => commands::tenant_webhooks::remove(&pool, &stripe, &slug, &actor).await?,
            };
            print!("{}", commands::tenant_webhooks::render(&done));
        }
        Command::Tenant(TenantCommand::List { format }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let tenants = commands::tenant::list(&pool).await?;
            match format {
                ListFormat::Table => print!("{}", commands::tenant::render_table(&tenants)),
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&tenants)?),
            }
        }
        Command::Balances {
            slug,
            format,
            history: Some(interval),
            from,
            to,
            ..
        } => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let from = from.context("--history needs --from")?;
            let text = commands::history::run(&pool, &slug, interval, &from, to.as_deref(), format)
                .await?;
            print!("{text}");
        }
        Command::Balances {
            slug,
            max_age,
            format,
            history: None,
            ..
        } => {
            let (pool, stripe) = commands::stripe_context(&settings).await?;
            let output = commands::balances::run(
                &pool,
                &stripe,
                &settings,
                &slug,
                std::time::Duration::from_secs(max_age),
                format,
            )
            .await?;
            print!("{}", output.text);
            anyhow::ensure!(
                output.complete,
                "{} of {} accounts could not be read (see failures)",
                output.failed,
                output.total
            );
        }
        Command::Demo { bind, private_db } => {
            commands::demo::run(settings, bind, private_db).await?
        }
        Command::StripeSim(args) => {
            let fractions = [
                ("--error-rate", args.error_rate),
                ("--slow-rate", args.slow_rate),
                ("--silent-change-rate", args.silent_change_rate),
                ("--webhook-fail-rate", args.webhook_fail_rate),
                ("--webhook-duplicate-rate", args.webhook_duplicate_rate),
                ("--webhook-late-rate", args.webhook_late_rate),
            ];
            for (flag, value) in fractions {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&value),
                    "{flag} is a fraction between 0 and 1"
                );
            }
            anyhow::ensure!(
                args.activity_per_hour >= 0.0 && args.activity_per_hour.is_finite(),
                "--activity-per-hour is a number of activities, 0 or more"
            );
            anyhow::ensure!(
                args.clock_speed > 0.0 && args.clock_speed.is_finite(),
                "--clock-speed is a factor above 0"
            );
            anyhow::ensure!(args.settlement_secs > 0, "--settlement-secs is above 0");
            let config = tally::sim::SimConfig {
                platforms: args.platforms,
                accounts_per_platform: args.accounts_per_platform,
                org_accounts: args.org_accounts,
                seed: args.seed,
                latency_ms: args.latency_ms,
                jitter_ms: args.jitter_ms,
                rate_limit: args.rate_limit,
                error_rate: args.error_rate,
                slow_rate: args.slow_rate,
                slow_ms: args.slow_ms,
                endpoint_rate_limit: args.endpoint_rate_limit,
                activity_per_hour: args.activity_per_hour,
                clock_speed: args.clock_speed,
                clock_start: args.clock_start,
                settlement_secs: args.settlement_secs,
                silent_change_rate: args.silent_change_rate,
                webhook_fail_rate: args.webhook_fail_rate,
                webhook_duplicate_rate: args.webhook_duplicate_rate,
                webhook_late_rate: args.webhook_late_rate,
                webhook_retry_base_ms: args.webhook_retry_base_ms,
                ..tally::sim::SimConfig::default()
            };
            tally::sim::serve(
                config,
                args.bind,
                args.keys_file,
                tally::tasks::shutdown_signal(),
            )
            .await?;
        }
        Command::Rekey => {
            let master = MasterKey::from_env()?;
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let report = commands::rekey::run(&pool, &master, &Actor::cli()).await?;
            println!(
                "re-sealed {} secrets of {} tenants under TALLY_MASTER_KEY ({} were sealed with TALLY_MASTER_KEY_PREVIOUS)",
                report.secrets, report.tenants, report.from_previous
            );
        }
        Command::Audit {
            tenant,
            since,
            limit,
            starting_after,
            format,
        } => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let filter = tally::audit::AuditFilter {
                tenant,
                since,
                starting_after,
                limit,
            };
            let tally::store::Page {
                data: events,
                has_more: more,
            } = tally::audit::list(&pool, &filter).await?;
            match format {
                ListFormat::Table => print!("{}", tally::audit::render_table(&events)),
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&events)?),
            }
            if let (true, Some(last)) = (more, events.last()) {
                eprintln!(
                    "(more follow: the same command with --starting-after {} shows the next {limit})",
                    last.id
                );
            }
        }
        Command::Doctor { repair } => {
            let report = commands::doctor::run(&settings, repair).await?;
            print!("{}", report.render());
            report.ensure_clean()?;
        }
        Command::Token(TokenCommand::Create {
            role,
            tenant,
            name,
            expires_in,
        }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let spec = tally::tokens::TokenSpec {
                role: Some(role),
                tenant,
                name,
                expires_in,
            };
            let (token, _) = tally::tokens::create_with(&pool, role, &spec, &Actor::cli()).await?;
            println!("{}", token.expose_secret());
        }
        Command::Token(TokenCommand::List { tenant, format }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let tokens = tally::tokens::list(&pool, tenant.as_deref(), None, i64::MAX).await?;
            match format {
                ListFormat::Table => print!("{}", commands::token::render_table(&tokens)),
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let pool = tally::db::connect_and_migrate(&settings).await?;
            let token = tally::tokens::revoke(&pool, id, &Actor::cli()).await?;
            println!(
                "token {} ({}) revoked at {}",
                token.id,
                token.prefix,
                token.revoked_at.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Said after a key stored with `--no-verify`.
fn unchecked_note(no_verify: bool) -> &'static str {
    if no_verify {
        " (not checked with Stripe)"
    } else {
        ""
    }
}
