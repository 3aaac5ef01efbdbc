//! The simulator's shared state: the world, the ledger, knobs, limits, clock and
//! deliveries that every handler reads, and the `Date` every answer carries.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponseParts, ResponseParts};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use super::clock::SimClock;
use super::delivery::Deliverer;
use super::idempotency::Replays;
use super::knobs::{Knobs, RateLimiter};
use super::ledger::Ledger;
use super::stats::Recorder;
use super::txn_objects::ledger_balance_json;
use super::webhook_endpoints::Endpoints;
use super::world::World;
use super::{activity, objects, SimConfig};

/// The API version the simulator answers with when a request names none.
pub const API_VERSION: &str = "2025-04-30.basil";

pub struct SimState {
    world: RwLock<World>,
    knobs: RwLock<Knobs>,
    limiter: Mutex<RateLimiter>,
    pub stats: Recorder,
    pub replays: Mutex<Replays>,
    pub clock: SimClock,
    /// With activity on: every balance comes from here. Locked after `world`.
    ledger: Option<Mutex<Ledger>>,
    /// Locked after `world` and `ledger`.
    endpoints: Mutex<Endpoints>,
    pub deliverer: Deliverer,
    /// Stops the ticker and pending deliveries when the simulator stops.
    pub cancel: CancellationToken,
}

// Locks are never held across an await, so a poisoned lock only means another request
// panicked mid-update; the simulator keeps serving rather than failing every request.
impl SimState {
    pub fn new(world: World, ledger: Option<Ledger>, start: i64, config: &SimConfig) -> Self {
        SimState {
            world: RwLock::new(world),
            knobs: RwLock::new(Knobs::from(config)),
            limiter: Mutex::new(RateLimiter::default()),
            stats: Recorder::default(),
            replays: Mutex::new(Replays::default()),
            clock: SimClock::new(start, config.clock_speed),
            ledger: ledger.map(Mutex::new),
            endpoints: Mutex::new(Endpoints::default()),
            deliverer: Deliverer::new(
                std::time::Duration::from_millis(config.webhook_timeout_ms),
                config.webhook_concurrency,
                std::time::Duration::from_secs(config.webhook_retry_for_secs),
            ),
            cancel: CancellationToken::new(),
        }
    }

    pub fn has_ledger(&self) -> bool {
        self.ledger.is_some()
    }

