//! The balance fan-out (DESIGN §5): fetch the balances of a tenant's accounts (or one
//! owner's) that are older than `max_age`, concurrently within the tenant's rate
//! limit and in-flight cap, store each result as a snapshot (a balance or the error),
//! and read per-currency totals back. A failing account is a failure entry, never an
//! error of the whole run; identical concurrent requests share one fan-out.

pub mod aggregate;
mod hint;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::money::Totals;
use crate::store;
use crate::store::snapshots::{Recorded, SnapshotOutcome};
use crate::store::tenants::Tenant;
use crate::stripe::{CredentialKind, StripeError, TenantClient};
use crate::tenants::{StripeTenants, TenantClientError};

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
    #[error("the fan-out task stopped unexpectedly")]
    Aborted,
}

/// Told about each account as the fan-out goes (the CLI draws a bar with it).
pub trait Progress: Send + Sync {
    fn started(&self, _accounts: u64) {}
    fn account_done(&self, _ok: bool) {}
}

/// No progress reporting.
pub struct Silent;
impl Progress for Silent {}

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshSummary {
    pub fetched: u64,
    pub failed: u64,
}

type SharedRefresh = Shared<BoxFuture<'static, Result<RefreshSummary, Arc<FanoutError>>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefreshKey {
    tenant_id: i64,
    owner: Option<String>,
    max_age_secs: u64,
}

/// The fan-out engine, one per process.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    stripe: Arc<StripeTenants>,
    /// How many accounts one fan-out works on at once; the tenant client's own
    /// in-flight cap and rate limit still bound what reaches Stripe.
    concurrency: usize,
    running: Mutex<HashMap<RefreshKey, SharedRefresh>>,
}

