//! The per-tenant request rate limit (DESIGN §5): never more than the current rate in any
//! one-second window, halved when Stripe answers 429, and recovering by itself.
//!
//! Why not `governor`: its quota is fixed when the limiter is built, and it is a GCRA token
//! bucket, which admits `burst + rate` cells in a one-second window (a full bucket, then a
//! second's refill). Holding "at most R in ANY one-second window" with a bucket needs
//! burst 1, i.e. strict pacing. A sliding-window log states the rule directly: remember when
//! the last admissions happened and admit a new one only if fewer than `rate` fall inside
//! the window. Burst is at most `rate`, lowering the rate is just changing a number, and the
//! log is at most `configured` timestamps long.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::rate_budget::{Priority, RateBudget, Throttled};

/// A little longer than a second, so that scheduling and network jitter between our clock
/// and Stripe's (or the simulator's) cannot squeeze `rate + 1` requests into the server's
/// one-second window. Costs under 5% of throughput.
const WINDOW: Duration = Duration::from_millis(1050);
/// Several 429s usually arrive together (one per request in flight); they are one signal, so
/// the rate is halved at most once per window.
const DECREASE_COOLDOWN: Duration = WINDOW;
/// After this long without a 429 the rate climbs one step back toward the configured rate.
const RECOVER_EVERY: Duration = Duration::from_secs(2);
/// Recovery step as a fraction of the configured rate: back to full in about 4 quiet steps.
const RECOVER_FRACTION: u32 = 4;

pub struct AdaptiveRate {
    configured: u32,
    state: Mutex<State>,
}

struct State {
    current: u32,
    /// Admission times inside the last window, oldest first.
    admitted: VecDeque<Instant>,
    /// Last decrease or recovery step; recovery counts quiet time from here.
    last_change: Instant,
    /// Last decrease, for the cooldown.
    last_decrease: Option<Instant>,
}

// The logic takes `now` as an argument so tests can drive time without tokio's test clock.
impl AdaptiveRate {
    /// A zero rate would never admit anything; it is raised to 1.
    pub fn new(per_second: u32) -> AdaptiveRate {
        let configured = per_second.max(1);
        AdaptiveRate {
            configured,
            state: Mutex::new(State {
                current: configured,
                admitted: VecDeque::with_capacity(configured as usize),
                last_change: Instant::now(),
                last_decrease: None,
            }),
        }
    }

    /// Waits until a request may start, and counts it.
    pub async fn acquire(&self) {
        while let Err(wake_at) = self.try_admit(Instant::now()) {
            tokio::time::sleep_until(wake_at.into()).await;
        }
    }

    /// Counts a request starting at `now`, or says when to try again.
    fn try_admit(&self, now: Instant) -> Result<(), Instant> {
        let mut state = self.lock();
        self.recover(&mut state, now);
        state.forget_before(now);
        if state.admitted.len() < state.current as usize {
            state.admitted.push_back(now);
            return Ok(());
        }
        // Full: the earliest chance is when enough old admissions leave the window for the
        // count to drop below the (possibly lowered) rate.
        let excess = state.admitted.len() - state.current as usize;
        Err(state.admitted.get(excess).map_or(now, |t| *t) + WINDOW)
    }

    /// Stripe said 429: halve the rate (not below 1), once per cooldown.
    pub fn throttled(&self) {
        self.throttled_at(Instant::now());
    }

