//! One Stripe budget per credential shared by every process (DESIGN §5), kept in
//! Postgres, which every process already has.
//!
//! Each request reserves the next slot of its tenant's budget and of its endpoint's
//! (Stripe limits both: per account and per endpoint) in one round trip
//! (`stripe_budget_reserve_slot`): slots are `1.012 s / rate` apart, and a request
//! is sent within `LATE_TOLERANCE` of its slot, so however many processes ask, no
//! one-second window holds more than either rate. The wait is the
//! slot minus the database's clock, so the hosts' clocks never need to agree. A 429
//! seen by any process halves the shared rate: the endpoint's when Stripe says
//! `endpoint-rate`, the tenant's otherwise. Background work only reserves while the queue
//! is short (the horizon), so a person's request queues behind at most that much.
//! If the database cannot be asked (down, or no connection free within the pool's
//! timeout) the process falls back to its own limiter at a quarter of the rate:
//! Stripe stays paced, only the sharing is lost until it answers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgPool;

use tokio_util::task::TaskTracker;

use crate::store;
use crate::stripe::{AdaptiveRate, Priority, RateBudget, Throttled};

/// How far ahead background work may queue in the budget.
const BACKGROUND_HORIZON: Duration = Duration::from_millis(250);
/// Shortest nap before background work asks again.
const MIN_RETRY: Duration = Duration::from_millis(5);
/// Up to this much is added to a background retry, at random.
const RETRY_JITTER_MS: u64 = 100;
/// While the database cannot be asked, a process sends at this fraction of the rate:
/// the others are probably doing the same.
const FALLBACK_SHARE: u32 = 4;
/// A request that wakes up later than this after its slot (a loaded host) gives the
/// slot up and reserves again: sent inside [slot, slot + tolerance], requests with
/// slots `1.012 s / rate` apart still never put more than `rate` into any second (the
/// sends of one second come from slots within 1.01 s; `rate + 1` slots span 1.012 s).
/// Keep the spacing's margin above this tolerance (migration 20261206000001).
const LATE_TOLERANCE: Duration = Duration::from_millis(10);
/// On a host too loaded to keep any slot, give up being exact after this many tries
/// rather than stall.
const MAX_LATE_RETRIES: u32 = 5;

pub struct SharedBudget {
    pool: PgPool,
    tenant_id: i64,
    configured: u32,
    /// Stripe's per-endpoint limit (`stripe.endpoint_rate_limit`).
    endpoint_rate: u32,
    /// The rate the database last reported, for gauges and logs.
    last_rate: AtomicU32,
    /// Used while the database is unreachable.
    fallback: AdaptiveRate,
    warned: AtomicBool,
    /// Where 429 reports to the database run (the client's retry loop does not wait
    /// on them); the process waits for them when it stops.
    reports: TaskTracker,
}

impl SharedBudget {
    pub fn new(pool: PgPool, tenant_id: i64, configured: u32, endpoint_rate: u32) -> SharedBudget {
        let configured = configured.max(1);
        SharedBudget {
            pool,
            tenant_id,
            configured,
            endpoint_rate: endpoint_rate.max(1),
            last_rate: AtomicU32::new(configured),
            fallback: AdaptiveRate::new((configured / FALLBACK_SHARE).max(1)),
            warned: AtomicBool::new(false),
            reports: TaskTracker::new(),
        }
    }

    /// Runs its 429 reports on `reports` (shared by every tenant's budget of a process).
    pub fn reporting_on(mut self, reports: TaskTracker) -> SharedBudget {
        self.reports = reports;
        self
    }

    fn configured_i32(&self) -> i32 {
        i32::try_from(self.configured).unwrap_or(i32::MAX)
    }

