//! Connect webhook events (DESIGN §1): parsed only after the signature was verified,
//! each applied once per tenant, in the transaction that records its id.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::{without_nul, FetchFailure, StripeAccountId};
use crate::money::Totals;
use crate::store;
use crate::store::accounts::{AccountInput, Observed};
use crate::store::changes::Marked;
use crate::store::snapshots::{Recorded, SnapshotError, SnapshotOutcome};
use crate::store::tenants::Tenant;
use crate::stripe::{Balance, CredentialKind};

pub const ACCOUNT_UPDATED: &str = "account.updated";
pub const ACCOUNT_DEAUTHORIZED: &str = "account.application.deauthorized";
pub const BALANCE_AVAILABLE: &str = "balance.available";

/// The part of a Stripe event tally reads; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = StripeEvent)]
pub struct Event {
    /// `evt_…`
    pub id: String,
    /// `event`
    #[serde(default)]
    #[schema(required = true)]
    pub object: String,
    /// `account.updated`, `account.application.deauthorized`, `balance.available`, …
    #[serde(rename = "type")]
    pub event_type: String,
    /// The connected account the event is about (Connect events).
    #[serde(default)]
    pub account: Option<String>,
    /// From API version 2025-04-30: `X`, or `P/X` for an account under platform P.
    #[serde(default)]
    pub context: Option<String>,
    pub created: i64,
    pub data: EventData,
}

/// The object the event is about (an account, a balance, …).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = StripeEventData)]
pub struct EventData {
    #[schema(value_type = Object)]
    pub object: Value,
}

/// What processing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The event id was processed before; nothing changed.
    Duplicate,
    /// Older than what is stored (Stripe does not deliver in order): not applied. A
    /// stale balance is kept in history only, or not at all once older than the
    /// history kept at full resolution (`retention.snapshots_full_days`).
    Stale,
    /// A type tally does not act on (recorded, so a replay is a duplicate too).
    Ignored,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Applied => "applied",
            Applied::Duplicate => "duplicate",
            Applied::Stale => "stale",
            Applied::Ignored => "ignored",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The payload is not an event, or the event lacks what its type needs.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Reads a verified payload. A U+0000 anywhere in it (Postgres can store it neither
/// in text nor in JSONB) becomes U+FFFD, so such an event is stored, not refused.
pub fn parse(payload: &[u8]) -> Result<Event, EventError> {
    let invalid =
        |error: serde_json::Error| EventError::Invalid(format!("not a Stripe event: {error}"));
    let value: Value = serde_json::from_slice(payload).map_err(invalid)?;
    let event: Event = serde_json::from_value(without_nul(&value).into_owned()).map_err(invalid)?;
    if event.id.is_empty() || event.id.len() > 255 {
        return Err(EventError::Invalid(
            "the event id is empty or too long".into(),
        ));
    }
    Ok(event)
}

/// Applies `event` to the tenant's records once: a replayed id changes nothing, and
/// an event older than what wrote the record is recorded but not applied. Every
/// event about a connected account marks it changed (fetched again shortly), except
/// `balance.available`, whose balance is stored as the account's fetch, and the
/// deauthorization, which removes it. Any event, a replay too, tells that the
/// tenant's stream is alive. A balance older than `full_history` (every snapshot
/// since is kept; before it history is pruned to one a day) is not stored at all.
#[tracing::instrument(name = "webhook", skip_all, fields(tenant = %tenant.slug, event = %event.id, kind = %event.event_type))]
pub async fn apply(
    pool: &PgPool,
    tenant: &Tenant,
    owner_key: &str,
    max_silence: Duration,
    full_history: Option<Duration>,
    event: &Event,
) -> Result<Applied, EventError> {
    let received = Utc::now();
    let mut tx = store::begin(pool).await?;
    let first_time = store::webhook_events::record(
        &mut *tx,
        tenant.id,
        &event.id,
        &event.event_type,
        event.account.as_deref(),
    )
    .await?;
    store::changes::heard(&mut *tx, tenant.id, received, max_silence.as_secs_f64()).await?;
    let applied = if !first_time {
        Applied::Duplicate
    } else {
        match event.event_type.as_str() {
            ACCOUNT_UPDATED => {
                match account_updated(&mut tx, tenant, owner_key, event, received).await? {
                    Applied::Applied => mark_changed(&mut tx, tenant.id, event, received).await?,
                    other => other,
                }
            }
            ACCOUNT_DEAUTHORIZED => {
                account_deauthorized(&mut tx, tenant.id, event, received).await?
            }
            BALANCE_AVAILABLE if before_full_history(event, received, full_history)? => {
                Applied::Stale
            }
            BALANCE_AVAILABLE => balance_available(&mut tx, tenant.id, event, received).await?,
            _ => mark_changed(&mut tx, tenant.id, event, received).await?,
        }
    };
    tx.commit().await?;
    Ok(applied)
}

/// Marks the event's connected account changed. An event about no connected account
/// (the platform's own), or one the tenant does not list, is ignored.
async fn mark_changed(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: i64,
    event: &Event,
    received: DateTime<Utc>,
) -> Result<Applied, EventError> {
    let Ok(account) = connected_account(event) else {
        return Ok(Applied::Ignored);
    };
    let created = event_time(event, received)?;
    Ok(
        match store::changes::mark_changed(&mut **tx, tenant_id, &account, created, received)
            .await?
        {
            Marked::Changed => Applied::Applied,
            Marked::Stale => Applied::Stale,
            Marked::UnknownAccount => Applied::Ignored,
        },
    )
}

/// Stores the new account object, unless the record was written from something
/// observed later. A stored account keeps its platform (sync knows it best); a new
/// one takes it from the event's `P/X` context.
async fn account_updated(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &Tenant,
    owner_key: &str,
    event: &Event,
    received: DateTime<Utc>,
) -> Result<Applied, EventError> {
    let observed = observation(event, received)?;
    let object = &event.data.object;
    let stripeid = object
        .get("id")
        .and_then(Value::as_str)
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| EventError::Invalid("account.updated carries no account object".into()))?;
    let stored = store::accounts::lock_for_event(&mut **tx, tenant.id, &stripeid).await?;
    if stored.as_ref().is_some_and(|s| s.is_newer_than(observed)) {
        return Ok(Applied::Stale);
    }
    let platform = match stored {
        Some(stored) => stored.platform_id,
        None => platform_from_context(tenant, event.context.as_deref()),
    };
    let input = AccountInput::from_stripe_object(object, platform.as_ref(), owner_key)
        .map_err(|error| EventError::Invalid(error.to_string()))?;
    let outcome = store::accounts::upsert(&mut **tx, tenant.id, &[input], observed).await?;
    // Nothing written: a sync page inserted the account, from a newer read, between
    // the lock (which found no row) and the upsert.
    Ok(if outcome.written == 0 {
        Applied::Stale
    } else {
        Applied::Applied
    })
}

