//! One Stripe budget per credential shared by every process (DESIGN §5), kept in
//! Postgres, which every process already has.
//!
//! Each request reserves the next slot of its tenant's budget and of its endpoint's
//! (Stripe limits both: per account and per endpoint) in one round trip
//! (`stripe_budget_reserve_spaced`): slots are `SLOT_SPACING / rate` (1.006 s / rate)
//! apart, and a request is sent within `LATE_TOLERANCE` (5 ms) after its slot, so
//! however many processes ask, no one-second window holds more than either rate. The
//! slot is on the database's clock, placed on this host's clock by [`DbClock`], so the
//! hosts' clocks never need to agree. A 429
//! seen by any process halves the shared rate: the endpoint's when Stripe says
//! `endpoint-rate`, the tenant's otherwise. Background work only reserves while the queue
//! is short (the horizon), so a person's request queues behind at most that much.
//! If the database cannot be asked (down, or no connection free within the pool's
//! timeout) the process falls back to its own limiter at a quarter of the rate:
//! Stripe stays paced, only the sharing is lost until it answers.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgPool;

use tokio::time::Instant;
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
/// Slots of one budget are `SLOT_SPACING / rate` seconds apart, whichever process
/// reserves them, and a request is sent within `LATE_TOLERANCE` after its slot (a
/// process that wakes later gives the slot up and reserves again). The sends of any
/// one second then come from slots within 1 s + the tolerance, and `rate + 1` slots
/// span `SLOT_SPACING` s, more than that: no second holds more than `rate`. The
/// spacing alone caps a fan-out at 1 / 1.006 = 0.994 of N / rate.
pub const SLOT_SPACING: f64 = 1.006;
const LATE_TOLERANCE: Duration = Duration::from_millis(5);
const _: () = assert!(SLOT_SPACING > 1.0 + LATE_TOLERANCE.as_secs_f64());
/// On a host too loaded to keep any slot, give up being exact after this many tries
/// rather than stall.
const MAX_LATE_RETRIES: u32 = 5;
/// How fast two hosts' clocks may drift apart: NTP slews a clock by at most 500 ppm.
const MAX_DRIFT_PPM: u32 = 500;

pub struct SharedBudget {
    pool: PgPool,
    tenant_id: i64,
    configured: u32,
    /// Stripe's per-endpoint limit (`stripe.endpoint_rate_limit`).
    endpoint_rate: u32,
    /// The rate the database last reported, for gauges and logs.
    last_rate: AtomicU32,
    /// Where the database's clock stands on this host's.
    clock: DbClock,
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
            clock: DbClock::default(),
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
                    // Never sent before the slot may have come, and kept only if it
                    // surely has not passed by more than the tolerance (a host too
                    // loaded to wake in time).
                    let reply = Reply {
                        asked: asked_at,
                        answered: answered_at,
                        db_asked: slot.db_asked,
                        db_now: slot.db_now,
                    };
                    let at = self.clock.place(&reply, slot.slot_at);
                    tokio::time::sleep_until(at.latest).await;
                    let behind = Instant::now().saturating_duration_since(at.earliest);
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
    ) -> Result<(store::stripe_budgets::Slot, Instant, Instant), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let asked_at = Instant::now();
        let slot = store::stripe_budgets::reserve(
            &mut *conn,
            self.tenant_id,
            self.rates(endpoint),
            horizon,
            SLOT_SPACING,
        )
        .await?;
        Ok((slot, asked_at, Instant::now()))
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

/// A reservation's answer as this host saw it: the statement arrived at `db_asked`
/// and the database decided at `db_now` (its clock), the arrival no earlier than
/// `asked` and the decision no later than `answered` (this host's).
#[derive(Debug, Clone, Copy)]
struct Reply {
    asked: Instant,
    answered: Instant,
    db_asked: DateTime<Utc>,
    db_now: DateTime<Utc>,
}

impl Reply {
    /// Where the decision (`db_now`) surely fell on this host's clock: after the
    /// asking plus the time the database says it waited for the row locks, before the
    /// answer. What is left is the network and the processing, not the queue.
    fn decided(&self) -> Window {
        let queued = (self.db_now - self.db_asked).to_std().unwrap_or_default();
        let latest = self.answered;
        Window {
            earliest: (self.asked + queued).min(latest),
            latest,
        }
    }
}

/// Where a moment of the database's clock falls on this host's: surely not before
/// `earliest`, surely not after `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    earliest: Instant,
    latest: Instant,
}

/// Where the database's clock stands on this host's, learnt from the replies.
///
/// A reply alone places its slot within its round trip less the time it waited for
/// the row locks; that is a millisecond or two, but more on a loaded host (a reply
/// that sat unread), and a slot placed that loosely may have to be given up. So the
/// clock also keeps the reply with the tightest bound (half its window, plus 500 ppm of
/// drift per second since) and places a slot by both. The reply's own window still
/// bounds the answer: a step of the database's clock since the best sample can shift a
/// slot at most within that window (and a larger step, which leaves the two disjoint,
/// drops the sample).
#[derive(Debug, Default)]
struct DbClock {
    best: Mutex<Option<ClockSample>>,
}

/// `db` on the database's clock was `local` on this host's, give or take `half_rtt`.
#[derive(Debug, Clone, Copy)]
struct ClockSample {
    local: Instant,
    db: DateTime<Utc>,
    half_rtt: Duration,
}

impl ClockSample {
    fn of(reply: &Reply) -> ClockSample {
        let decided = reply.decided();
        let half_rtt = decided.latest.saturating_duration_since(decided.earliest) / 2;
        ClockSample {
            local: decided.earliest + half_rtt,
            db: reply.db_now,
            half_rtt,
        }
    }

