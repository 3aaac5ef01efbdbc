//! The Connect webhook endpoints registered at Stripe for each tenant, with their
//! sealed signing secrets (`tally tenant webhooks`).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// One registered endpoint. The secret stays sealed here.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    /// The platform it receives the Connect events of; '' for a platform tenant.
    pub platform_id: String,
    pub endpoint_id: String,
    pub url: String,
    pub secret_ciphertext: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// How many endpoints the tenant has registered.
pub async fn count(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_endpoints WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(db)
    .await
}

/// The tenant's registered endpoints, by platform.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<Vec<WebhookEndpoint>, sqlx::Error> {
    sqlx::query_as!(
        WebhookEndpoint,
        r#"SELECT platform_id, endpoint_id, url, secret_ciphertext, created_at
           FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY platform_id"#,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// What `tally tenant webhooks` stores for one platform.
pub struct NewWebhookEndpoint<'a> {
    pub platform_id: &'a str,
    pub endpoint_id: &'a str,
    pub url: &'a str,
    pub secret_ciphertext: &'a [u8],
}

/// Stores the endpoint of the tenant's platform, replacing the one stored before.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    endpoint: &NewWebhookEndpoint<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO webhook_endpoints (tenant_id, platform_id, endpoint_id, url, secret_ciphertext)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, platform_id) DO UPDATE
           SET endpoint_id = EXCLUDED.endpoint_id, url = EXCLUDED.url,
               secret_ciphertext = EXCLUDED.secret_ciphertext, created_at = now()"#,
        tenant_id,
        endpoint.platform_id,
        endpoint.endpoint_id,
        endpoint.url,
        endpoint.secret_ciphertext,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets the endpoint of the tenant's platform. True if one was stored.
pub async fn delete(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    platform_id: &str,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND platform_id = $2",
        tenant_id,
        platform_id
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(deleted > 0)
}

/// A registered endpoint's sealed secret, for `tally rekey`.
pub struct SealedEndpointSecret {
    pub tenant_id: i64,
    /// Its tenant's slug, which the secret is bound to.
    pub slug: String,
    pub platform_id: String,
    pub endpoint_id: String,
    pub secret_ciphertext: Vec<u8>,
}

/// Every registered endpoint's sealed secret, locked until the transaction ends.
pub async fn sealed_for_rekey(
    db: impl PgExecutor<'_>,
) -> Result<Vec<SealedEndpointSecret>, sqlx::Error> {
    sqlx::query_as!(
        SealedEndpointSecret,
        r#"SELECT w.tenant_id, t.slug, w.platform_id, w.endpoint_id, w.secret_ciphertext
           FROM webhook_endpoints w JOIN tenants t ON t.id = w.tenant_id
           ORDER BY w.tenant_id, w.platform_id
           FOR UPDATE OF w"#
    )
    .fetch_all(db)
    .await
}

/// Stores a re-sealed secret (same plaintext).
pub async fn reseal(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    platform_id: &str,
    secret_ciphertext: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE webhook_endpoints SET secret_ciphertext = $3
           WHERE tenant_id = $1 AND platform_id = $2"#,
        tenant_id,
        platform_id,
        secret_ciphertext,
    )
    .execute(db)
    .await?;
    Ok(())
}
