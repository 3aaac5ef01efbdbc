//! What Connect events tell: accounts changed since their latest fetch
//! (`changed_accounts`) and each tenant's event stream (`event_streams`), which the
//! freshness rule (`crate::freshness`) reads to vouch for the accounts nothing
//! happened to.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::refreshes::Claimed;
use crate::domain::{OwnerId, StripeAccountId};
use crate::freshness::{EventStream, FreshnessMode};

/// What an event did to its account's change mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// The account is (still) waiting for a fetch.
    Changed,
    /// The event is older than the account's latest fetch, which already saw it.
    Stale,
    /// The tenant lists no such account.
    UnknownAccount,
}

/// An event created at `created` about `stripeid` arrived at `received`: the account
/// is changed, unless its latest snapshot was taken a whole second after the event
/// (`created` has second precision, so a fetch in the same second may predate the
/// change and does not count).
pub async fn mark_changed(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    created: DateTime<Utc>,
    received: DateTime<Utc>,
) -> Result<Marked, sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH account AS (
               SELECT a.tenant_id, a.stripeid,
                      (SELECT l.fetched_at FROM latest_balances l
                       WHERE l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid) AS fetched_at
               FROM stripe_accounts a
               WHERE a.tenant_id = $1 AND a.stripeid = $2 AND a.removed_at IS NULL
           ),
           marked AS (
               INSERT INTO changed_accounts AS c (tenant_id, stripeid, first_event_at, last_event_at)
               SELECT tenant_id, stripeid, $4, $4 FROM account
               WHERE fetched_at IS NULL OR fetched_at < $3::timestamptz + interval '1 second'
               ON CONFLICT (tenant_id, stripeid)
                   DO UPDATE SET last_event_at = GREATEST(c.last_event_at, EXCLUDED.last_event_at)
               RETURNING 1
           )
           SELECT EXISTS (SELECT 1 FROM account) AS "listed!",
                  EXISTS (SELECT 1 FROM marked) AS "marked!""#,
        tenant_id,
        stripeid.as_str(),
        created,
        received
    )
    .fetch_one(db)
    .await?;
    Ok(match (row.listed, row.marked) {
        (false, _) => Marked::UnknownAccount,
        (true, true) => Marked::Changed,
        (true, false) => Marked::Stale,
    })
}

/// A fetch that started at `started_at` stored the account's balance: every event
/// that arrived before it is covered. Call in the transaction that stores the
/// snapshot, so a claim never sees the snapshot without the mark gone, or the reverse.
pub async fn covered_by_fetch(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
    started_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"DELETE FROM changed_accounts
           WHERE tenant_id = $1 AND stripeid = $2 AND last_event_at <= $3"#,
        tenant_id,
        stripeid.as_str(),
        started_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A changed account claimed for one fetch.
#[derive(Debug, Clone)]
pub struct ClaimedChange {
    pub account: Claimed,
    /// When its first event not yet covered arrived (event-to-fetch latency).
    pub first_event_at: DateTime<Utc>,
}

struct ClaimedRow {
    stripeid: StripeAccountId,
    platform_id: Option<StripeAccountId>,
    first_event_at: DateTime<Utc>,
}

/// Leases up to `limit` changed accounts whose first event arrived at or before
/// `due`, oldest change first, as `refreshes::claim_due` leases due ones: rows another
/// claim is taking are skipped, and a held lease is never taken over.
pub async fn claim_changed(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    due: DateTime<Utc>,
    limit: i64,
    worker: Uuid,
    lease_secs: f64,
) -> Result<Vec<ClaimedChange>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ClaimedRow,
        r#"WITH picked AS (
               SELECT c.stripeid, c.first_event_at FROM changed_accounts c
               WHERE c.tenant_id = $1 AND c.first_event_at <= $2
                 AND NOT EXISTS (SELECT 1 FROM refresh_leases r
                                 WHERE r.tenant_id = c.tenant_id AND r.stripeid = c.stripeid
                                   AND r.expires_at > now())
               ORDER BY c.first_event_at
               LIMIT $3
               FOR UPDATE OF c SKIP LOCKED
           ),
           leased AS (
               INSERT INTO refresh_leases AS r (tenant_id, stripeid, worker_id, expires_at)
               SELECT $1, stripeid, $4, now() + make_interval(secs => $5) FROM picked
               ON CONFLICT (tenant_id, stripeid) DO UPDATE
                   SET worker_id = EXCLUDED.worker_id, expires_at = EXCLUDED.expires_at
                   WHERE r.expires_at <= now()
               RETURNING r.stripeid
           )
           SELECT leased.stripeid AS "stripeid!: StripeAccountId",
                  a.platform_id AS "platform_id: StripeAccountId",
                  picked.first_event_at AS "first_event_at!"
           FROM leased
           JOIN picked ON picked.stripeid = leased.stripeid
           JOIN stripe_accounts a ON a.tenant_id = $1 AND a.stripeid = leased.stripeid"#,
        tenant_id,
        due,
        limit,
        worker,
        lease_secs
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| ClaimedChange {
            account: Claimed {
                stripeid: row.stripeid,
                platform_id: row.platform_id,
            },
            first_event_at: row.first_event_at,
        })
        .collect())
}

