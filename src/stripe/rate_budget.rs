//! Where a request's turn comes from. The client asks a [`RateBudget`] before every
//! attempt and tells it about every 429; what the budget is (one process's limiter,
//! or one shared by every process through a database) is the caller's choice, so this
//! module knows nothing about Postgres.

use futures::future::BoxFuture;

/// Who waits on a request. A person's request goes ahead of background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Someone is waiting for the answer (an API request, the CLI).
    #[default]
    Interactive,
    /// The refresher keeping snapshots fresh; yields to interactive requests.
    Background,
}

/// A per-credential request budget: never more than the rate in force in any
/// one-second window, lowered after a 429 and recovering by itself.
pub trait RateBudget: Send + Sync {
    /// Waits until a request to `endpoint` (`/v1/balance`, `/v1/accounts`, …) may
    /// start, and counts it: Stripe limits requests per account and per endpoint.
    fn acquire<'a>(&'a self, priority: Priority, endpoint: &'a str) -> BoxFuture<'a, ()>;
    /// Stripe answered 429; which of its limits it said was reached.
    fn throttled(&self, limit: Throttled<'_>);
    /// Requests per second in force now.
    fn current(&self) -> u32;
    /// The configured rate the budget recovers to.
    fn configured(&self) -> u32;
}

/// Which of Stripe's limits a 429 reached (its `Stripe-Rate-Limited-Reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled<'a> {
    /// `global-rate`, or no reason given: the account's rate, every endpoint.
    Account,
    /// `endpoint-rate`: this endpoint's rate only.
    Endpoint(&'a str),
}

impl<'a> Throttled<'a> {
    /// From the 429's `Stripe-Rate-Limited-Reason` for a request to `endpoint`.
    pub fn from_reason(reason: Option<&str>, endpoint: &'a str) -> Throttled<'a> {
        match reason {
            Some("endpoint-rate") => Throttled::Endpoint(endpoint),
            _ => Throttled::Account,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_endpoint_reason_slows_one_endpoint() {
        assert_eq!(
            Throttled::from_reason(Some("endpoint-rate"), "/v1/balance"),
            Throttled::Endpoint("/v1/balance")
        );
        assert_eq!(
            Throttled::from_reason(Some("global-rate"), "/v1/balance"),
            Throttled::Account
        );
        assert_eq!(
            Throttled::from_reason(None, "/v1/balance"),
            Throttled::Account
        );
    }
}
