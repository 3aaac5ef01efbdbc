//! When to try again and how long to wait, as Stripe's official SDKs do it (stripe-go
//! `shouldRetry`, stripe-python `_should_retry` / `_sleep_time_seconds`), per DESIGN §1.
//!
//! One deliberate difference: the SDKs do not retry a plain 429 (only `lock_timeout`, which
//! Stripe marks with `Stripe-Should-Retry: true`), because retrying adds to the contention.
//! tally does retry it (DESIGN §1), but every 429 also halves the tenant's request rate
//! ([`crate::stripe::limiter`]), so the retry lands in a quieter stream rather than adding to
//! the pressure.

use std::time::Duration;

use http::HeaderMap;

use crate::stripe::headers::STRIPE_SHOULD_RETRY;
use crate::stripe::settings::ClientSettings;

/// What one attempt produced, as far as the retry decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response arrived. `should_retry` is the parsed `Stripe-Should-Retry` header.
    Response {
        status: u16,
        should_retry: Option<bool>,
    },
    /// No response. `retryable` is false for failures that cannot improve by retrying
    /// (the request could not be built, a redirect loop).
    Transport { retryable: bool },
}

/// Whether the outcome is worth another attempt (attempt limits are the caller's).
pub fn should_retry(outcome: AttemptOutcome) -> bool {
    match outcome {
        AttemptOutcome::Transport { retryable } => retryable,
        AttemptOutcome::Response { status, .. } if (200..300).contains(&status) => false,
        // Stripe's own verdict comes first: `false` when a retry would be a no-op or unsafe,
        // `true` for lock timeouts and the like.
        AttemptOutcome::Response {
            should_retry: Some(verdict),
            ..
        } => verdict,
        AttemptOutcome::Response { status, .. } => status == 409 || status == 429 || status >= 500,
    }
}

/// `Stripe-Should-Retry` as the SDKs read it: exactly `true` or `false`, else no opinion.
pub fn stripe_should_retry(headers: &HeaderMap) -> Option<bool> {
    match headers.get(STRIPE_SHOULD_RETRY)?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The wait before retry number `attempt` (1 for the first retry):
/// `min(backoff_initial * 2^(attempt-1), backoff_max) * jitter`, with `jitter` clamped to
/// [0.5, 1] so concurrent clients spread out but never wait longer than the cap.
pub fn backoff_delay(attempt: u32, settings: &ClientSettings, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let base = settings
        .backoff_initial
        .saturating_mul(1u32 << doublings)
        .min(settings.backoff_max);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.5, 1.0)
    } else {
        1.0
    };
    base.mul_f64(jitter)
}

/// A random jitter factor in [0.5, 1].
pub(crate) fn random_jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn resp(status: u16, should_retry: Option<bool>) -> AttemptOutcome {
        AttemptOutcome::Response {
            status,
            should_retry,
        }
    }

    #[test]
    fn should_retry_decision_table() {
        let table = [
            // (outcome, retry?)
            (resp(200, None), false),
            (resp(200, Some(true)), false),
            (resp(400, None), false),
            (resp(401, None), false),
            (resp(403, None), false),
            (resp(404, None), false),
            (resp(409, None), true),
            (resp(429, None), true),
            (resp(500, None), true),
            (resp(502, None), true),
            (resp(503, None), true),
            // The header overrides the status either way.
            (resp(500, Some(false)), false),
            (resp(429, Some(false)), false),
            (resp(409, Some(false)), false),
            (resp(400, Some(true)), true),
            (resp(429, Some(true)), true),
            (AttemptOutcome::Transport { retryable: true }, true),
            (AttemptOutcome::Transport { retryable: false }, false),
        ];
        for (outcome, expected) in table {
            assert_eq!(should_retry(outcome), expected, "{outcome:?}");
        }
    }

    #[test]
    fn should_retry_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(stripe_should_retry(&h), None);
        h.insert("stripe-should-retry", HeaderValue::from_static("true"));
        assert_eq!(stripe_should_retry(&h), Some(true));
        h.insert("stripe-should-retry", HeaderValue::from_static("false"));
        assert_eq!(stripe_should_retry(&h), Some(false));
        h.insert("stripe-should-retry", HeaderValue::from_static("maybe"));
        assert_eq!(stripe_should_retry(&h), None);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_and_caps_at_five() {
        let s = ClientSettings::default();
        let full = |n| backoff_delay(n, &s, 1.0);
        assert_eq!(full(1), Duration::from_millis(500));
        assert_eq!(full(2), Duration::from_millis(1000));
        assert_eq!(full(3), Duration::from_millis(2000));
        assert_eq!(full(4), Duration::from_millis(4000));
        assert_eq!(full(5), Duration::from_secs(5));
        assert_eq!(full(40), Duration::from_secs(5));
        assert_eq!(full(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_scales_between_half_and_full() {
        let s = ClientSettings::default();
        assert_eq!(backoff_delay(1, &s, 0.5), Duration::from_millis(250));
        assert_eq!(backoff_delay(3, &s, 0.75), Duration::from_millis(1500));
        // Out-of-range jitter is clamped, never stretching past the cap.
        assert_eq!(backoff_delay(9, &s, 7.0), Duration::from_secs(5));
        assert_eq!(backoff_delay(1, &s, 0.0), Duration::from_millis(250));
        assert_eq!(backoff_delay(1, &s, f64::NAN), Duration::from_millis(500));
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((0.5..=1.0).contains(&j), "{j}");
            let d = backoff_delay(2, &s, j);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }
}
