//! The Stripe simulator (DESIGN §6): the part of Stripe's API tally uses, with Stripe's
//! auth, header rules (DESIGN §1), error bodies, list paging and `Request-Id`, over a
//! deterministic organization of platforms and accounts. Tests and benchmarks `spawn` it
//! in-process; `tally stripe-sim` runs it with `serve`.

mod auth;
mod errors;
mod handlers;
mod idempotency;
mod knobs;
mod objects;
mod params;
mod server;
mod stats;
mod webhook;
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
pub use knobs::Knobs;
pub use server::API_VERSION;
pub use stats::SimStats;
pub use webhook::sign_webhook;

use server::SimState;
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
        }
    }
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

/// Generates the world off the async threads: a large one takes a while.
async fn build(config: &SimConfig) -> anyhow::Result<Arc<SimState>> {
    let cfg = config.clone();
    let world = tokio::task::spawn_blocking(move || World::generate(&cfg))
        .await
        .context("generating the simulated world")?;
    Ok(Arc::new(SimState::new(world, config)))
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
    axum::serve(listener, server::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the stripe simulator")
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

    /// The balance object the simulator answers for `account`.
    pub fn balance_of(&self, account: &str) -> Option<Value> {
        let world = self.state.world();
        world
            .get(account)
            .map(|a| objects::balance_json(world.seed, a))
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
    /// `balance_of`).
    pub fn move_money(&self, account: &str) {
        if let Some(a) = self.state.world_mut().get_mut(account) {
            a.balance_version += 1;
        }
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
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
