//! Run-time knobs: latency, jitter, slow responses, injected 500s, the per-key and
//! per-endpoint rate limits, and how much activity and how many webhook mishaps there are.

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
    /// Requests per key per endpoint (`GET /v1/balance`, …) per second; 0 means unlimited.
    pub endpoint_rate_limit: u32,
    /// Average balance-changing activities per connected account per simulated hour
    /// (ledger mode only: with 0 at start the world stays static).
    pub activity_per_hour: f64,
    /// Share of balance changes that send no event at all.
    pub silent_change_rate: f64,
    /// Share of first delivery attempts treated as failed (not even sent) and retried.
    pub webhook_fail_rate: f64,
    /// Share of events delivered twice.
    pub webhook_duplicate_rate: f64,
    /// Share of events delivered 1–5 s late (so later events overtake them).
    pub webhook_late_rate: f64,
    /// Uniform delay in `0..=webhook_jitter_ms` before a first delivery.
    pub webhook_jitter_ms: u64,
    /// First retry after about this long, doubling per attempt, at most 64 times as long.
    pub webhook_retry_base_ms: u64,
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
            endpoint_rate_limit: c.endpoint_rate_limit,
            activity_per_hour: c.activity_per_hour,
            silent_change_rate: c.silent_change_rate,
            webhook_fail_rate: c.webhook_fail_rate,
            webhook_duplicate_rate: c.webhook_duplicate_rate,
            webhook_late_rate: c.webhook_late_rate,
            webhook_jitter_ms: c.webhook_jitter_ms,
            webhook_retry_base_ms: c.webhook_retry_base_ms,
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
pub fn chance(rng: &mut impl Rng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p.min(1.0))
}

/// Which limit refused a request, as Stripe's `Stripe-Rate-Limited-Reason` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    GlobalRate,
    EndpointRate,
}

impl Limited {
    pub fn reason(self) -> &'static str {
        match self {
            Limited::GlobalRate => "global-rate",
            Limited::EndpointRate => "endpoint-rate",
        }
    }
}

/// Sliding one-second windows per key and per (key, endpoint): a request is admitted
/// while fewer than the limit were admitted in the last second. Rejected requests do not
/// count, as a client that backs off must get through again.
#[derive(Default)]
pub struct RateLimiter {
    windows: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    /// Admits a request of `key` to `route` under the per-key `limit` and the
    /// per-endpoint `endpoint_limit` (0: unlimited).
    pub fn admit(
        &mut self,
        key: &str,
        route: &str,
        (limit, endpoint_limit): (u32, u32),
        now: Instant,
    ) -> Result<(), Limited> {
        let endpoint_key = format!("{key} {route}");
        if self.full(key, limit, now) {
            return Err(Limited::GlobalRate);
        }
        if self.full(&endpoint_key, endpoint_limit, now) {
            return Err(Limited::EndpointRate);
        }
        for (k, l) in [(key, limit), (endpoint_key.as_str(), endpoint_limit)] {
            if l > 0 {
                self.windows
                    .entry(k.to_string())
                    .or_default()
                    .push_back(now);
            }
        }
        Ok(())
    }

    fn full(&mut self, key: &str, limit: u32, now: Instant) -> bool {
        if limit == 0 {
            return false;
        }
        let window = self.windows.entry(key.to_string()).or_default();
        trim(window, now);
        window.len() >= limit as usize
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
        let admit =
            |l: &mut RateLimiter, key: &str, at| l.admit(key, "GET /v1/balance", (4, 0), at);
        let admitted = (0..10)
            .filter(|_| admit(&mut limiter, "k", t0).is_ok())
            .count();
        assert_eq!(admitted, 4);
        assert_eq!(admit(&mut limiter, "k", t0), Err(Limited::GlobalRate));
        assert!(admit(&mut limiter, "other", t0).is_ok());
        assert!(admit(&mut limiter, "k", t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn endpoint_limit_is_per_route_and_does_not_spend_the_global_one() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        let balance = |l: &mut RateLimiter| l.admit("k", "GET /v1/balance", (5, 2), t0);
        assert!(balance(&mut limiter).is_ok());
        assert!(balance(&mut limiter).is_ok());
        assert_eq!(balance(&mut limiter), Err(Limited::EndpointRate));
        assert!(limiter.admit("k", "GET /v1/accounts", (5, 2), t0).is_ok());
        assert!(limiter.admit("k", "GET /v1/accounts", (5, 2), t0).is_ok());
        // Four admitted; the refused one did not count, so a fifth gets through.
        assert!(limiter.admit("k", "GET /v1/account", (5, 2), t0).is_ok());
        assert_eq!(
            limiter.admit("k", "GET /v1/accounts/{id}", (5, 2), t0),
            Err(Limited::GlobalRate)
        );
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
