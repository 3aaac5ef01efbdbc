//! The Connect webhook endpoints registered at Stripe for each tenant, with their
//! sealed signing secrets (`tally tenant webhooks`).

use sqlx::PgExecutor;

/// How many endpoints the tenant has registered.
pub async fn count(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_endpoints WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(db)
    .await
}