    /// The ledger (in ledger mode), with accounts added to `world` since opened.
    pub fn ledger_synced(&self, world: &World) -> Option<MutexGuard<'_, Ledger>> {
        let mut ledger = self
            .ledger
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = ledger.stepped_to;
        ledger.sync_accounts(world, at);
        Some(ledger)
    }

    /// The ledger (in ledger mode) brought up to the simulated clock's current second,
    /// which is then `stepped_to`: one clock reading, taken under the ledger's lock, is
    /// both what the ledger shows and what the answer's `Date` says (`SimDate`). Every
    /// transaction created at or before that second exists, and none created after it.
    /// The events of what happened on the way are handed to the deliverer.
    pub fn ledger_now(self: &Arc<Self>, world: &World) -> Option<MutexGuard<'_, Ledger>> {
        let mut ledger = self.ledger_synced(world)?;
        let prepared = activity::catch_up(self, world, &mut ledger);
        activity::send(self, prepared);
        Some(ledger)
    }

    /// The balance `account` answers now and the simulated second it shows: from its
    /// ledger brought up to the clock's second with activity on, else the generated one
    /// (at the clock's second).
    pub fn balance_now(self: &Arc<Self>, world: &World, account: usize) -> (Value, i64) {
        match self.ledger_now(world) {
            Some(ledger) => (
                balance_from(world, Some(&ledger), account),
                ledger.stepped_to,
            ),
            None => (balance_from(world, None, account), self.clock.now()),
        }
    }

    pub fn endpoints(&self) -> MutexGuard<'_, Endpoints> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The balance object `account` answers as of the ledger's last step (the ticker's
    /// or a request's), without stepping it: from its ledger with activity on, else the
    /// generated one.
    pub fn balance_json(&self, world: &World, account: usize) -> Value {
        balance_from(world, self.ledger_synced(world).as_deref(), account)
    }

    /// Per-currency totals of every connected account of `platform` (revoked ones too:
    /// the money is still there), from the same balances `GET /v1/balance` answers, at
    /// the clock's current second (`at`).
    pub fn totals(self: &Arc<Self>, platform: &str) -> Result<SimTotals, TotalsError> {
        let world = self.world();
        let p = world
            .platform_index(platform)
            .ok_or(TotalsError::UnknownPlatform)?;
        let ledger = self.ledger_now(&world);
        let at = ledger
            .as_ref()
            .map_or_else(|| self.clock.now(), |l| l.stepped_to);
        let mut sums: BTreeMap<String, [i64; 4]> = BTreeMap::new();
        for &idx in &world.platforms[p].connected {
            let balance = balance_from(&world, ledger.as_deref(), idx);
            let parts = [
                "available",
                "pending",
                "connect_reserved",
                "instant_available",
            ];
            for (slot, part) in parts.iter().enumerate() {
                for entry in balance[*part].as_array().into_iter().flatten() {
                    let currency = entry["currency"].as_str().unwrap_or_default().to_owned();
                    let amount = entry["amount"].as_i64().unwrap_or_default();
                    let sum = &mut sums.entry(currency).or_default()[slot];
                    *sum = sum.checked_add(amount).ok_or(TotalsError::Overflow)?;
                }
            }
        }
        Ok(SimTotals {
            platform: platform.to_owned(),
            at,
            accounts: world.platforms[p].connected.len() as u64,
            currencies: sums
                .into_iter()
                .map(
                    |(currency, [available, pending, connect_reserved, instant_available])| {
                        SimCurrencyTotal {
                            currency,
                            available,
                            pending,
                            connect_reserved,
                            instant_available,
                        }
                    },
                )
                .collect(),
        })
    }

    /// Stops or restarts simulated time; pausing first brings the ledger up to the
    /// instant it stopped at, so everything due by then has happened.
    pub fn set_clock_paused(self: &Arc<Self>, paused: bool) {
        self.clock.set_paused(paused);
        activity::step(self);
    }

    /// Money moves in `account`: a new generated balance in static mode; with activity
    /// on, a positive adjustment (and its `balance.available`).
    pub fn move_money(self: &Arc<Self>, account: &str) {
        if !self.has_ledger() {
            if let Some(a) = self.world_mut().get_mut(account) {
                a.balance_version += 1;
            }
            return;
        }
        let knobs = self.knobs();
        let prepared = {
            let world = self.world();
            let Some(&idx) = world.by_id.get(account) else {
                return;
            };
            let Some(mut ledger) = self.ledger_synced(&world) else {
                return;
            };
            // Up to the clock's second first; the adjustment is created in that second
            // (a read earlier in the same second does not show it).
            let mut prepared = activity::catch_up(self, &world, &mut ledger);
            let at = ledger.stepped_to;
            let happened: Vec<_> = ledger.adjust(&world, idx, at).into_iter().collect();
            prepared.extend(activity::prepare(self, &world, &ledger, &knobs, &happened));
            prepared
        };
        activity::send(self, prepared);
    }

    pub fn world(&self) -> RwLockReadGuard<'_, World> {
        self.world.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn world_mut(&self) -> RwLockWriteGuard<'_, World> {
        self.world.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.knobs.write().unwrap_or_else(PoisonError::into_inner));
    }

    pub(super) fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn replays(&self) -> MutexGuard<'_, Replays> {
        self.replays.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The balance object `account` answers: from `ledger` in ledger mode (with any injected
/// drift), else the generated one.
fn balance_from(world: &World, ledger: Option<&Ledger>, account: usize) -> Value {
    match ledger.and_then(|l| l.account(account)) {
        Some(l) => ledger_balance_json(l),
        None => objects::balance_json(world.seed, &world.accounts[account]),
    }
}

/// The simulated instant an answer shows, sent as its `Date` header (Stripe sends one on
/// every response). Handlers that read the ledger set it to the second they brought it
/// up to; `dated` gives every other response the clock's current second.
#[derive(Clone, Copy, Debug)]
pub struct SimDate(pub i64);

impl IntoResponseParts for SimDate {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(value) = http_date(self.0) {
            res.headers_mut().insert(header::DATE, value);
        }
        Ok(res)
    }
}

/// Unix seconds as an RFC 7231 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(secs: i64) -> Option<HeaderValue> {
    let t = chrono::DateTime::from_timestamp(secs, 0)?;
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).ok()
}

/// What `GET /_sim/totals?platform=acct_P` answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SimTotals {
    pub platform: String,
    /// Simulated unix time of the snapshot.
    pub at: i64,
    /// Connected accounts summed (all of the platform's, revoked ones included).
    pub accounts: u64,
    /// Sorted by currency; integer minor units.
    pub currencies: Vec<SimCurrencyTotal>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SimCurrencyTotal {
    pub currency: String,
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TotalsError {
    UnknownPlatform,
    Overflow,
}
