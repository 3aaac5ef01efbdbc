//! What the simulator saw, for tests and benchmarks to assert on (`GET /_sim/stats`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::knobs::trim;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub total_requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// 429s served by the rate limit.
    pub rate_limited: u64,
    /// Highest number of requests of one key seen in any one-second window, keyed by the
    /// platform id for a platform key and `org` for the organization key (never the key).
    pub max_rate_per_key: BTreeMap<String, u64>,
    pub max_in_flight: u64,
    /// Requests that broke one of DESIGN §1's header rules.
    pub header_violations: u64,
    /// Requests per route, like `GET /v1/balance` or `GET /v1/accounts/{id}`.
    pub by_path: BTreeMap<String, u64>,
    /// Authenticated requests per key, by the key masked as Stripe shows it
    /// (`sk_test_****…abcd`), so a test can tell which of a platform's keys was used.
    #[serde(default)]
    pub by_key: BTreeMap<String, u64>,
    /// Requests per account they acted as (the `Stripe-Account` / `Stripe-Context`
    /// account, or the key's own account without one), after the header rules passed.
    #[serde(default)]
    pub by_account: BTreeMap<String, u64>,
    /// Balance-changing activities generated (ledger mode).
    #[serde(default)]
    pub activities: u64,
    /// Times pending money of an account became available.
    #[serde(default)]
    pub settlements: u64,
    /// Distinct accounts whose balance changed (activity or settlement).
    #[serde(default)]
    pub changed_accounts: u64,
    #[serde(default)]
    pub webhooks: WebhookStats,
}

/// What happened to events and their deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events created (one per balance change or payout arrival that Stripe announces).
    pub events: u64,
    /// Balance changes that sent no event (`silent_change_rate`).
    pub silent: u64,
    /// HTTP requests sent to endpoints.
    pub attempts: u64,
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Attempts that failed: non-2xx, connection error, timeout, or `webhook_fail_rate`.
    pub failed: u64,
    /// Retries scheduled after a failure.
    pub retries: u64,
    /// Events scheduled a second time on purpose (`webhook_duplicate_rate`).
    pub duplicates: u64,
    /// Deliveries abandoned after the retry window.
    pub gave_up: u64,
}

#[derive(Default)]
struct Inner {
    stats: SimStats,
    /// Arrival instants per key over the last second (all requests, admitted or not).
    arrivals: HashMap<String, VecDeque<Instant>>,
    /// Accounts whose balance changed (indexes into `World::accounts`).
    changed: HashSet<usize>,
}

#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
    in_flight: Arc<AtomicU64>,
}

/// Counts a request as in flight until dropped.
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How one request ended, as the recorder needs it.
pub struct Outcome<'a> {
    pub route: &'a str,
    pub status: u16,
    pub rate_limited: bool,
    pub header_violation: bool,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The stats stay usable even if a panicking thread held the lock.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn begin(&self) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inner = self.lock();
        inner.stats.total_requests += 1;
        inner.stats.max_in_flight = inner.stats.max_in_flight.max(now);
        InFlight(self.in_flight.clone())
    }

    /// Records that a request of `key` arrived, for the per-key rate.
    pub fn arrived(&self, key: &str, now: Instant) {
        let mut inner = self.lock();
        let window = inner.arrivals.entry(key.to_string()).or_default();
        trim(window, now);
        window.push_back(now);
        let rate = window.len() as u64;
        let max = inner
            .stats
            .max_rate_per_key
            .entry(key.to_string())
            .or_default();
        *max = (*max).max(rate);
    }

    /// Counts a request authenticated with the key masked as `masked`.
    pub fn used_key(&self, masked: &str) {
        *self
            .lock()
            .stats
            .by_key
            .entry(masked.to_string())
            .or_default() += 1;
    }

    /// Counts a request that acted as `account`.
    pub fn targeted(&self, account: &str) {
        *self
            .lock()
            .stats
            .by_account
            .entry(account.to_string())
            .or_default() += 1;
    }

    /// Counts balance changes: `activities` new transactions and `settlements` pending
    /// amounts that became available, on `accounts`.
    pub fn changed(
        &self,
        activities: u64,
        settlements: u64,
        accounts: impl IntoIterator<Item = usize>,
    ) {
        let mut inner = self.lock();
        inner.stats.activities += activities;
        inner.stats.settlements += settlements;
        inner.changed.extend(accounts);
        inner.stats.changed_accounts = inner.changed.len() as u64;
    }

    pub fn webhooks(&self, f: impl FnOnce(&mut WebhookStats)) {
        f(&mut self.lock().stats.webhooks);
    }

    pub fn finish(&self, outcome: Outcome<'_>) {
        let mut inner = self.lock();
        let stats = &mut inner.stats;
        *stats.by_status.entry(outcome.status).or_default() += 1;
        *stats.by_path.entry(outcome.route.to_string()).or_default() += 1;
        stats.rate_limited += u64::from(outcome.rate_limited);
        stats.header_violations += u64::from(outcome.header_violation);
    }

    pub fn snapshot(&self) -> SimStats {
        self.lock().stats.clone()
    }

    pub fn reset(&self) {
        let mut inner = self.lock();
        *inner = Inner::default();
        // Requests still running keep counting as in flight.
        inner.stats.max_in_flight = self.in_flight.load(Ordering::SeqCst);
    }
}
