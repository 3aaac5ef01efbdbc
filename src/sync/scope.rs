//! One scope of a sync: list (or retrieve) its accounts page by page, commit each
//! page with the run's heartbeat, then mark what the scope no longer returns.

use std::collections::HashSet;
use std::fmt;
use std::time::Instant;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{Progress, SyncError, SyncOptions};
use crate::domain::StripeAccountId;
use crate::store;
use crate::store::accounts::{AccountInput, Observed};
use crate::store::sync_runs::{RunCounts, SyncRun};
use crate::store::tenants::Tenant;
use crate::stripe::{StripeError, TenantClient};

/// A set of accounts Stripe returns together, and what a sync stores them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A platform tenant's connected accounts (listed with no account header).
    OwnAccounts,
    /// One platform's connected accounts, listed with `Stripe-Context: P`.
    Platform(StripeAccountId),
    /// Accounts directly in the organization, retrieved one by one.
    OrgAccounts(Vec<StripeAccountId>),
}

impl Scope {
    /// The platform stored with the scope's accounts; `None` for accounts directly in
    /// the org and for every account of a platform tenant.
    pub fn platform(&self) -> Option<&StripeAccountId> {
        match self {
            Scope::Platform(platform) => Some(platform),
            Scope::OwnAccounts | Scope::OrgAccounts(_) => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::OwnAccounts => f.write_str("listing the platform's connected accounts"),
            Scope::Platform(p) => write!(f, "listing platform {p}'s connected accounts"),
            Scope::OrgAccounts(ids) => write!(
                f,
                "retrieving the {} accounts directly in the organization",
                ids.len()
            ),
        }
    }
}

/// Pages fetched ahead of the one being written, so Stripe and Postgres work at once.
const PREFETCH_PAGES: usize = 2;
/// Org accounts requested at once; the tenant's rate limit paces them anyway.
const RETRIEVE_CONCURRENCY: usize = 8;
/// Accounts marked removed per transaction.
const REMOVE_BATCH: usize = 1000;

/// A run in progress.
pub(super) struct Sync<'a> {
    pub pool: &'a PgPool,
    pub client: &'a TenantClient,
    pub tenant: &'a Tenant,
    pub run: &'a SyncRun,
    pub options: &'a SyncOptions,
    pub progress: &'a dyn Progress,
    pub started: Instant,
    pub counts: RunCounts,
}