    fn rates<'a>(&self, endpoint: &'a str) -> store::stripe_budgets::Rates<'a> {
        store::stripe_budgets::Rates {
            tenant: self.configured_i32(),
            endpoint,
            endpoint_rate: i32::try_from(self.endpoint_rate).unwrap_or(i32::MAX),
        }
    }

    async fn acquire_shared(&self, priority: Priority, endpoint: &str) {
        let horizon = match priority {
            Priority::Interactive => None,
            Priority::Background => Some(BACKGROUND_HORIZON.as_millis() as i32),
        };
        let mut late = 0;
        loop {
            match self.reserve(horizon, endpoint).await {
                Ok((slot, asked_at, answered_at)) => {
                    self.last_rate
                        .store(u32::try_from(slot.rate).unwrap_or(1), Ordering::Relaxed);
                    self.warned.store(false, Ordering::Relaxed);
                    let wait = (slot.slot_at - slot.db_now).to_std().unwrap_or_default();
                    if !slot.reserved {
                        // Spread out, so the background waiters of every replica do
                        // not all ask again at the same instant.
                        let retry = wait.saturating_sub(BACKGROUND_HORIZON).max(MIN_RETRY)
                            + Duration::from_millis(rand::random_range(0..=RETRY_JITTER_MS));
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                    metrics::histogram!("stripe_budget_wait_seconds").record(wait.as_secs_f64());
                    // The database decided at some moment between asking and the
                    // answer: waiting from the answer never starts early, and the slot
                    // is kept only if that moment, seen from the asking, is not too
                    // far behind (a reply that sat unread on a loaded host).
                    tokio::time::sleep_until(answered_at + wait).await;
                    let behind =
                        tokio::time::Instant::now().saturating_duration_since(asked_at + wait);
                    if behind <= LATE_TOLERANCE || late >= MAX_LATE_RETRIES {
                        return;
                    }
                    late += 1;
                    metrics::counter!("stripe_budget_late_slots_total").increment(1);
                }
                Err(error) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(tenant_id = self.tenant_id, error = %error,
                            "the shared Stripe budget is unreachable; pacing this process alone");
                    }
                    self.fallback.acquire().await;
                    return;
                }
            }
        }
    }

    /// One reservation, with the local instants just before it was asked (a
    /// connection already in hand) and just after it was answered.
    async fn reserve(
        &self,
        horizon: Option<i32>,
        endpoint: &str,
    ) -> Result<
        (
            store::stripe_budgets::Slot,
            tokio::time::Instant,
            tokio::time::Instant,
        ),
        sqlx::Error,
    > {
        let mut conn = self.pool.acquire().await?;
        let asked_at = tokio::time::Instant::now();
        let slot = store::stripe_budgets::reserve(
            &mut *conn,
            self.tenant_id,
            self.rates(endpoint),
            horizon,
        )
        .await?;
        Ok((slot, asked_at, tokio::time::Instant::now()))
    }
}

impl RateBudget for SharedBudget {
    fn acquire<'a>(&'a self, priority: Priority, endpoint: &'a str) -> BoxFuture<'a, ()> {
        self.acquire_shared(priority, endpoint).boxed()
    }

    fn throttled(&self, limit: Throttled<'_>) {
        self.fallback.throttled();
        let (pool, tenant_id, configured) =
            (self.pool.clone(), self.tenant_id, self.configured_i32());
        let endpoint = match limit {
            Throttled::Account => None,
            Throttled::Endpoint(endpoint) => Some((
                endpoint.to_owned(),
                i32::try_from(self.endpoint_rate).unwrap_or(i32::MAX),
            )),
        };
        // Told from inside the client's retry loop, which must not wait on it.
        self.reports.spawn(async move {
            let shared = match endpoint {
                // Only that endpoint slows down: the others are not at their limit.
                Some((endpoint, rate)) => {
                    store::stripe_budgets::endpoint_throttled(&pool, tenant_id, &endpoint, rate)
                        .await
                        .map(drop)
                }
                None => store::stripe_budgets::throttled(&pool, tenant_id, configured)
                    .await
                    .map(drop),
            };
            if let Err(error) = shared {
                tracing::warn!(tenant_id, error = %error, "could not share a 429 with other processes");
            }
        });
        self.last_rate.store(
            (self.last_rate.load(Ordering::Relaxed) / 2).max(1),
            Ordering::Relaxed,
        );
    }

    fn current(&self) -> u32 {
        self.last_rate.load(Ordering::Relaxed)
    }

    fn configured(&self) -> u32 {
        self.configured
    }
}
