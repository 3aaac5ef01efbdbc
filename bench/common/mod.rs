//! Shared pieces of the benchmarks: a scratch database, a closed-loop HTTP load
//! generator, and latency statistics.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A database for one benchmark run, dropped at the end.
pub struct ScratchDb {
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    pub async fn create(prefix: &str) -> ScratchDb {
        let name = format!("{prefix}_{}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connect to Postgres");
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await
            .expect("drop old");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create database");
        let base = admin_url();
        let slash = base.rfind('/').expect("database path in URL");
        let url = format!("{}/{name}", &base[..slash]);
        ScratchDb { name, url }
    }

    pub async fn drop_now(&self) {
        if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
            let _ = admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str(),
                )
                .await;
        }
    }
}

/// Latency percentiles and throughput of one load run.
pub struct LoadReport {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// CPU this process (the server, and the client when it runs in-process) and
    /// Postgres's backends used while the load ran.
    pub cpu: Option<CpuUse>,
}

/// CPU used over a stretch of load: by this process (and how much of it in the
/// kernel), by every Postgres process, and by the whole machine (busy over all).
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub own: Duration,
    pub own_kernel: Duration,
    pub postgres: Duration,
    pub machine: MachineCpu,
}

/// `/proc/stat`'s first line: ticks every core spent busy, and in all.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub total: u64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total: u64 = ticks.iter().take(8).sum();
        // idle and iowait are the 4th and 5th.
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// What was used from `earlier` to `self`.
    pub fn minus(self, earlier: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// The share of the machine's cores that were busy.
    pub fn busy_share(&self) -> f64 {
        self.busy as f64 / self.total.max(1) as f64
    }
}

impl CpuUse {
    /// Starts counting; `since` gives what was used from here.
    pub fn start() -> CpuUse {
        CpuUse {
            own: process_cpu("self", false),
            own_kernel: process_kernel_cpu("self"),
            postgres: postgres_cpu(),
            machine: MachineCpu::now(),
        }
    }

    pub fn since(self) -> CpuUse {
        CpuUse {
            own: process_cpu("self", false).saturating_sub(self.own),
            own_kernel: process_kernel_cpu("self").saturating_sub(self.own_kernel),
            postgres: postgres_cpu().saturating_sub(self.postgres),
            machine: MachineCpu::now().minus(self.machine),
        }
    }

    /// Microseconds of each per unit of work (a request, a query).
    pub fn per(&self, units: usize) -> (f64, f64) {
        let units = units.max(1) as f64;
        (
            self.own.as_secs_f64() * 1e6 / units,
            self.postgres.as_secs_f64() * 1e6 / units,
        )
    }
}

/// utime + stime of `/proc/<pid>/stat` (the fields after the command's closing paren),
/// and with `reaped` the CPU of its children that exited (cutime + cstime).
fn process_cpu(pid: &str, reaped: bool) -> Duration {
    let fields_used: &[usize] = if reaped { &[11, 12, 13, 14] } else { &[11, 12] };
    stat_ticks(pid, fields_used)
}

/// stime alone: the process's time in the kernel (system calls, its socket work).
fn process_kernel_cpu(pid: &str) -> Duration {
    stat_ticks(pid, &[12])
}

fn stat_ticks(pid: &str, fields_used: &[usize]) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields_used
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// CPU used so far by Postgres: every running process named `postgres`, and the
/// backends that exited (the postmaster reaps them: its children's time), so the
/// connections of a pgbench that has ended count too.
pub fn postgres_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .map(|pid| process_cpu(&pid, true))
        .sum()
}