impl Fanout {
    pub fn new(pool: PgPool, stripe: Arc<StripeTenants>, concurrency: usize) -> Fanout {
        Fanout {
            inner: Arc::new(Inner {
                pool,
                stripe,
                // Twice the in-flight cap: while up to `concurrency` requests wait on
                // Stripe (the tenant client's own cap), others store their snapshots,
                // so the database write never idles a request slot.
                concurrency: concurrency.max(1) * 2,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Brings every listed account of the scope to a snapshot no older than `max_age`.
    /// Concurrent identical calls share one run; the run continues even if every
    /// caller goes away, so its work is never wasted.
    pub async fn refresh(
        &self,
        tenant: &Tenant,
        owner: Option<&str>,
        max_age: Duration,
        progress: Arc<dyn Progress>,
    ) -> Result<RefreshSummary, Arc<FanoutError>> {
        let key = RefreshKey {
            tenant_id: tenant.id,
            owner: owner.map(str::to_owned),
            max_age_secs: max_age.as_secs(),
        };
        let shared = {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&key) {
                Some(existing) => existing.clone(),
                None => {
                    let task = tokio::spawn({
                        let inner = self.inner.clone();
                        let tenant = tenant.clone();
                        let key = key.clone();
                        async move {
                            let result = inner
                                .run(&tenant, key.owner.as_deref(), max_age, progress)
                                .await;
                            inner
                                .running
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&key);
                            result.map_err(Arc::new)
                        }
                    });
                    let shared = async move {
                        task.await
                            .unwrap_or_else(|_| Err(Arc::new(FanoutError::Aborted)))
                    }
                    .boxed()
                    .shared();
                    running.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// Fetches one account's balance now and stores the snapshot.
    pub async fn fetch_one(
        &self,
        tenant: &Tenant,
        stripeid: &str,
        platform: Option<&str>,
    ) -> Result<Recorded, FanoutError> {
        let client = self.inner.stripe.client_for(tenant)?;
        let (recorded, _) = self
            .inner
            .fetch_and_record(&client, tenant, stripeid, platform)
            .await?;
        Ok(recorded)
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

impl Inner {
    async fn run(
        &self,
        tenant: &Tenant,
        owner: Option<&str>,
        max_age: Duration,
        progress: Arc<dyn Progress>,
    ) -> Result<RefreshSummary, FanoutError> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        if owner.is_none() && tenant_is_fresh(&self.pool, tenant.id, cutoff).await? {
            progress.started(0);
            return Ok(RefreshSummary::default());
        }
        let stale = store::snapshots::stale_accounts(&self.pool, tenant.id, owner, cutoff).await?;
        progress.started(stale.len() as u64);
        if stale.is_empty() {
            return Ok(RefreshSummary::default());
        }
        let client = self.stripe.client_for(tenant)?;
        let mut results = futures::stream::iter(stale)
            .map(|(stripeid, platform)| {
                let client = client.clone();
                async move {
                    self.fetch_and_record(&client, tenant, &stripeid, platform.as_deref())
                        .await
                }
            })
            .buffer_unordered(self.concurrency);
        let mut summary = RefreshSummary::default();
        while let Some(result) = results.next().await {
            // A snapshot that cannot be stored fails that account in this run, never
            // the run: the other accounts still count.
            let ok = match result {
                Ok((_, ok)) => ok,
                Err(error) => {
                    tracing::error!(tenant = %tenant.slug, error = %error, "storing a balance snapshot failed");
                    false
                }
            };
            summary.fetched += 1;
            if !ok {
                summary.failed += 1;
            }
            progress.account_done(ok);
        }
        tracing::info!(tenant = %tenant.slug, fetched = summary.fetched, failed = summary.failed, "balances refreshed");
        Ok(summary)
    }

    async fn fetch_and_record(
        &self,
        client: &TenantClient,
        tenant: &Tenant,
        stripeid: &str,
        platform: Option<&str>,
    ) -> Result<(Recorded, bool), FanoutError> {
        let fetched = client.retrieve_balance(stripeid, platform).await;
        let fetched_at = Utc::now();
        // Either the balance with its per-currency totals, or the failure to store.
        let result: Result<(Value, Totals), Value> = match fetched {
            Ok(balance) => match Totals::from_balance(&balance.value) {
                Ok(totals) => Ok((balance.raw, totals)),
                Err(overflow) => Err(json!({
                    "status": null, "type": "tally_error", "code": "amount-overflow",
                    "message": overflow.to_string(), "requestId": balance.request_id,
                    "hint": "This balance cannot be summed in 64-bit minor units; report it.",
                })),
            },
            Err(error) => {
                let kind =
                    crate::tenants::credential_kind(tenant).unwrap_or(CredentialKind::Platform);
                tracing::warn!(tenant = %tenant.slug, stripeid, status = ?error.status(), code = ?error.code(),
                               request_id = ?error.request_id(), "balance fetch failed");
                Err(failure_json(kind, stripeid, platform, &error))
            }
        };
        let outcome = match &result {
            Ok((raw, totals)) => SnapshotOutcome::Balance { raw, totals },
            Err(failure) => SnapshotOutcome::Error(failure),
        };
        let mut conn = self.pool.acquire().await?;
        let recorded =
            store::snapshots::record(&mut conn, tenant.id, stripeid, fetched_at, "fetch", outcome)
                .await?;
        Ok((recorded, result.is_ok()))
    }
}

/// True when every listed account of the tenant has a snapshot younger than
/// `cutoff`: decided from the kept counts and the oldest latest snapshot, without
/// scanning accounts. Lets a cached aggregate skip the fan-out machinery entirely.
pub async fn tenant_is_fresh(
    pool: &PgPool,
    tenant_id: i64,
    cutoff: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let state = store::snapshots::tenant_freshness(pool, tenant_id).await?;
    Ok(state.ok + state.failed == state.listed
        && state.oldest.is_none_or(|oldest| oldest >= cutoff))
}

/// The stored and reported form of a failed fetch: everything Stripe said, and a hint.
pub fn failure_json(
    kind: CredentialKind,
    stripeid: &str,
    platform: Option<&str>,
    error: &StripeError,
) -> Value {
    let (param, doc_url) = match error {
        StripeError::Api { error, .. } => (error.param.clone(), error.doc_url.clone()),
        _ => (None, None),
    };
    json!({
        "status": error.status(),
        "type": error.error_type(),
        "code": error.code(),
        "message": error.message(),
        "param": param,
        "docUrl": doc_url,
        "requestId": error.request_id(),
        "hint": hint(kind, stripeid, platform, error),
    })
}
