//! The shared Stripe budget per credential (`stripe_budgets`): slot reservations and
//! 429 slow-downs, decided inside Postgres so every process sees one budget.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// One reservation's answer.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// When the request may start, on the database's clock.
    pub slot_at: DateTime<Utc>,
    /// The database's clock when it decided; `slot_at - db_now` is the wait.
    pub db_now: DateTime<Utc>,
    /// The database's clock when the statement arrived: `db_now - db_asked` is how
    /// long the reservation waited for the budget's row locks.
    pub db_asked: DateTime<Utc>,
    /// False: background work found the queue too long and reserved nothing; try
    /// again when `slot_at` is within the horizon.
    pub reserved: bool,
    /// The rate in force (per second).
    pub rate: i32,
}

/// The two rates a request is paced by: the tenant's (Stripe's per-account limit) and
/// its endpoint's.
#[derive(Debug, Clone, Copy)]
pub struct Rates<'a> {
    pub tenant: i32,
    pub endpoint: &'a str,
    pub endpoint_rate: i32,
}

/// Reserves the next slot of the tenant's budget and of the endpoint's at once, each
/// `spacing / rate` seconds after the one before. `horizon_ms` is `None` for a request
/// a person waits on (it always queues), `Some` for background work.
pub async fn reserve(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    rates: Rates<'_>,
    horizon_ms: Option<i32>,
    spacing: f64,
) -> Result<Slot, sqlx::Error> {
    sqlx::query_as!(
        Slot,
        r#"SELECT slot_at AS "slot_at!", db_now AS "db_now!", granted AS "reserved!", rate AS "rate!",
                  db_asked AS "db_asked!"
           FROM stripe_budget_reserve_spaced($1, $2, $3, $4, $5, $6)"#,
        tenant_id,
        rates.tenant,
        rates.endpoint,
        rates.endpoint_rate,
        horizon_ms,
        spacing
    )
    .fetch_one(db)
    .await
}

/// Stripe answered 429 `endpoint-rate`: halves the endpoint's shared rate (once per
/// window). Returns the rate now.
pub async fn endpoint_throttled(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    endpoint: &str,
    endpoint_rate: i32,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT stripe_budget_endpoint_throttled($1, $2, $3) AS "rate!""#,
        tenant_id,
        endpoint,
        endpoint_rate
    )
    .fetch_one(db)
    .await
}

/// Stripe answered 429: halves the shared rate (once per window). Returns the rate now.
pub async fn throttled(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    configured_rate: i32,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT stripe_budget_throttled($1, $2) AS "rate!""#,
        tenant_id,
        configured_rate
    )
    .fetch_one(db)
    .await
}
