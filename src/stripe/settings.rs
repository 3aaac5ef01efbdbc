//! The client's settings: timeouts and the retry policy shared by every tenant, and
//! each tenant's pacing.

use std::time::Duration;

/// Timeouts and retry policy, shared by every tenant.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Per attempt, from connecting until the body has arrived.
    pub request_timeout: Duration,
    /// Attempts including the first.
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_attempts: 4,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Per-tenant pacing (DESIGN §5).
#[derive(Debug, Clone)]
pub struct RateSettings {
    /// Requests started per second, never exceeded in any one-second window. The default
    /// stays under Stripe's 25/s per endpoint in sandbox. Zero is treated as 1.
    pub per_second: u32,
    /// Requests in flight at once. Zero is treated as 1.
    pub max_in_flight: usize,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            per_second: 20,
            max_in_flight: 16,
        }
    }
}