impl Sync<'_> {
    pub async fn sync_scope(&mut self, scope: &Scope) -> Result<(), SyncError> {
        let seen = match scope {
            Scope::OrgAccounts(ids) => self.retrieve_org_accounts(scope, ids).await?,
            Scope::OwnAccounts | Scope::Platform(_) => self.list_scope(scope).await?,
        };
        // Only reached when every page of the scope arrived: a partial listing says
        // nothing about what Stripe no longer returns.
        self.remove_unseen(scope, &seen).await
    }

    /// Pages through the scope's list, newest first. Fetching runs ahead of writing
    /// by a few pages; whichever side fails first stops the other. Each page goes with
    /// when its request was sent: a webhook event newer than that wins over it.
    async fn list_scope(&mut self, scope: &Scope) -> Result<HashSet<StripeAccountId>, SyncError> {
        let (pages, mut arrived) = mpsc::channel::<(Observed, Vec<Value>)>(PREFETCH_PAGES);
        let client = self.client;
        let limit = self.options.page_limit;
        let fetch = async move {
            let mut cursor: Option<String> = None;
            loop {
                let observed = Observed::Fetched(Utc::now());
                let page = client
                    .list_accounts_page(scope.platform(), cursor.as_deref(), limit)
                    .await
                    .map_err(|source| stripe_error(scope, source))?
                    .value;
                let more = page.has_more;
                cursor = page
                    .data
                    .last()
                    .and_then(|account| account.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if more && cursor.is_none() {
                    return Err(SyncError::EmptyPage {
                        scope: scope.to_string(),
                    });
                }
                // A closed channel means the writer failed; its error is the one reported.
                if pages.send((observed, page.data)).await.is_err() || !more {
                    return Ok(());
                }
            }
        };
        let this = &mut *self;
        let write = async move {
            let mut seen = HashSet::new();
            while let Some((observed, objects)) = arrived.recv().await {
                this.commit_page(scope, &objects, observed, &mut seen)
                    .await?;
            }
            Ok::<_, SyncError>(seen)
        };
        let (fetched, written) = tokio::join!(fetch, write);
        let seen = written?;
        fetched?;
        Ok(seen)
    }

    /// Retrieves the org's own accounts in batches of a page; one Stripe no longer
    /// lets the key reach is left out (and so marked removed).
    async fn retrieve_org_accounts(
        &mut self,
        scope: &Scope,
        ids: &[StripeAccountId],
    ) -> Result<HashSet<StripeAccountId>, SyncError> {
        let mut seen = HashSet::new();
        let client = self.client;
        for batch in ids.chunks(usize::from(self.options.page_limit.max(1))) {
            // The batch's requests go out from here on; the earliest is the safe stamp.
            let observed = Observed::Fetched(Utc::now());
            // Collected first: a closure over `&StripeAccountId` held across the await would need
            // a higher-ranked bound that `tokio::spawn` cannot prove.
            let requests: Vec<_> = batch
                .iter()
                .map(|id| retrieve_if_reachable(client, scope, id))
                .collect();
            let found: Vec<Option<Value>> = futures::stream::iter(requests)
                .buffered(RETRIEVE_CONCURRENCY)
                .try_collect()
                .await?;
            let objects: Vec<Value> = found.into_iter().flatten().collect();
            self.commit_page(scope, &objects, observed, &mut seen)
                .await?;
        }
        Ok(seen)
    }

    /// Upserts one page and beats the run's heartbeat in the same transaction, so the
    /// run's counts never claim more than is stored.
    async fn commit_page(
        &mut self,
        scope: &Scope,
        objects: &[Value],
        observed: Observed,
        seen: &mut HashSet<StripeAccountId>,
    ) -> Result<(), SyncError> {
        let inputs = objects
            .iter()
            .map(|object| {
                AccountInput::from_stripe_object(object, scope.platform(), &self.options.owner_key)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = store::begin(self.pool).await?;
        let outcome = store::accounts::upsert(&mut *tx, self.tenant.id, &inputs, observed).await?;
        let mut counts = self.counts;
        counts.pages += 1;
        counts.accounts_seen += inputs.len() as i64;
        counts.inserted += outcome.inserted as i64;
        counts.updated += outcome.updated as i64;
        counts.unchanged += outcome.unchanged as i64;
        self.beat(&mut tx, &counts).await?;
        tx.commit().await?;
        self.counts = counts;
        seen.extend(inputs.iter().map(|input| input.stripeid().to_owned()));
        self.progress
            .page_committed(&self.counts, self.started.elapsed());
        Ok(())
    }

    /// Marks the scope's stored accounts that the listing did not return, as observed
    /// when the run started. Accounts a webhook wrote after the run started are left
    /// alone: the listing may have passed their place before they existed.
    async fn remove_unseen(
        &mut self,
        scope: &Scope,
        seen: &HashSet<StripeAccountId>,
    ) -> Result<(), SyncError> {
        let started_at = self.run.started_at;
        let unseen: Vec<StripeAccountId> = store::accounts::listed_ids_in_scope(
            self.pool,
            self.tenant.id,
            scope.platform(),
            started_at,
        )
        .try_filter(|id| std::future::ready(!seen.contains(id)))
        .try_collect()
        .await?;
        for batch in unseen.chunks(REMOVE_BATCH) {
            let mut tx = store::begin(self.pool).await?;
            let removed = store::accounts::mark_removed(
                &mut *tx,
                self.tenant.id,
                batch,
                started_at,
                Some(started_at),
            )
            .await?;
            store::snapshots::forget_latest(&mut tx, self.tenant.id, &removed).await?;
            let mut counts = self.counts;
            counts.removed += removed.len() as i64;
            self.beat(&mut tx, &counts).await?;
            tx.commit().await?;
            self.counts = counts;
        }
        Ok(())
    }

    async fn beat(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        counts: &RunCounts,
    ) -> Result<(), SyncError> {
        if store::sync_runs::heartbeat(&mut **tx, self.run.id, counts).await? {
            Ok(())
        } else {
            Err(SyncError::Superseded)
        }
    }
}

/// The account, or `None` when Stripe says the key cannot reach it any more.
async fn retrieve_if_reachable(
    client: &TenantClient,
    scope: &Scope,
    id: &StripeAccountId,
) -> Result<Option<Value>, SyncError> {
    match client.retrieve_account(id, None).await {
        Ok(fetched) => Ok(Some(fetched.raw)),
        Err(error) if no_longer_reachable(&error) => {
            tracing::info!(account = %id, error = %error, "org account no longer reachable");
            Ok(None)
        }
        Err(source) => Err(stripe_error(scope, source)),
    }
}

/// Stripe's answers for an account that is gone or whose access was revoked. Any other
/// failure (a 404 for a wrong base URL, a 500) fails the sync instead of removing.
fn no_longer_reachable(error: &StripeError) -> bool {
    matches!(error.code(), Some("account_invalid" | "resource_missing"))
}

fn stripe_error(scope: &Scope, source: StripeError) -> SyncError {
    SyncError::Stripe {
        scope: scope.to_string(),
        source,
    }
}
