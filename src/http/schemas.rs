//! Schemas of the response bodies that handlers build as JSON values (balances,
//! refreshes, history, health, webhooks, token lists), for the OpenAPI document. The
//! OpenAPI test checks real responses against them, so they cannot drift unseen.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::openapi::schema::Schema;
use utoipa::ToSchema;
use uuid::Uuid;

use super::openapi::{kind, one_of_strings};

fn balance_refresh_kind() -> Schema {
    kind("balanceRefresh")
}
fn balance_snapshot_kind() -> Schema {
    kind("balanceSnapshot")
}
fn balance_kind() -> Schema {
    kind("balance")
}
fn list_kind() -> Schema {
    kind("list")
}
fn webhook_receipt_kind() -> Schema {
    kind("webhookReceipt")
}
fn refresh_status() -> Schema {
    one_of_strings(&["running", "succeeded", "failed", "interrupted"])
}
fn refresh_trigger() -> Schema {
    one_of_strings(&["poll", "person", "schedule", "cli"])
}
fn snapshot_source() -> Schema {
    one_of_strings(&["fetch", "webhook"])
}
fn webhook_outcome() -> Schema {
    one_of_strings(&["applied", "duplicate", "stale", "ignored"])
}
fn ok() -> Schema {
    kind("ok")
}

/// One account's balance: Stripe's balance object as Stripe returned it (unknown
/// fields kept), with `stripeid`, `fetchedAt` and `source` added.
#[derive(ToSchema)]
#[schema(as = AccountBalance)]
#[serde(rename_all = "camelCase")]
pub struct AccountBalance {
    #[schema(schema_with = balance_kind)]
    object: String,
    livemode: bool,
    available: Vec<BalanceAmount>,
    pending: Vec<BalanceAmount>,
    /// Stripe's own name, as Stripe sends it.
    #[schema(nullable = false)]
    #[serde(rename = "connect_reserved")]
    connect_reserved: Option<Vec<BalanceAmount>>,
    /// Stripe's own name, as Stripe sends it.
    #[schema(nullable = false)]
    #[serde(rename = "instant_available")]
    instant_available: Option<Vec<BalanceAmount>>,
    /// The account.
    stripeid: String,
    /// When the balance was read from Stripe (or arrived by webhook).
    #[schema(format = DateTime)]
    fetched_at: String,
    /// `fetch` (tally asked Stripe) or `webhook` (a `balance.available` event).
    #[schema(schema_with = snapshot_source)]
    source: String,
    /// Up to when this balance is known to be the account's: `fetchedAt`, or, for a
    /// tenant in `events` mode whose live event stream named no change since the
    /// fetch, the stream's latest event.
    #[schema(format = DateTime)]
    confirmed_at: String,
    /// How `confirmedAt` is known: `fetch` or `events`.
    freshness_by: crate::freshness::FreshnessBy,
}

/// One entry of a Stripe balance: an amount in the currency's minor unit.
#[derive(ToSchema)]

pub struct BalanceAmount {
    /// In the currency's minor unit (cents; yen); may be negative.
    amount: i64,
    /// A lowercase ISO currency code.
    currency: String,
}

/// The scope of a refresh: a whole tenant (both null), one owner or one account.
#[derive(ToSchema)]
pub struct RefreshScope {
    accountid: Option<String>,
    stripeid: Option<String>,
}

/// A balance refresh: what the refresher does to meet a `max_age`.
#[derive(ToSchema)]
#[schema(as = BalanceRefresh)]
#[serde(rename_all = "camelCase")]
pub struct BalanceRefresh {
    id: Uuid,
    #[schema(schema_with = balance_refresh_kind)]
    object: String,
    /// The tenant's slug.
    appid: String,
    scope: RefreshScope,
    /// `succeeded`: every account of its scope was tried since `cutoff`; `result`
    /// answers with what it tried. `failed`: it can no longer finish (the tenant was
    /// removed, or Stripe rejected its key, or no replica can open the key; `error` says
    /// why): stop polling. `interrupted`: every worker stopped before it finished;
    /// `result` then starts a refresh with the same cutoff.
    #[schema(schema_with = refresh_status)]
    status: String,
    /// What started it: a poll with `max_age`, a person's `POST`, the background
    /// schedule, or `tally balances`.
    #[schema(schema_with = refresh_trigger)]
    trigger: String,
    /// Accounts in its scope.
    total: i64,
    /// Accounts tried so far (failed ones included).
    done: i64,
    failed: i64,
    /// Accounts not tried since this moment are due.
    #[schema(format = DateTime)]
    cutoff: String,
    #[schema(format = DateTime)]
    started_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// While running: when it should be done, at the tenant's rate.
    #[schema(format = DateTime)]
    estimated_completion_at: Option<String>,
    error: Option<String>,
    /// Once `succeeded`: where its result is answered, 200 with every account of its
    /// scope tried since its `cutoff` (`/api/administrator/connect/balances?refresh={id}`,
    /// or for one account's refresh `…/stripe-account/balance?stripeid=…&refresh={id}`)
    /// for as long as the refresh is listed. A poll of a succeeded refresh also names it in
    /// `Location`. Asking `max_age` again instead moves the cutoff, and a refresh that takes
    /// longer than `max_age` would never meet it.
    result: Option<String>,
}

