//! The Stripe simulator (DESIGN §6): the part of Stripe's API tally uses, with Stripe's
//! auth, header rules (DESIGN §1), error bodies, list paging and `Request-Id`, over a
//! deterministic organization of platforms and accounts. Tests and benchmarks `spawn` it
//! in-process; `tally stripe-sim` runs it with `serve`.
//!
//! With `activity_per_hour > 0` money moves: every balance comes from a ledger of balance
//! transactions (`ledger`), a ticker (`activity`) adds activity as simulated time passes
//! (`clock`), and registered webhook endpoints (`webhook_endpoints`) receive the events
//! (`events`, `delivery`). With 0 the world is static, exactly as before.
//!
//! Every response carries Stripe's `Date` header with the SIMULATED clock's second (not the
//! real time). In ledger mode a request that reads balances or transactions first brings
//! the ledger up to the clock's current second, read once under the ledger's lock, and that
//! same second is its `Date`: `GET /v1/balance` shows exactly the transactions created at or
//! before it (with `available_on` at or before it as available), and no transaction created
//! at or before it appears later, even while the clock runs. For a daily close, the ledger's
//! side (`ledger_routes`): `GET /_sim/ledger/balances?at=…` is the ground truth computed from
//! transactions alone, and `POST /_sim/ledger/drift` makes a balance that no longer ties out.

mod activity;
mod auth;
mod balance_transactions;
mod clock;
mod delivery;
mod errors;
mod events;
mod handlers;
mod idempotency;
mod knobs;
mod ledger;
mod ledger_routes;
mod objects;
mod params;
mod server;
mod state;
mod stats;
mod txn_objects;
mod webhook;
mod webhook_endpoints;
mod world;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use auth::mask_key;
pub use clock::ClockState;
pub use knobs::Knobs;
pub use ledger_routes::{DriftApplied, DriftRequest, LedgerBalance, LedgerBalances, LedgerError};
pub use state::{SimCurrencyTotal, SimTotals, API_VERSION};
pub use stats::{SimStats, WebhookStats};
pub use webhook::sign_webhook;

use ledger::Ledger;
use state::SimState;
use world::World;

/// How the simulated world looks and behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub platforms: usize,
    pub accounts_per_platform: usize,
    /// Standalone accounts directly in the organization.
    pub org_accounts: usize,
    pub seed: u64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Requests per key per second; 0 = unlimited.
    pub rate_limit: u32,
    /// Fraction of requests answered 500.
    pub error_rate: f64,
    /// Fraction of requests answered after `slow_ms`.
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// Requests per key per endpoint (method and path) per second; 0 = unlimited.
    /// Stripe's default is 25.
    pub endpoint_rate_limit: u32,
    /// Average balance-changing activities per connected account per simulated hour.
    /// 0 keeps the world static; above 0 every balance comes from a ledger.
    pub activity_per_hour: f64,
    /// Simulated time runs this many times faster than real time.
    pub clock_speed: f64,
    /// Simulated unix time at start; `None`: now.
    pub clock_start: Option<i64>,
    /// Simulated seconds from a charge to its `available_on` (Stripe: about 2 days; at
    /// a day or more `available_on` is rounded up to midnight UTC, as Stripe's is).
    pub settlement_secs: i64,
    /// Share of balance changes that send no event.
    pub silent_change_rate: f64,
    /// Share of first delivery attempts treated as failed, without sending, and retried.
    pub webhook_fail_rate: f64,
    pub webhook_duplicate_rate: f64,
    /// Share of events delivered 1–5 s late.
    pub webhook_late_rate: f64,
    /// Random delay in `0..=webhook_jitter_ms` before each first delivery.
    pub webhook_jitter_ms: u64,
    /// First retry after about this long, doubling, at most 64× as long.
    pub webhook_retry_base_ms: u64,
    /// Failed deliveries are retried for this long (Stripe: three days).
    pub webhook_retry_for_secs: u64,
    pub webhook_timeout_ms: u64,
    /// Deliveries in flight at once.
    pub webhook_concurrency: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            platforms: 2,
            accounts_per_platform: 50,
            org_accounts: 3,
            seed: 1,
            latency_ms: 0,
            jitter_ms: 0,
            rate_limit: 0,
            error_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 2000,
            endpoint_rate_limit: 0,
            activity_per_hour: 0.0,
            clock_speed: 1.0,
            clock_start: None,
            settlement_secs: 2 * 86_400,
            silent_change_rate: 0.0,
            webhook_fail_rate: 0.0,
            webhook_duplicate_rate: 0.02,
            webhook_late_rate: 0.02,
            webhook_jitter_ms: 100,
            webhook_retry_base_ms: 1_000,
            webhook_retry_for_secs: 3 * 86_400,
            webhook_timeout_ms: 10_000,
            webhook_concurrency: 32,
        }
    }
}