/// The platform in an organization tenant's `P/X` context; platform tenants store none.
fn platform_from_context(tenant: &Tenant, context: Option<&str>) -> Option<StripeAccountId> {
    let organization = tenant.credential_kind == CredentialKind::Organization;
    let (platform, _account) = context?.split_once('/')?;
    organization.then(|| StripeAccountId::parse(platform))?
}

/// The platform lost access: the account is marked removed and leaves the totals,
/// unless the record was written from something observed later.
async fn account_deauthorized(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: i64,
    event: &Event,
    received: DateTime<Utc>,
) -> Result<Applied, EventError> {
    let observed = observation(event, received)?;
    let account = connected_account(event)?;
    let stored = store::accounts::lock_for_event(&mut **tx, tenant_id, &account).await?;
    if stored.is_some_and(|s| s.is_newer_than(observed)) {
        return Ok(Applied::Stale);
    }
    let removed =
        store::accounts::mark_removed(&mut **tx, tenant_id, &[account], observed.at(), None)
            .await?;
    store::snapshots::forget_latest(tx, tenant_id, &removed).await?;
    Ok(Applied::Applied)
}

/// Stores the event's balance as a snapshot taken when the event was created; one
/// older than the account's latest snapshot goes to history only, and is stale.
async fn balance_available(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: i64,
    event: &Event,
    received: DateTime<Utc>,
) -> Result<Applied, EventError> {
    let account = connected_account(event)?;
    // Locked first, so the listed state read here is the one `record` decides on.
    let listed = store::accounts::lock_for_event(&mut **tx, tenant_id, &account)
        .await?
        .is_some_and(|stored| stored.listed);
    let balance: Balance = serde_json::from_value(event.data.object.clone())
        .map_err(|error| EventError::Invalid(format!("balance.available: {error}")))?;
    // A balance that cannot be summed is kept as a failed try, as a fetch of it would
    // be, not refused: Stripe would retry a refusal for days, to the same end.
    let summed = Totals::from_balance(&balance).map_err(|overflow| {
        FetchFailure::amount_overflow(format!("balance.available: {overflow}"), None)
    });
    let outcome = match &summed {
        Ok(totals) => SnapshotOutcome::Balance {
            raw: &event.data.object,
            totals,
        },
        Err(failure) => SnapshotOutcome::Error(failure),
    };
    let recorded = store::snapshots::record(
        tx,
        tenant_id,
        &account,
        event_time(event, received)?,
        "webhook",
        outcome,
    )
    .await?;
    tracing::debug!(?recorded, "balance snapshot from webhook");
    // A removed account's snapshot is history only too, as it always was; that is
    // not staleness.
    Ok(match recorded {
        Recorded::HistoryOnly(_) if listed => Applied::Stale,
        Recorded::Latest(_) | Recorded::HistoryOnly(_) | Recorded::UnknownAccount => {
            Applied::Applied
        }
    })
}