/// A page of refreshes, newest first.
#[derive(ToSchema)]
pub struct BalanceRefreshList {
    #[schema(schema_with = list_kind)]
    object: String,
    url: String,
    /// More refreshes follow: ask again with `starting_after` the last id.
    has_more: bool,
    data: Vec<BalanceRefresh>,
}

/// One stored try to read an account's balance: the balance, or the error.
#[derive(ToSchema)]
#[schema(as = BalanceSnapshot)]
#[serde(rename_all = "camelCase")]
pub struct BalanceSnapshot {
    #[schema(schema_with = balance_snapshot_kind)]
    object: String,
    id: i64,
    stripeid: String,
    #[schema(format = DateTime)]
    fetched_at: String,
    #[schema(schema_with = snapshot_source)]
    source: String,
    /// Stripe's balance object as returned (null when the try failed).
    #[schema(value_type = Option<Object>)]
    balance: Option<Value>,
    /// What Stripe answered (null when the try succeeded).
    error: Option<crate::domain::FetchFailure>,
}

/// `/healthz`
#[derive(ToSchema)]
pub struct Health {
    #[schema(schema_with = ok)]
    status: String,
}

/// `/readyz`
#[derive(ToSchema)]
pub struct Readiness {
    #[schema(schema_with = ok)]
    status: String,
    #[schema(schema_with = ok)]
    database: String,
}

/// What was done with a webhook event.
#[derive(ToSchema)]
pub struct WebhookReceipt {
    #[schema(schema_with = webhook_receipt_kind)]
    object: String,
    /// The event's id.
    event: String,
    /// The event's type.
    #[schema(rename = "type")]
    event_type: String,
    /// `applied` (stored, or the account marked changed); `duplicate` (this event id was
    /// seen before); `stale` (older than what is stored or fetched; recorded, not
    /// applied); `ignored` (about no account the tenant lists).
    #[schema(schema_with = webhook_outcome)]
    outcome: String,
}

/// A Stripe event, as Stripe sends it (the raw body is what the signature covers).
#[derive(ToSchema)]

pub struct StripeEvent {
    /// `evt_…`
    id: String,
    /// `event`
    object: String,
    /// `account.updated`, `account.application.deauthorized`, `balance.available`, …
    #[schema(rename = "type")]
    event_type: String,
    /// The connected account the event is about.
    account: Option<String>,
    created: i64,
    #[schema(value_type = Object)]
    data: Value,
}

fn audit_event_kind() -> Schema {
    kind("auditEvent")
}

/// One recorded change.
#[derive(ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditEvent {
    id: i64,
    #[schema(schema_with = audit_event_kind)]
    object: String,
    #[schema(format = DateTime)]
    at: String,
    /// `{"type": "token", "tokenId", "name"}` or `{"type": "cli", "user"}`.
    actor: Value,
    /// What was done (`tenant.add`, `token.revoke`, …).
    action: String,
    /// The tenant's slug, when the change was about one.
    tenant: Option<String>,
    /// What changed (never a secret).
    details: Value,
}

/// A page of audit events, newest first.
#[derive(ToSchema)]
pub struct AuditEventList {
    #[schema(schema_with = list_kind)]
    object: String,
    url: String,
    has_more: bool,
    data: Vec<AuditEvent>,
}

fn totals_interval() -> Schema {
    one_of_strings(&["hour", "day"])
}

/// Totals over time, newest bucket first.
#[derive(ToSchema)]
pub struct TotalsList {
    #[schema(schema_with = list_kind)]
    object: String,
    #[schema(schema_with = totals_interval)]
    interval: String,
    data: Vec<TotalsAt>,
}

/// The totals as of one bucket end.
#[derive(ToSchema)]
pub struct TotalsAt {
    #[schema(format = DateTime)]
    at: String,
    /// Listed accounts whose balance is in the totals.
    accounts: i64,
    /// Listed accounts with no balance read yet (they add nothing).
    missing: i64,
    totals: Vec<crate::totals::TotalsAtRow>,
}