/// `--clock-start`: unix seconds or an RFC 3339 time.
pub fn parse_clock_start(value: &str) -> Result<i64, String> {
    if let Ok(secs) = value.trim().parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.timestamp())
        .map_err(|_| format!("'{value}' is neither unix seconds nor an RFC 3339 time"))
}

/// What the simulator serves: the keys-file JSON of `tally stripe-sim --keys-file`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SimKeys {
    pub organization_key: String,
    pub platforms: Vec<SimPlatform>,
    pub org_accounts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SimPlatform {
    pub id: String,
    pub key: String,
    /// Connected account ids, oldest first.
    pub accounts: Vec<String>,
}

/// A simulator running in this process; it stops when the handle is dropped.
pub struct SimHandle {
    state: Arc<SimState>,
    addr: SocketAddr,
    keys: SimKeys,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Generates the world (and, with activity on, opens every ledger) off the async
/// threads: a large one takes a while.
async fn build(config: &SimConfig) -> anyhow::Result<Arc<SimState>> {
    let cfg = config.clone();
    let start = config
        .clock_start
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let (world, ledger) = tokio::task::spawn_blocking(move || {
        let world = World::generate(&cfg);
        let ledger =
            (cfg.activity_per_hour > 0.0).then(|| Ledger::new(&world, start, cfg.settlement_secs));
        (world, ledger)
    })
    .await
    .context("generating the simulated world")?;
    let state = Arc::new(SimState::new(world, ledger, start, config));
    if state.has_ledger() {
        tokio::spawn(activity::run(state.clone()));
    }
    Ok(state)
}

/// Starts a simulator on 127.0.0.1 (an ephemeral port), served by a background task.
pub async fn spawn(config: SimConfig) -> anyhow::Result<SimHandle> {
    let state = build(&config).await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator to 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("reading the simulator address")?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = server::router(state.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // Dropping the sender (the handle) stops the server too.
                let _ = rx.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "stripe simulator stopped");
        }
    });
    let keys = state.world().keys();
    Ok(SimHandle {
        state,
        addr,
        keys,
        shutdown: Some(tx),
    })
}