    /// How far off this sample may be for a moment `distance` away from it.
    fn error(&self, distance: Duration) -> Duration {
        self.half_rtt + distance * MAX_DRIFT_PPM / 1_000_000
    }

    /// Where `db_at` falls on this host's clock, by this sample.
    fn place(&self, db_at: DateTime<Utc>) -> Window {
        let center = shift(self.local, db_at - self.db);
        let error = self.error(distance(center, self.local));
        Window {
            earliest: center.checked_sub(error).unwrap_or(center),
            latest: center + error,
        }
    }
}

impl DbClock {
    /// Learns from `reply` and places `db_at` (a moment on the database's clock, at or
    /// after the reply's `db_now`) on this host's clock.
    fn place(&self, reply: &Reply, db_at: DateTime<Utc>) -> Window {
        let wait = db_at - reply.db_now;
        let decided = reply.decided();
        let own = Window {
            earliest: shift(decided.earliest, wait),
            latest: shift(decided.latest, wait),
        };
        let sample = ClockSample::of(reply);
        let best = {
            let mut best = self.best.lock().unwrap_or_else(|p| p.into_inner());
            let now = reply.answered;
            let keep = best.is_some_and(|kept| {
                kept.error(now.saturating_duration_since(kept.local)) <= sample.half_rtt
            });
            if !keep {
                *best = Some(sample);
            }
            best.unwrap_or(sample)
        };
        let by_best = best.place(db_at);
        let window = Window {
            earliest: own.earliest.max(by_best.earliest),
            latest: own.latest.min(by_best.latest),
        };
        // Disjoint only if a clock was stepped since the best sample: trust the reply.
        if window.earliest <= window.latest {
            window
        } else {
            *self.best.lock().unwrap_or_else(|p| p.into_inner()) = Some(sample);
            own
        }
    }
}

/// `at` moved by a signed amount.
fn shift(at: Instant, by: TimeDelta) -> Instant {
    match by.to_std() {
        Ok(later) => at + later,
        Err(_) => at
            .checked_sub((-by).to_std().unwrap_or_default())
            .unwrap_or(at),
    }
}

fn distance(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A reply that did not wait for the row locks.
    fn reply(base: Instant, asked_ms: u64, answered_ms: u64, db_now: DateTime<Utc>) -> Reply {
        Reply {
            asked: base + ms(asked_ms),
            answered: base + ms(answered_ms),
            db_asked: db_now,
            db_now,
        }
    }

    #[test]
    fn a_first_reply_places_its_slot_within_its_own_round_trip() {
        let clock = DbClock::default();
        let base = Instant::now();
        let db = Utc::now();
        let at = clock.place(&reply(base, 0, 12, db), db + TimeDelta::milliseconds(50));
        assert_eq!(at.earliest, base + ms(50));
        assert_eq!(at.latest, base + ms(62));
    }

    #[test]
    fn the_wait_for_the_row_locks_is_taken_off_the_round_trip() {
        let clock = DbClock::default();
        let base = Instant::now();
        let db = Utc::now();
        // Asked at 0, answered at 18 ms; the database says the statement waited 15 ms
        // for the locks: the decision fell within [15, 18] ms.
        let queued = Reply {
            asked: base,
            answered: base + ms(18),
            db_asked: db,
            db_now: db + TimeDelta::milliseconds(15),
        };
        let at = clock.place(&queued, db + TimeDelta::milliseconds(15 + 40));
        assert_eq!(at.earliest, base + ms(55));
        assert_eq!(at.latest, base + ms(58));
    }

    #[test]
    fn a_slow_reply_is_placed_by_an_earlier_fast_one() {
        let clock = DbClock::default();
        let base = Instant::now();
        let db = Utc::now();
        // Answered in 1 ms: the database's clock read `db` at base + 0.5 ms, ± 0.5 ms.
        clock.place(&reply(base, 0, 1, db), db);
        // 100 ms later a reservation waits 15 ms for the row lock; the database read
        // its clock just before answering (db + 114 ms, at base + 114.5 ms).
        let slow = reply(base, 100, 115, db + TimeDelta::microseconds(114_000));
        let at = clock.place(&slow, db + TimeDelta::milliseconds(130));
        // By its own round trip alone: [base + 116, base + 131]; by the fast reply:
        // base + 130.5 ± (0.5 ms + 500 ppm of 130 ms).
        assert!(at.latest - at.earliest <= ms(2), "{at:?}");
        assert!(at.earliest <= base + ms(130) + MS / 2);
        assert!(at.latest >= base + ms(130) + MS / 2);
    }

    #[test]
    fn drift_widens_an_old_sample_until_a_fresher_one_wins() {
        let clock = DbClock::default();
        let base = Instant::now();
        let db = Utc::now();
        clock.place(&reply(base, 0, 2, db), db);
        // 20 s later the 2 ms sample is off by up to 1 + 10 ms: a 4 ms reply is better.
        let later = db + TimeDelta::seconds(20);
        let at = clock.place(&reply(base, 20_000, 20_004, later), later);
        assert_eq!(at.latest - at.earliest, ms(4));
    }

    #[test]
    fn a_stepped_clock_falls_back_to_the_reply_itself() {
        let clock = DbClock::default();
        let base = Instant::now();
        let db = Utc::now();
        clock.place(&reply(base, 0, 1, db), db);
        // The database's clock jumped 5 s ahead: the samples disagree.
        let jumped = db + TimeDelta::seconds(5) + TimeDelta::milliseconds(100);
        let at = clock.place(
            &reply(base, 100, 110, jumped),
            jumped + TimeDelta::milliseconds(20),
        );
        assert_eq!(at.earliest, base + ms(120));
        assert_eq!(at.latest, base + ms(130));
    }
}
