//! The audit log: who changed what, for which tenant, and when. Rows never hold a
//! secret, and never reference a tenant or token by key, so they outlive a purge.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

pub struct NewAuditEvent<'a> {
    /// `token` or `cli`.
    pub actor_kind: &'a str,
    pub actor_token_id: Option<i64>,
    /// The OS user for the CLI; for a token, filled in from the token's name.
    pub actor_name: Option<&'a str>,
    pub action: &'a str,
    pub tenant_slug: Option<&'a str>,
    pub details: &'a Value,
}

pub async fn insert(db: impl PgExecutor<'_>, event: &NewAuditEvent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO audit_events (actor_kind, actor_token_id, actor_name, action, tenant_slug,
                                     details)
           VALUES ($1, $2,
                   COALESCE($3, (SELECT name FROM api_tokens WHERE id = $2)),
                   $4, $5, $6)"#,
        event.actor_kind,
        event.actor_token_id,
        event.actor_name,
        event.action,
        event.tenant_slug,
        event.details,
    )
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_token_id: Option<i64>,
    pub actor_name: Option<String>,
    pub action: String,
    pub tenant_slug: Option<String>,
    pub details: Value,
}

/// Newest first: events older than `starting_after` (an event id), of one tenant or
/// all, at or after `since`, at most `limit`.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_slug: Option<&str>,
    since: Option<DateTime<Utc>>,
    starting_after: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEvent>, sqlx::Error> {
    sqlx::query_as!(
        AuditEvent,
        r#"SELECT id, at, actor_kind, actor_token_id, actor_name, action, tenant_slug, details
           FROM audit_events
           WHERE ($1::text IS NULL OR tenant_slug = $1)
             AND ($2::timestamptz IS NULL OR at >= $2)
             AND ($3::bigint IS NULL OR id < $3)
           ORDER BY id DESC
           LIMIT $4"#,
        tenant_slug,
        since,
        starting_after,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Whether an event with this id exists (an unknown cursor is refused, not empty).
pub async fn exists(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM audit_events WHERE id = $1) AS "e!""#,
        id
    )
    .fetch_one(db)
    .await
}