    fn throttled_at(&self, now: Instant) {
        let mut state = self.lock();
        let cooling = state
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_COOLDOWN);
        if !cooling {
            state.current = (state.current / 2).max(1);
            state.last_decrease = Some(now);
        }
        // Any 429 restarts the quiet period, even one inside the cooldown.
        state.last_change = now;
    }

    /// The rate in force now (per second).
    pub fn current(&self) -> u32 {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> u32 {
        let mut state = self.lock();
        self.recover(&mut state, now);
        state.current
    }

    pub fn configured(&self) -> u32 {
        self.configured
    }

    fn recover(&self, state: &mut State, now: Instant) {
        let step = (self.configured / RECOVER_FRACTION).max(1);
        while state.current < self.configured
            && now.saturating_duration_since(state.last_change) >= RECOVER_EVERY
        {
            state.current = (state.current + step).min(self.configured);
            state.last_change += RECOVER_EVERY;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a lock poisoned by a panicking holder
        // is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The in-process budget: right for one process alone (tests, the Stripe client used on
/// its own); `tally` processes share theirs through Postgres instead.
impl RateBudget for AdaptiveRate {
    // One process-local pace below both of Stripe's limits: every endpoint shares it.
    fn acquire<'a>(&'a self, _priority: Priority, _endpoint: &'a str) -> BoxFuture<'a, ()> {
        AdaptiveRate::acquire(self).boxed()
    }

    fn throttled(&self, _limit: Throttled<'_>) {
        AdaptiveRate::throttled(self);
    }

    fn current(&self) -> u32 {
        AdaptiveRate::current(self)
    }

    fn configured(&self) -> u32 {
        AdaptiveRate::configured(self)
    }
}

impl State {
    fn forget_before(&mut self, now: Instant) {
        while self
            .admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.admitted.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    /// Simulates callers that always have work: at each instant, admit as many as allowed,
    /// then jump to the next wake-up. Returns admission times.
    fn saturate(limiter: &AdaptiveRate, start: Instant, n: usize) -> Vec<Instant> {
        let mut now = start;
        let mut times = Vec::new();
        while times.len() < n {
            match limiter.try_admit(now) {
                Ok(()) => times.push(now),
                Err(wake_at) => {
                    assert!(wake_at > now, "wake-up must be in the future");
                    now = wake_at;
                }
            }
        }
        times
    }

    fn max_in_any_second(times: &[Instant]) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_more_than_rate_in_any_second_and_burst_at_most_rate() {
        let limiter = AdaptiveRate::new(20);
        let start = Instant::now();
        let times = saturate(&limiter, start, 200);
        assert_eq!(max_in_any_second(&times), 20);
        assert_eq!(times.iter().filter(|t| **t == start).count(), 20, "burst");
        // And the rate does get through: 200 requests at 20 per 1.05 s.
        let took = times[199].duration_since(start);
        assert!(took <= Duration::from_millis(9 * 1050), "{took:?}");
    }

    #[test]
    fn throttle_halves_once_per_cooldown() {
        let limiter = AdaptiveRate::new(20);
        let t0 = Instant::now();
        limiter.throttled_at(t0);
        limiter.throttled_at(t0 + 10 * MS);
        limiter.throttled_at(t0 + 500 * MS);
        assert_eq!(limiter.current_at(t0 + 500 * MS), 10);
        let mut t = t0 + DECREASE_COOLDOWN;
        limiter.throttled_at(t);
        assert_eq!(limiter.current_at(t), 5);
        for _ in 0..10 {
            t += DECREASE_COOLDOWN;
            limiter.throttled_at(t);
        }
        assert_eq!(limiter.current_at(t), 1, "never below one");
    }

    #[test]
    fn recovers_stepwise_after_quiet_period() {
        let limiter = AdaptiveRate::new(20);
        let t0 = Instant::now();
        limiter.throttled_at(t0);
        assert_eq!(limiter.current_at(t0), 10);
        assert_eq!(limiter.current_at(t0 + RECOVER_EVERY - MS), 10);
        assert_eq!(limiter.current_at(t0 + RECOVER_EVERY), 15);
        // A 429 during recovery halves again and restarts the quiet period.
        limiter.throttled_at(t0 + RECOVER_EVERY + MS);
        assert_eq!(limiter.current_at(t0 + RECOVER_EVERY + MS), 7);
        let t1 = t0 + RECOVER_EVERY + MS;
        assert_eq!(limiter.current_at(t1 + RECOVER_EVERY), 12);
        assert_eq!(limiter.current_at(t1 + RECOVER_EVERY * 2), 17);
        assert_eq!(limiter.current_at(t1 + RECOVER_EVERY * 3), 20);
        assert_eq!(
            limiter.current_at(t1 + RECOVER_EVERY * 30),
            20,
            "never above configured"
        );
    }

    #[test]
    fn lowered_rate_is_respected_immediately() {
        let limiter = AdaptiveRate::new(20);
        let t0 = Instant::now();
        // A full window at full rate, then a 429.
        saturate(&limiter, t0, 20);
        limiter.throttled_at(t0);
        let times = saturate(&limiter, t0, 10);
        // Nothing more until the first twenty age out, and then only ten.
        assert!(times.iter().all(|t| *t == t0 + WINDOW), "{times:?}");
        assert!(limiter.try_admit(t0 + WINDOW).is_err());
    }

    #[tokio::test]
    async fn concurrent_callers_share_the_limit_in_real_time() {
        let limiter = Arc::new(AdaptiveRate::new(10));
        let times = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (limiter, times) = (limiter.clone(), times.clone());
                tokio::spawn(async move {
                    for _ in 0..5 {
                        limiter.acquire().await;
                        times.lock().expect("test lock").push(Instant::now());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task completes");
        }
        let mut times = times.lock().expect("test lock").clone();
        times.sort();
        assert_eq!(times.len(), 25);
        assert!(max_in_any_second(&times) <= 10);
    }

    #[test]
    fn zero_rate_is_raised_to_one() {
        assert_eq!(AdaptiveRate::new(0).configured(), 1);
    }
}
