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
    /// Waits until a request may start, and counts it.
    fn acquire(&self, priority: Priority) -> BoxFuture<'_, ()>;
    /// Stripe answered 429.
    fn throttled(&self);
    /// Requests per second in force now.
    fn current(&self) -> u32;
    /// The configured rate the budget recovers to.
    fn configured(&self) -> u32;
}