/// Whether the event's time lies before the snapshots kept in full: storing it there
/// would move the totals over time against balances already pruned away.
fn before_full_history(
    event: &Event,
    received: DateTime<Utc>,
    full_history: Option<Duration>,
) -> Result<bool, EventError> {
    let Some(kept) = full_history.and_then(|d| chrono::TimeDelta::from_std(d).ok()) else {
        return Ok(false);
    };
    Ok(event_time(event, received)? < received - kept)
}

fn connected_account(event: &Event) -> Result<StripeAccountId, EventError> {
    event
        .account
        .as_deref()
        .and_then(StripeAccountId::parse)
        .ok_or_else(|| {
            EventError::Invalid(format!(
                "{} needs the connected `account` it is about",
                event.event_type
            ))
        })
}

/// When the event observed the account: its `created`, received at `received`.
fn observation(event: &Event, received: DateTime<Utc>) -> Result<Observed, EventError> {
    Ok(Observed::Event {
        created: event_time(event, received)?,
        received,
    })
}

/// The event's `created`, but never after it arrived: an event claiming a later time
/// (a skewed clock, a forged test) would otherwise stand as the newest word on its
/// account until that time came.
fn event_time(event: &Event, received: DateTime<Utc>) -> Result<DateTime<Utc>, EventError> {
    let created = Utc
        .timestamp_opt(event.created, 0)
        .single()
        .ok_or_else(|| EventError::Invalid("the event's `created` is not a timestamp".into()))?;
    Ok(created.min(received))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(kind: &str) -> Tenant {
        Tenant {
            id: 1,
            slug: "acme".into(),
            credential_kind: kind.parse().expect("a credential kind"),
            key_ciphertext: Vec::new(),
            key_last4: "0000".into(),
            api_version: "2025-04-30.basil".into(),
            api_base: None,
            rate_limit: None,
            platform_ids: Vec::new(),
            org_account_ids: Vec::new(),
            webhook_secret_ciphertext: None,
            created_at: Utc::now(),
            version: 1,
            disabled_at: None,
            freshness: Default::default(),
            close_timezone: "UTC".into(),
        }
    }

    #[test]
    fn the_platform_comes_from_an_org_context_only() {
        let org = tenant("organization");
        assert_eq!(
            platform_from_context(&org, Some("acct_P/acct_X")),
            StripeAccountId::parse("acct_P")
        );
        assert_eq!(platform_from_context(&org, Some("acct_X")), None);
        assert_eq!(platform_from_context(&org, None), None);
        assert_eq!(
            platform_from_context(&tenant("platform"), Some("acct_P/acct_X")),
            None
        );
    }

    #[test]
    fn parse_refuses_what_is_not_an_event() {
        assert!(parse(b"not json").is_err());
        assert!(
            parse(br#"{"id": "", "type": "x", "created": 1, "data": {"object": {}}}"#).is_err()
        );
        let event = parse(
            br#"{"id": "evt_1", "type": "balance.available", "created": 1, "account": "acct_1",
                 "data": {"object": {}}, "extra": true}"#,
        )
        .expect("an event");
        assert_eq!(event.account.as_deref(), Some("acct_1"));
    }

    #[test]
    fn parse_replaces_nul_everywhere_in_the_event() {
        let event = parse(
            br#"{"id": "evt_\u0000", "type": "account.updated", "created": 1,
                 "data": {"object": {"id": "acct_1", "business_profile": {"name": "A\u0000B"}}}}"#,
        )
        .expect("an event");
        assert_eq!(event.id, "evt_\u{fffd}");
        assert_eq!(event.data.object["business_profile"]["name"], "A\u{fffd}B");
    }
}