impl LoadReport {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn line(&self, name: &str) -> String {
        let cpu = self.cpu.map_or(String::new(), |cpu| {
            let (own, postgres) = cpu.per(self.requests);
            let kernel = cpu.own_kernel.as_secs_f64() * 1e6 / self.requests.max(1) as f64;
            format!(
                "; CPU per request: tally {own:.0} us ({kernel:.0} in the kernel), Postgres {postgres:.0} us; cores {:.0} % busy",
                cpu.machine.busy_share() * 100.0
            )
        });
        format!(
            "{name:<34} {:>8.0} req/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} requests, {} errors{cpu})",
            self.rps(),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.requests,
            self.errors
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs `clients` closed-loop clients for `duration`, each calling `url_for(i)` for
/// its i-th request, and reports. A response counts as an error unless it is 2xx
/// and its body was read completely.
pub async fn closed_loop(
    client: &reqwest::Client,
    token: &str,
    clients: usize,
    duration: Duration,
    url_for: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> LoadReport {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let client = client.clone();
        let token = token.to_owned();
        let url_for = url_for.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = worker;
            while Instant::now() < deadline {
                let url = url_for(i);
                i += clients;
                let sent = Instant::now();
                let ok = match client.get(&url).bearer_auth(&token).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok()
                    }
                    _ => false,
                };
                latencies.push(sent.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("client task");
        all.extend(latencies);
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    LoadReport {
        requests: all.len(),
        errors,
        elapsed,
        p50: percentile(&all, 50.0),
        p90: percentile(&all, 90.0),
        p99: percentile(&all, 99.0),
        max: all.last().copied().unwrap_or_default(),
        cpu: None,
    }
}

fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of this process so far (Linux VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM:")
}

/// Current resident memory (VmRSS), in MiB.
pub fn rss_mib() -> f64 {
    proc_status_mib("VmRSS:")
}

/// Runs `wrk` (an external C load generator, like pgbench on the database side)
/// when it is installed, so the load generator does not compete with tally inside
/// its own process. Requests go to `paths` in turn; one path is wrk's static request
/// (formatted once), several are formatted once in `init` and cycled through (each
/// thread from its own place), so a request costs wrk a table lookup, not a
/// `wrk.format` (its docs: building a request per call is expensive). Paths and the
/// token go into Lua strings as they are: they hold no quote or backslash. Returns
/// `None` without wrk.
pub fn wrk(
    host: &str,
    token: &str,
    clients: usize,
    duration: Duration,
    paths: &[String],
) -> Option<LoadReport> {
    assert!(
        !paths.is_empty()
            && paths
                .iter()
                .chain([&token.to_owned()])
                .all(|p| !p.contains(['"', '\\'])),
        "wrk paths and token go into Lua strings as they are"
    );
    let script = match paths {
        [path] => format!(
            "wrk.method = \"GET\"\nwrk.path = \"{path}\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ),
        _ => {
            let listed: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
            format!(
                "local paths = {{{}}}\nlocal requests = {{}}\nlocal i = 0\nlocal threads = 0\n\
                 setup = function(thread)\n  thread:set(\"start\", threads)\n  threads = threads + 1\nend\n\
                 init = function(args)\n  for k, p in ipairs(paths) do\n    \
                 requests[k] = wrk.format(\"GET\", p, {{[\"Authorization\"] = \"Bearer {token}\"}})\n  \
                 end\n  i = (start * 1021) % #requests\nend\n\
                 request = function()\n  i = i % #requests + 1\n  return requests[i]\nend\n",
                listed.join(", ")
            )
        }
    };
    let path = std::env::temp_dir().join(format!("tally-wrk-{}.lua", std::process::id()));
    std::fs::write(&path, script).ok()?;
    let output = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{clients}"),
            &format!("-d{}s", duration.as_secs()),
            "--latency",
            "-s",
        ])
        .arg(&path)
        .arg(host)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(parse_wrk_duration)
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())?;
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let max = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(parse_wrk_duration)
        .unwrap_or_default();
    Some(LoadReport {
        requests,
        errors,
        elapsed: duration,
        p50: percentile("50%")?,
        p90: percentile("90%")?,
        p99: percentile("99%")?,
        max,
        cpu: None,
    })
}

fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

pub fn which_wrk() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

/// Load through wrk when installed (off the runtime's threads), else in-process:
/// `clients` clients asking for `paths` (under `host`) in turn.
pub async fn load(
    host: &str,
    token: &str,
    clients: usize,
    duration: Duration,
    paths: Vec<String>,
) -> LoadReport {
    let paths = Arc::new(paths);
    let (host_owned, token_owned, wrk_paths) = (host.to_owned(), token.to_owned(), paths.clone());
    let cpu = CpuUse::start();
    let external = tokio::task::spawn_blocking(move || {
        wrk(&host_owned, &token_owned, clients, duration, &wrk_paths)
    })
    .await
    .expect("wrk task");
    let report = match external {
        Some(report) => report,
        None => {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(clients)
                .build()
                .expect("client");
            let host = host.to_owned();
            let url_for = move |i: usize| format!("{host}{}", paths[i % paths.len()]);
            closed_loop(&client, token, clients, duration, Arc::new(url_for)).await
        }
    };
    LoadReport {
        cpu: Some(cpu.since()),
        ..report
    }
}

/// Serves tally (the same composition root as `tally serve`) on a free port in this
/// process; returns `http://host:port`.
pub async fn serve(
    mut settings: tally::config::Settings,
    pool: sqlx::PgPool,
    stripe: std::sync::Arc<tally::tenants::StripeTenants>,
) -> String {
    settings.server.bind = "127.0.0.1:0".parse().expect("address");
    let app = tally::app::Application::with_parts(settings, pool, stripe)
        .await
        .expect("application");
    let host = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    host
}

/// A reader token for the tenant `slug`.
pub async fn reader_token(pool: &sqlx::PgPool, slug: &str) -> String {
    use secrecy::ExposeSecret;
    tally::tokens::create(pool, tally::domain::Role::Reader, Some(slug))
        .await
        .expect("token")
        .expose_secret()
        .to_owned()
}

/// One `tally serve` replica inside this process.
pub struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub async fn start(settings: &tally::config::Settings, master_base64: &str) -> Replica {
        let pool = tally::store::pool(&settings.database).expect("pool");
        let master = tally::crypto::MasterKey::from_base64(master_base64).expect("master key");
        let stripe = std::sync::Arc::new(
            tally::tenants::StripeTenants::new(&settings.stripe, std::sync::Arc::new(master))
                .expect("stripe access")
                .with_shared_budget(pool.clone()),
        );
        let app = tally::app::Application::with_parts(settings.clone(), pool, stripe)
            .await
            .expect("application builds");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Replica { stop, running }
    }

