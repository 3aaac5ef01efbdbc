//! The audit log's use cases: who (a token, or the CLI and its OS user) changed what
//! (an action and a small JSON of non-secret details), for which tenant, and when.
//! Each change records its event in the transaction that makes the change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgExecutor;

use crate::domain::api_timestamp;
use crate::store;
use crate::store::audit::{AuditEvent, NewAuditEvent};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API token (its name is looked up when the event is written).
    Token { id: i64 },
    /// The `tally` CLI, run by this OS user when the environment says.
    Cli { user: Option<String> },
    /// tally itself (the closer reopening a day), named by the part that acted.
    System { part: &'static str },
}

impl Actor {
    pub fn token(id: i64) -> Actor {
        Actor::Token { id }
    }

    /// The CLI, with `$USER` (or `$LOGNAME`) if set.
    pub fn cli() -> Actor {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()));
        Actor::Cli { user }
    }
}

/// Records one change. `details` must never hold a secret: callers pass which fields
/// changed, last fours, ids and counts.
pub async fn record(
    db: impl PgExecutor<'_>,
    actor: &Actor,
    action: &str,
    tenant: Option<&str>,
    details: Value,
) -> Result<(), sqlx::Error> {
    let (kind, token_id, name) = match actor {
        Actor::Token { id } => ("token", Some(*id), None),
        Actor::Cli { user } => ("cli", None, user.as_deref()),
        Actor::System { part } => ("system", None, Some(*part)),
    };
    store::audit::insert(
        db,
        &NewAuditEvent {
            actor_kind: kind,
            actor_token_id: token_id,
            actor_name: name,
            action,
            tenant_slug: tenant,
            details: &details,
        },
    )
    .await
}

/// Records what tally itself did for `tenant` (no person or token acted).
pub async fn record_system(
    db: impl PgExecutor<'_>,
    action: &str,
    tenant: &str,
    details: &Value,
) -> Result<(), sqlx::Error> {
    record(
        db,
        &Actor::System { part: "closer" },
        action,
        Some(tenant),
        details.clone(),
    )
    .await
}

/// One recorded change, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuditEvent)]
pub struct AuditView {
    pub id: i64,
    #[schema(schema_with = audit_event_kind)]
    pub object: &'static str,
    #[schema(format = DateTime)]
    pub at: String,
    /// `{"type": "token", "tokenId", "name"}`, `{"type": "cli", "user"}` or
    /// `{"type": "system", "name"}`.
    #[schema(value_type = Object)]
    pub actor: Value,
    /// What was done (`tenant.add`, `token.revoke`, …).
    pub action: String,
    /// The tenant's slug, when the change was about one.
    pub tenant: Option<String>,
    /// What changed (never a secret).
    #[schema(value_type = Object)]
    pub details: Value,
}

fn audit_event_kind() -> utoipa::openapi::schema::Schema {
    crate::schema::kind("auditEvent")
}

impl From<AuditEvent> for AuditView {
    fn from(event: AuditEvent) -> AuditView {
        let actor = match event.actor_token_id {
            Some(id) => json!({"type": "token", "tokenId": id, "name": event.actor_name}),
            None if event.actor_kind == "system" => {
                json!({"type": "system", "name": event.actor_name})
            }
            None => json!({"type": event.actor_kind, "user": event.actor_name}),
        };
        AuditView {
            id: event.id,
            object: "auditEvent",
            at: api_timestamp(&event.at),
            actor,
            action: event.action,
            tenant: event.tenant_slug,
            details: event.details,
        }
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Events older than this id (the cursor of the next page).
    pub starting_after: Option<i64>,
    pub limit: i64,
}

/// A page of events, newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &AuditFilter,
) -> Result<store::Page<AuditView>, sqlx::Error> {
    let rows = store::audit::list(
        db,
        filter.tenant.as_deref(),
        filter.since,
        filter.starting_after,
        store::fetch_limit(filter.limit),
    )
    .await?;
    let page = store::Page::from_fetched(rows, filter.limit);
    Ok(store::Page {
        data: page.data.into_iter().map(AuditView::from).collect(),
        has_more: page.has_more,
    })
}

/// `2026-12-01T10:00:00Z`, or a date `2026-12-01` (midnight UTC): for `--since`.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
        .ok_or_else(|| {
            format!("{text:?}: give an RFC 3339 time (2026-12-01T10:00:00Z) or a date (2026-12-01)")
        })
}

/// The table `tally audit` prints.
pub fn render_table(events: &[AuditView]) -> String {
    let mut out = format!(
        "{:>6}  {:<24} {:<28} {:<16} {:<16} {}\n",
        "ID", "AT", "WHO", "ACTION", "TENANT", "DETAILS"
    );
    for event in events {
        let who = match event.actor["type"].as_str() {
            Some("token") => format!(
                "token {} ({})",
                event.actor["tokenId"],
                event.actor["name"].as_str().unwrap_or("unnamed")
            ),
            _ => format!("cli ({})", event.actor["user"].as_str().unwrap_or("?")),
        };
        out.push_str(&format!(
            "{:>6}  {:<24} {:<28} {:<16} {:<16} {}\n",
            event.id,
            event.at,
            who,
            event.action,
            event.tenant.as_deref().unwrap_or("-"),
            event.details
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_date() {
        assert_eq!(
            parse_since("2026-12-01").map(|at| at.to_rfc3339()),
            Ok("2026-12-01T00:00:00+00:00".to_owned())
        );
        assert!(parse_since("2026-12-01T10:00:00+02:00").is_ok());
        for bad in ["", "yesterday", "2026-13-01", "1700000000"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
