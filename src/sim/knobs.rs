//! Run-time knobs: latency, jitter, slow responses, injected 500s and the per-key rate limit.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;

use super::SimConfig;

/// What `SimHandle::set_knobs` can change while the simulator runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    pub latency_ms: u64,
    /// Uniform extra delay in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Requests per key per second; 0 means unlimited.
    pub rate_limit: u32,
    /// Fraction of requests answered 500 `api_error`.
    pub error_rate: f64,
    /// Fraction of requests answered after `slow_ms` instead of the usual latency.
    pub slow_rate: f64,
    pub slow_ms: u64,
}

impl From<&SimConfig> for Knobs {
    fn from(c: &SimConfig) -> Self {
        Knobs {
            latency_ms: c.latency_ms,
            jitter_ms: c.jitter_ms,
            rate_limit: c.rate_limit,
            error_rate: c.error_rate,
            slow_rate: c.slow_rate,
            slow_ms: c.slow_ms,
        }
    }
}

impl Knobs {
    /// How long this request takes before it is answered.
    pub fn delay(&self) -> Duration {
        let mut rng = rand::rng();
        if chance(&mut rng, self.slow_rate) {
            return Duration::from_millis(self.slow_ms);
        }
        let jitter = if self.jitter_ms > 0 {
            rng.random_range(0..=self.jitter_ms)
        } else {
            0
        };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }

    /// Whether to answer this request with an injected 500.
    pub fn inject_error(&self) -> bool {
        chance(&mut rand::rng(), self.error_rate)
    }
}

/// `random_bool` panics outside 0..=1, and knobs come from users.
fn chance(rng: &mut impl Rng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}

/// A sliding one-second window per key: a request is admitted while fewer than `limit`
/// requests of that key were admitted in the last second. Rejected requests do not count,
/// as a client that backs off must get through again.
#[derive(Default)]
pub struct RateLimiter {
    windows: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub fn admit(&mut self, key: &str, limit: u32, now: Instant) -> bool {
        if limit == 0 {
            return true;
        }
        let window = self.windows.entry(key.to_string()).or_default();
        trim(window, now);
        if window.len() >= limit as usize {
            return false;
        }
        window.push_back(now);
        true
    }
}

/// Drops the instants older than one second before `now`.
pub fn trim(window: &mut VecDeque<Instant>, now: Instant) {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        window.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_limit_per_second() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| limiter.admit("k", 4, t0)).count();
        assert_eq!(admitted, 4);
        assert!(limiter.admit("other", 4, t0));
        assert!(limiter.admit("k", 4, t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn out_of_range_rates_do_not_panic() {
        let knobs = Knobs {
            error_rate: 7.0,
            slow_rate: -1.0,
            ..Knobs::from(&SimConfig::default())
        };
        assert!(knobs.inject_error());
        assert_eq!(knobs.delay(), Duration::ZERO);
    }
}
