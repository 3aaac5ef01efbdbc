//! The balance fan-out's parts (DESIGN §5): fetching one account's balance and
//! storing it as a snapshot (a balance or the error, with a hint), and reading the
//! per-currency aggregate back. Which accounts are fetched, when, and by which
//! process is the refresher's business (`crate::refresh`).

pub mod aggregate;
mod hint;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{FetchFailure, StripeAccountId};
use crate::freshness::Requirement;
use crate::money::Totals;
use crate::store;
use crate::store::snapshots::{Recorded, SnapshotOutcome};
use crate::store::tenants::Tenant;
use crate::stripe::{CredentialKind, StripeError, TenantClient};
use crate::tenants::TenantClientError;

pub use aggregate::{Aggregate, Failure};
pub use hint::hint;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Tenant(#[from] TenantClientError),
    #[error(transparent)]
    Snapshot(#[from] store::snapshots::SnapshotError),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// What one fetch stored.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub recorded: Recorded,
    /// A balance (true) or a failure (false).
    pub balance: bool,
    /// When Stripe read the balance, by Stripe's clock (its `Date`).
    pub stripe_at: Option<DateTime<Utc>>,
    /// Stripe answered 401: it rejects the tenant's key itself (rolled or revoked),
    /// so no other account will be read with it either.
    pub key_rejected: bool,
}

/// Fetches one account's balance and stores the snapshot, giving back the lease
/// `lease_holder` holds on it in the same transaction.
pub async fn fetch_and_record(
    pool: &PgPool,
    client: &TenantClient,
    tenant: &Tenant,
    stripeid: &StripeAccountId,
    platform: Option<&StripeAccountId>,
    lease_holder: Option<Uuid>,
) -> Result<Stored, FanoutError> {
    // Events that arrived before the request was queued are covered by its answer.
    let started = Utc::now();
    let fetched = client.retrieve_balance(stripeid, platform).await;
    let fetched_at = Utc::now();
    let stripe_at = fetched
        .as_ref()
        .ok()
        .and_then(|balance| balance.stripe_date);
    let key_rejected = fetched
        .as_ref()
        .is_err_and(|error| error.status() == Some(401));
    // Either the balance with its per-currency totals, or the failure to store.
    let result: Result<(Value, Totals), FetchFailure> = match fetched {
        Ok(balance) => match Totals::from_balance(&balance.value) {
            Ok(totals) => Ok((balance.raw, totals)),
            Err(overflow) => Err(FetchFailure::amount_overflow(
                overflow.to_string(),
                balance.request_id,
            )),
        },
        Err(error) => {
            let kind = tenant.credential_kind;
            // Debug, not warn: a failing account is normal, reported in the aggregate
            // and its snapshot; the retry loop already logged what was retried.
            tracing::debug!(tenant = %tenant.slug, %stripeid, status = ?error.status(), code = ?error.code(),
                           request_id = ?error.request_id(), "balance fetch failed");
            Err(failure_of(kind, stripeid, platform, &error))
        }
    };
    let outcome = match &result {
        Ok((raw, totals)) => SnapshotOutcome::Balance { raw, totals },
        Err(failure) => SnapshotOutcome::Error(failure),
    };
    let mut conn = pool.acquire().await?;
    let recorded = store::snapshots::record_releasing(
        &mut conn,
        tenant.id,
        stripeid,
        fetched_at,
        "fetch",
        outcome,
        lease_holder,
        Some(started),
    )
    .await?;
    if let (Recorded::Latest(id) | Recorded::HistoryOnly(id), Some(at)) = (recorded, stripe_at) {
        store::ledger::mark_answered_at(&mut *conn, id, at).await?;
    }
    Ok(Stored {
        recorded,
        balance: result.is_ok(),
        stripe_at,
        key_rejected,
    })
}

/// The tenant's kept state when every listed account meets `requirement` (`None`
/// otherwise): decided from the kept counts, the oldest latest snapshot and (when a
/// live stream vouches) the changed accounts, without scanning accounts. The state is
/// handed back so the answer is made from what was judged, not read again. `read`:
/// the state, when the caller just read it with the tenant's mode.
pub async fn tenant_fresh_state(
    pool: &PgPool,
    tenant_id: i64,
    requirement: &Requirement,
    read: Option<store::snapshots::TenantFreshness>,
) -> Result<Option<store::snapshots::TenantFreshness>, sqlx::Error> {
    let state = match read {
        Some(state) => state,
        None => store::snapshots::tenant_freshness(pool, tenant_id).await?,
    };
    let all_tried = state.ok + state.failed == state.listed;
    if !all_tried
        || state
            .oldest
            .is_some_and(|oldest| oldest < requirement.refetch_before())
    {
        return Ok(None);
    }
    // Vouched for, unless an event named it since a fetch older than the cutoff.
    let vouched = requirement.vouched_since.is_none()
        || !store::changes::any_changed_before(pool, tenant_id, requirement.fetched_since).await?;
    Ok(vouched.then_some(state))
}

/// The stored and reported form of a failed fetch: everything Stripe said, and a hint.
pub fn failure_of(
    kind: CredentialKind,
    stripeid: &StripeAccountId,
    platform: Option<&StripeAccountId>,
    error: &StripeError,
) -> FetchFailure {
    let (param, doc_url) = match error {
        StripeError::Api { error, .. } => (error.param.clone(), error.doc_url.clone()),
        _ => (None, None),
    };
    FetchFailure {
        status: error.status(),
        error_type: Some(error.error_type().to_owned()),
        code: error.code().map(str::to_owned),
        message: Some(error.message()),
        param,
        doc_url,
        request_id: error.request_id().map(str::to_owned),
        hint: Some(hint(kind, stripeid, platform, error)),
    }
}