/// The tenant's changed accounts: how many wait, and when the oldest change arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waiting {
    pub accounts: i64,
    pub oldest: Option<DateTime<Utc>>,
}

pub async fn waiting(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<Waiting, sqlx::Error> {
    sqlx::query_as!(
        Waiting,
        r#"SELECT count(*) AS "accounts!", min(first_event_at) AS oldest
           FROM changed_accounts WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(db)
    .await
}

/// Whether an account of the tenant changed before `cutoff` and was last fetched
/// before it too (so a live stream cannot vouch for it and its fetch is too old).
pub async fn any_changed_before(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM changed_accounts c
               JOIN latest_balances l ON l.tenant_id = c.tenant_id AND l.stripeid = c.stripeid
               WHERE c.tenant_id = $1 AND c.first_event_at < $2 AND l.fetched_at < $2) AS "any!""#,
        tenant_id,
        cutoff
    )
    .fetch_one(db)
    .await
}

/// The oldest confirmation among the changed accounts of the tenant (or of one
/// owner) while a live stream vouches from `since` to `until`: a changed account
/// fetched since then is confirmed up to its first event (or `until`), one fetched
/// before only by its fetch (`crate::freshness::confirm`).
pub async fn oldest_changed_confirmation(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    owner: Option<&OwnerId>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT min(CASE WHEN l.fetched_at >= $3
                           THEN GREATEST(l.fetched_at, LEAST(c.first_event_at, $4))
                           ELSE l.fetched_at END)
           FROM changed_accounts c
           JOIN latest_balances l ON l.tenant_id = c.tenant_id AND l.stripeid = c.stripeid
           JOIN stripe_accounts a ON a.tenant_id = c.tenant_id AND a.stripeid = c.stripeid
           WHERE c.tenant_id = $1 AND ($2::text IS NULL OR a.accountid = $2)"#,
        tenant_id,
        owner.map(OwnerId::as_str),
        since,
        until
    )
    .fetch_one(db)
    .await
}

/// When the first event about the account since its fetch arrived, if it waits for one.
pub async fn changed_at(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    stripeid: &StripeAccountId,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT first_event_at FROM changed_accounts WHERE tenant_id = $1 AND stripeid = $2"#,
        tenant_id,
        stripeid.as_str()
    )
    .fetch_optional(db)
    .await
}

// ---- the event stream ------------------------------------------------------------

/// An event for the tenant was stored at `at`. After a silence longer than
/// `max_silence_secs` (or the first event ever) the stream vouches only from now on:
/// what happened while it was silent may never have reached tally.
pub async fn heard(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    at: DateTime<Utc>,
    max_silence_secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO event_streams AS s (tenant_id, last_event_at, vouched_since)
           VALUES ($1, $2, $2)
           ON CONFLICT (tenant_id) DO UPDATE SET
               vouched_since = CASE
                   WHEN s.last_event_at IS NULL
                        OR s.last_event_at < $2 - make_interval(secs => $3)
                   THEN GREATEST(s.vouched_since, $2) ELSE s.vouched_since END,
               last_event_at = GREATEST(s.last_event_at, $2)"#,
        tenant_id,
        at,
        max_silence_secs
    )
    .execute(db)
    .await?;
    Ok(())
}

/// tally refused (or could not keep) an event of the tenant at `at`: whatever it said
/// is unknown, so the stream vouches only for accounts fetched after this.
pub async fn broken(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO event_streams AS s (tenant_id, last_event_at, vouched_since)
           VALUES ($1, NULL, $2)
           ON CONFLICT (tenant_id) DO UPDATE SET vouched_since = GREATEST(s.vouched_since, $2)"#,
        tenant_id,
        at
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn stream(db: impl PgExecutor<'_>, tenant_id: i64) -> Result<EventStream, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT last_event_at, vouched_since FROM event_streams WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row
        .map(|row| EventStream {
            last_event_at: row.last_event_at,
            vouched_since: Some(row.vouched_since),
        })
        .unwrap_or_default())
}

/// A tenant's freshness mode and event stream, in one read.
pub async fn mode_and_stream(
    db: impl PgExecutor<'_>,
    tenant_id: i64,
) -> Result<(FreshnessMode, EventStream), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT t.freshness AS "freshness: FreshnessMode", s.last_event_at,
                  s.vouched_since AS "vouched_since?"
           FROM tenants t LEFT JOIN event_streams s ON s.tenant_id = t.id
           WHERE t.id = $1"#,
        tenant_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row
        .map(|row| {
            (
                row.freshness,
                EventStream {
                    last_event_at: row.last_event_at,
                    vouched_since: row.vouched_since,
                },
            )
        })
        .unwrap_or_default())
}