    /// What SIGTERM does: leases given back, the pool closed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.running
            .await
            .expect("replica task")
            .expect("replica stops cleanly");
    }
}

pub async fn add_tenant(
    pool: &sqlx::PgPool,
    settings: &tally::config::Settings,
    master_base64: &str,
    key: &str,
    api_base: String,
    rate: u32,
) -> tally::store::tenants::Tenant {
    let master = tally::crypto::MasterKey::from_base64(master_base64).expect("master key");
    let spec = tally::commands::tenant::TenantSpec {
        api_base: Some(api_base),
        rate_limit: Some(rate),
        ..tally::commands::tenant::TenantSpec::new(
            "bench",
            secrecy::SecretString::from(key.to_owned()),
        )
    };
    tally::commands::tenant::add(pool, &master, settings, spec)
        .await
        .expect("tenant added");
    tally::store::tenants::find_by_slug(pool, "bench")
        .await
        .expect("query")
        .expect("tenant")
}

/// Stores the simulator platform's accounts, as a sync would.
pub async fn store_accounts(
    pool: &sqlx::PgPool,
    sim: &tally::sim::SimHandle,
    tenant_id: i64,
    settings: &tally::config::Settings,
) {
    let owner_key = &settings.accounts.owner_metadata_key;
    for chunk in sim.keys().platforms[0].accounts.chunks(5_000) {
        let inputs: Vec<tally::store::accounts::AccountInput> = chunk
            .iter()
            .map(|id| {
                let object = sim.account_object(id).expect("simulated account");
                tally::store::accounts::AccountInput::from_stripe_object(&object, None, owner_key)
                    .expect("valid account")
            })
            .collect();
        tally::store::accounts::upsert(
            pool,
            tenant_id,
            &inputs,
            tally::store::accounts::Observed::Fetched(chrono::Utc::now()),
        )
        .await
        .expect("upsert");
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A scratch database, migrated, with one tenant `bench` (no Stripe behind it), and
/// the test settings pointed at it with a pool of `max_connections`.
pub struct BenchTenant {
    pub db: ScratchDb,
    pub settings: tally::config::Settings,
    pub pool: sqlx::PgPool,
    pub master: tally::crypto::MasterKey,
    pub tenant_id: i64,
}

pub async fn bench_tenant(prefix: &str, max_connections: u32) -> BenchTenant {
    use secrecy::SecretString;
    use tally::crypto::MasterKey;
    let db = ScratchDb::create(prefix).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = tally::config::Settings::load_from(&dir, "test").expect("settings");
    settings.database.url = SecretString::from(db.url.clone());
    settings.database.max_connections = max_connections;
    let pool = tally::store::pool(&settings.database).expect("pool");
    tally::store::migrate(&pool).await.expect("migrate");
    let master = MasterKey::from_base64(&MasterKey::generate_base64()).expect("key");
    let spec = tally::commands::tenant::TenantSpec::new(
        "bench",
        SecretString::from("sk_test_51BenchPlatformKey0000".to_owned()),
    );
    tally::commands::tenant::add(&pool, &master, &settings, spec)
        .await
        .expect("tenant");
    let tenant_id = tally::store::tenants::find_by_slug(&pool, "bench")
        .await
        .expect("query")
        .expect("tenant")
        .id;
    BenchTenant {
        db,
        settings,
        pool,
        master,
        tenant_id,
    }
}
