//! Processed webhook event ids: each Stripe event is applied once per tenant.

use sqlx::PgExecutor;

/// Remembers the event; false when it was already processed (a replay or a
/// redelivery). Call in the transaction that applies the event, so a failure to
/// apply forgets it again and Stripe's retry is processed.
pub async fn record(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    event_id: &str,
    event_type: &str,
    account: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        r#"INSERT INTO webhook_events (tenant_id, event_id, event_type, account)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, event_id) DO NOTHING"#,
        tenant_id,
        event_id,
        event_type,
        account
    )
    .execute(db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