/// Runs a simulator on `bind` until `shutdown` completes (`tally stripe-sim`). Writes the
/// keys file first when asked, so scripts can wait for it.
pub async fn serve(
    config: SimConfig,
    bind: SocketAddr,
    keys_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build(&config).await?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the simulator to {bind}"))?;
    let addr = listener
        .local_addr()
        .context("reading the simulator address")?;
    if let Some(path) = &keys_file {
        let keys = serde_json::to_string_pretty(&state.world().keys())
            .context("encoding the keys file")?;
        tokio::fs::write(path, keys)
            .await
            .with_context(|| format!("writing the keys file {}", path.display()))?;
    }
    tracing::info!(
        %addr,
        platforms = config.platforms,
        accounts_per_platform = config.accounts_per_platform,
        org_accounts = config.org_accounts,
        "stripe simulator listening on http://{addr}"
    );
    let served = axum::serve(listener, server::router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the stripe simulator");
    state.cancel.cancel();
    served
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, the base URL to give a Stripe client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The keys and accounts as spawned (later `add_accounts` calls are not reflected).
    pub fn keys(&self) -> &SimKeys {
        &self.keys
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats.snapshot()
    }

    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }

    /// Webhook deliveries still on their way, retries included: zero means every event
    /// created so far has been delivered or given up.
    pub fn pending_deliveries(&self) -> u64 {
        self.state.deliverer.pending()
    }

    /// The balance object the simulator answers for `account`, as of the ledger's last
    /// step (it does not bring the ledger up to the clock: pause the clock, or read
    /// `GET /v1/balance`, for the balance at a known second).
    pub fn balance_of(&self, account: &str) -> Option<Value> {
        let world = self.state.world();
        let idx = *world.by_id.get(account)?;
        Some(self.state.balance_json(&world, idx))
    }

    /// The true per-currency totals of `platform`'s connected accounts now (what
    /// `GET /_sim/totals` answers); `None` for an unknown platform.
    pub fn totals(&self, platform: &str) -> Option<SimTotals> {
        self.state.totals(platform).ok()
    }

    /// Stops (or restarts) simulated time: no activity, nothing settles, so balances can
    /// be compared at rest. Pausing first applies everything due by that instant.
    pub fn set_clock_paused(&self, paused: bool) {
        self.state.set_clock_paused(paused);
    }

    /// What `GET /_sim/ledger/balances?at=…[&account=…]` answers: per account and currency
    /// the balance its transactions alone give at `at` (`None`: the clock's second).
    pub fn ledger_balances(
        &self,
        at: Option<i64>,
        account: Option<&str>,
    ) -> Result<LedgerBalances, LedgerError> {
        ledger_routes::balances_at(&self.state, at, account)
    }

    /// What `POST /_sim/ledger/drift` does: `amount` added to `account`'s available balance
    /// in `currency` with no transaction and no event behind it.
    pub fn inject_drift(
        &self,
        account: &str,
        currency: &str,
        amount: i64,
    ) -> Result<DriftApplied, LedgerError> {
        ledger_routes::inject_drift(
            &self.state,
            &DriftRequest {
                account: account.to_string(),
                currency: currency.to_string(),
                amount,
            },
        )
    }

    /// Simulated unix seconds.
    pub fn sim_now(&self) -> i64 {
        self.state.clock.now()
    }

    pub fn clock(&self) -> ClockState {
        self.state.clock.state()
    }

    /// The account object the simulator answers for `account`.
    pub fn account_object(&self, account: &str) -> Option<Value> {
        self.state.world().get(account).map(objects::account_json)
    }

    pub fn set_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        self.state.set_knobs(f);
    }

    /// The platform loses access to `account`: its key gets 403 `account_invalid` for it,
    /// and lists no longer show it.
    pub fn revoke(&self, account: &str) {
        if let Some(a) = self.state.world_mut().get_mut(account) {
            a.revoked = true;
        }
    }

    /// Every request for `account` answers `status` with a Stripe error body.
    pub fn fail_account(&self, account: &str, status: u16) {
        if let Some(a) = self.state.world_mut().get_mut(account) {
            a.fail_status = Some(status);
        }
    }

    /// Requests for `account` are answered normally again (undoes `fail_account`).
    pub fn heal_account(&self, account: &str) {
        if let Some(a) = self.state.world_mut().get_mut(account) {
            a.fail_status = None;
        }
    }

    /// Money moves in `account`: from now on it answers another balance (see
    /// `balance_of`). With activity on, that is a positive adjustment in its ledger,
    /// announced with `balance.available` like any other change.
    pub fn move_money(&self, account: &str) {
        self.state.move_money(account);
    }

    /// Sets (or, with `None`, removes) one metadata key of `account`.
    pub fn update_account_metadata(&self, account: &str, key: &str, value: Option<&str>) {
        if let Some(a) = self.state.world_mut().get_mut(account) {
            match value {
                Some(v) => a.metadata.insert(key.to_string(), v.to_string()),
                None => a.metadata.remove(key),
            };
        }
    }

    /// Adds `n` connected accounts to `platform` (newer than all its others); returns their
    /// ids, or nothing for an unknown platform.
    pub fn add_accounts(&self, platform: &str, n: usize) -> Vec<String> {
        let mut world = self.state.world_mut();
        match world.platform_index(platform) {
            Some(p) => world.add_connected(p, n),
            None => Vec::new(),
        }
    }

    /// A second secret key for `platform` (as Stripe's "roll key" makes one; the old key
    /// keeps working until `expire_key`). `None` for an unknown platform.
    pub fn roll_key(&self, platform: &str) -> Option<String> {
        let mut world = self.state.world_mut();
        let p = world.platform_index(platform)?;
        Some(world.new_platform_key(p, None))
    }

    /// A restricted key (`rk_test_…`) of `platform` holding only `permissions`
    /// (`rak_balance_read`, `rak_accounts_read`, `rak_accounts_write`).
    pub fn restricted_key(&self, platform: &str, permissions: &[&str]) -> Option<String> {
        let mut world = self.state.world_mut();
        let p = world.platform_index(platform)?;
        Some(world.new_platform_key(p, Some(permissions)))
    }

    /// `key` expires: from now on it gets 401 "Expired API Key provided".
    pub fn expire_key(&self, key: &str) {
        self.state.world_mut().expire_key(key);
    }

    /// Sends a signed Connect event about `account` to `url`; returns the endpoint's status.
    pub async fn send_webhook(
        &self,
        url: &str,
        secret: &str,
        event_type: &str,
        account: &str,
    ) -> anyhow::Result<reqwest::StatusCode> {
        webhook::send(&self.state, url, secret, event_type, account).await
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.cancel.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_clock_start;

    #[test]
    fn clock_start_is_unix_seconds_or_rfc3339() {
        assert_eq!(parse_clock_start("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_clock_start("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(
            parse_clock_start("2023-11-14T23:13:20+01:00"),
            Ok(1_700_000_000)
        );
        assert!(parse_clock_start("yesterday").is_err());
    }
}
