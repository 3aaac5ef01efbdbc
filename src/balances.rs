//! The balance use cases (DESIGN §3, §5), outside any HTTP handler: one account's
//! balance, the per-currency aggregate, and starting a refresh. Each decides
//! freshness with `refresh::freshen` and either answers from what is stored or hands
//! back the refresh to poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::domain::{Currency, OwnerId, RefreshTrigger, StripeAccountId};
use crate::fanout::{self, Aggregate, Failure, FanoutError};
use crate::freshness::{self, AccountState, Confirmation, FreshnessBy, Requirement};
use crate::refresh::demand::{Demand, Met};
use crate::refresh::{self, Freshness, PendingRefresh, RefreshScope, Refresher};
use crate::store;
use crate::store::refreshes::RefreshFailure;
use crate::store::snapshots::Snapshot;
use crate::store::tenants::Tenant;
use crate::tenants::StripeTenants;

/// What the balance use cases need.
#[derive(Clone)]
pub struct Balances {
    pub pool: PgPool,
    pub stripe: Arc<StripeTenants>,
    /// This process's refresher, woken when a demand is made here.
    pub refresher: Option<Refresher>,
    /// `refresh.interval_secs`: the age beyond which an account counts as stale.
    pub interval: Duration,
    /// `webhooks.max_silence_secs`, for the freshness rule.
    pub max_silence: Duration,
}

/// Answered now, or the refresh to poll.
#[derive(Debug)]
pub enum Answer<T> {
    Ready(T),
    Pending(Box<PendingRefresh>),
}

#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    #[error("no stored account has that stripeid")]
    UnknownAccount,
    #[error("no stored account has that owner")]
    UnknownOwner,
    #[error("no balance refresh has that id")]
    UnknownRefresh,
    /// A refresh's result asked for at an endpoint or scope that is not the refresh's.
    #[error("that refresh is of {refresh_scope}; its result is at {result}")]
    OtherScope {
        refresh_scope: String,
        result: String,
    },
    /// The account's latest try failed; Stripe's error, request id and a hint.
    #[error("Stripe did not return the balance")]
    Upstream(Box<Failure>),
    #[error("the tenant's Stripe credential cannot be used: {0}")]
    Credential(String),
    /// The tenant was removed (`tally tenant remove`): nothing is started for it.
    #[error("that tenant was removed (tally tenant remove); its data is kept but not served")]
    TenantRemoved,
    #[error(transparent)]
    Fanout(#[from] FanoutError),
}

impl From<sqlx::Error> for BalanceError {
    fn from(error: sqlx::Error) -> BalanceError {
        BalanceError::Fanout(FanoutError::Database(error))
    }
}

/// A freshness requirement, waiting at most `wait` for it.
#[derive(Debug, Clone, Copy)]
pub struct Fresh {
    pub since: Since,
    pub wait: Duration,
}

/// Which tries may answer.
#[derive(Debug, Clone, Copy)]
pub enum Since {
    /// Tried within this long of the moment the request arrived.
    MaxAge(Duration),
    /// Tried since the cutoff of this refresh, over its scope: a refresh's `result`.
    Refresh(Uuid),
}

impl Fresh {
    pub fn max_age(max_age: Duration, wait: Duration) -> Fresh {
        Fresh {
            since: Since::MaxAge(max_age),
            wait,
        }
    }
}

/// One account's latest snapshot that is a balance, and how current it is known to be.
#[derive(Debug, Clone)]
pub struct AccountBalance {
    pub stripeid: StripeAccountId,
    pub snapshot: Snapshot,
    pub balance: Value,
    pub confirmation: Confirmation,
}

impl Balances {
    /// Ready when the stored data of `scope` meets `fresh`, with what the look that
    /// found it so read; else the refresh to poll. A refresh's result is answered over
    /// the refresh's own scope, which the caller's must be.
    async fn freshen(
        &self,
        tenant: &Tenant,
        scope: RefreshScope,
        fresh: Fresh,
    ) -> Result<Answer<Met>, BalanceError> {
        // Said before anything is asked of Stripe or of the refreshers.
        self.stripe
            .client_for(tenant)
            .map_err(|error| BalanceError::Credential(error.to_string()))?;
        let cutoff = match fresh.since {
            Since::MaxAge(max_age) => refresh::cutoff(max_age),
            Since::Refresh(id) => {
                let refresh = store::refreshes::get(&self.pool, tenant.id, id)
                    .await?
                    .ok_or(BalanceError::UnknownRefresh)?;
                if refresh.scope != scope {
                    return Err(BalanceError::OtherScope {
                        refresh_scope: scope_words(&refresh.scope),
                        result: result_path(&refresh.scope, refresh.id),
                    });
                }
                if let Some(failure) = refresh.failure() {
                    return Err(failure.into());
                }
                refresh.cutoff
            }
        };
        let demand = Demand {
            tenant,
            scope,
            cutoff,
            wait: fresh.wait,
            trigger: RefreshTrigger::Poll,
            max_silence: self.max_silence,
        };
        let rate = self.stripe.rate_for(tenant);
        match refresh::freshen(&self.pool, self.refresher.as_ref(), rate, &demand).await? {
            Freshness::Met(met) => Ok(Answer::Ready(met)),
            Freshness::Pending(pending) => Ok(Answer::Pending(Box::new(pending))),
            Freshness::TenantRemoved => Err(BalanceError::TenantRemoved),
            Freshness::Failed(reason) => Err(BalanceError::Credential(reason)),
        }
    }

    /// The account's balance, as fresh as `fresh` asks.
    pub async fn account(
        &self,
        tenant: &Tenant,
        stripeid: &StripeAccountId,
        fresh: Fresh,
    ) -> Result<Answer<AccountBalance>, BalanceError> {
        store::accounts::get(&self.pool, tenant.id, stripeid)
            .await?
            .filter(|account| account.removed_at.is_none())
            .ok_or(BalanceError::UnknownAccount)?;
        let scope = RefreshScope::Account(stripeid.clone());
        if let Answer::Pending(pending) = self.freshen(tenant, scope, fresh).await? {
            return Ok(Answer::Pending(pending));
        }
        let (snapshot, good_at) =
            store::snapshots::latest_and_good_at(&self.pool, tenant.id, stripeid)
                .await?
                .ok_or(BalanceError::UnknownAccount)?;
        match (&snapshot.balance, &snapshot.error) {
            (Some(balance), _) => {
                let tenant_freshness =
                    refresh::demand::tenant_freshness(&self.pool, tenant.id, self.max_silence)
                        .await?;
                let changed_at =
                    store::changes::changed_at(&self.pool, tenant.id, stripeid).await?;
                let account = AccountState {
                    fetched_at: Some(snapshot.fetched_at),
                    changed_at,
                };
                let confirmation = freshness::confirm(&tenant_freshness, account, Utc::now())
                    .unwrap_or(Confirmation {
                        confirmed_at: snapshot.fetched_at,
                        by: FreshnessBy::Fetch,
                    });
                Ok(Answer::Ready(AccountBalance {
                    stripeid: stripeid.clone(),
                    balance: balance.clone(),
                    snapshot,
                    confirmation,
                }))
            }
            (None, error) => {
                // The failure says when it was tried and how old the last good balance
                // (the one the totals still hold) is.
                Err(BalanceError::Upstream(Box::new(Failure {
                    stripeid: stripeid.to_string(),
                    failure: error.clone().map(|e| e.0).unwrap_or_default(),
                    fetched_at: Some(snapshot.fetched_at),
                    last_good_at: good_at,
                })))
            }
        }
    }

    /// The per-currency aggregate of the tenant or one owner. Without `fresh` it
    /// answers at once from what is stored, saying how fresh that is.
    pub async fn aggregate(
        &self,
        tenant: &Tenant,
        owner: Option<&OwnerId>,
        currency: Option<&Currency>,
        fresh: Option<Fresh>,
    ) -> Result<Answer<Aggregate>, BalanceError> {
        let scope = self.aggregate_scope(tenant, owner, fresh).await?;
        let met = match fresh {
            Some(fresh) => match self.freshen(tenant, scope.clone(), fresh).await? {
                Answer::Ready(met) => Some(met),
                Answer::Pending(pending) => return Ok(Answer::Pending(pending)),
            },
            None => None,
        };
        let owner = scope.owner();
        // What the freshness look read is the answer's: the counts it judged, and one
        // read of the tenant's mode and stream for the stale count and the rest.
        let (tenant_freshness, counts) = match (met, owner) {
            (Some(met), _) => (met.tenant, met.counts),
            (None, None) => {
                let (tenant, counts) =
                    refresh::demand::tenant_state(&self.pool, tenant.id, self.max_silence).await?;
                (tenant, Some(counts))
            }
            (None, Some(_)) => (
                refresh::demand::tenant_freshness(&self.pool, tenant.id, self.max_silence).await?,
                None,
            ),
        };
        // Stale: not confirmed within the refresh interval (the refresher's backlog).
        let backlog = freshness::requirement(&tenant_freshness, Utc::now(), self.interval);
        let mut aggregate = fanout::aggregate::read(
            &self.pool,
            tenant.id,
            &tenant.slug,
            owner,
            currency,
            counts,
            &backlog,
        )
        .await?;
        let live = tenant_freshness.live_stream(Utc::now());
        aggregate.freshness_mode = tenant_freshness.mode;
        aggregate.stream_live = live.is_some();
        aggregate.oldest_confirmed_at = match (live, aggregate.oldest_fetched_at) {
            // The stream vouches up to its latest event for every account fetched
            // since it was whole and named since by no event, up to its first event
            // for one named since; the others stand on their fetch.
            (Some(vouch), Some(oldest)) if oldest < vouch.until => {
                let mut confirmed = vouch.until;
                if oldest < vouch.since {
                    confirmed = confirmed.min(oldest);
                }
                if let Some(changed) = store::changes::oldest_changed_confirmation(
                    &self.pool,
                    tenant.id,
                    owner,
                    vouch.since,
                    vouch.until,
                )
                .await?
                {
                    confirmed = confirmed.min(changed);
                }
                Some(confirmed)
            }
            (_, oldest) => oldest,
        };
        Ok(Answer::Ready(aggregate))
    }

    /// The aggregate's detail, one row per account and currency, under the same
    /// freshness rule.
    pub async fn aggregate_csv(
        &self,
        tenant: &Tenant,
        owner: Option<&OwnerId>,
        currency: Option<&Currency>,
        fresh: Option<Fresh>,
    ) -> Result<Answer<Vec<u8>>, BalanceError> {
        let scope = self.aggregate_scope(tenant, owner, fresh).await?;
        if let Some(fresh) = fresh {
            if let Answer::Pending(pending) = self.freshen(tenant, scope.clone(), fresh).await? {
                return Ok(Answer::Pending(pending));
            }
        }
        let owner = scope.owner();
        let tenant_freshness =
            refresh::demand::tenant_freshness(&self.pool, tenant.id, self.max_silence).await?;
        Ok(Answer::Ready(
            fanout::aggregate::csv(&self.pool, tenant.id, owner, currency, &tenant_freshness)
                .await?,
        ))
    }

    /// A person asks for a refresh: started (or joined) now, never waited on.
    pub async fn start_refresh(
        &self,
        tenant: &Tenant,
        scope: RefreshScope,
        max_age: Duration,
        by: &Actor,
    ) -> Result<PendingRefresh, BalanceError> {
        // A refresh nobody here can serve is refused now, as a poll would be.
        self.stripe
            .client_for(tenant)
            .map_err(|error| BalanceError::Credential(error.to_string()))?;
        match &scope {
            RefreshScope::Tenant => {}
            RefreshScope::Owner(owner) => {
                if store::accounts::count_for_owner(&self.pool, tenant.id, owner).await? == 0 {
                    return Err(BalanceError::UnknownOwner);
                }
            }
            RefreshScope::Account(stripeid) => {
                store::accounts::get(&self.pool, tenant.id, stripeid)
                    .await?
                    .filter(|account| account.removed_at.is_none())
                    .ok_or(BalanceError::UnknownAccount)?;
            }
        }
        let cutoff = refresh::cutoff(max_age);
        let total = store::refreshes::progress(
            &self.pool,
            tenant.id,
            &scope,
            &Requirement::fetched_since(cutoff),
        )
        .await?
        .listed;
        let (refresh, started) = store::refreshes::start_or_join(
            &self.pool,
            tenant.id,
            &scope,
            cutoff,
            RefreshTrigger::Person,
            total,
        )
        .await?
        .ok_or(BalanceError::TenantRemoved)?;
        let details = json!({
            "refreshId": refresh.id,
            "scope": scope_label(&scope),
            "maxAge": max_age.as_secs(),
            "joined": !started,
        });
        audit::record(&self.pool, by, "refresh.start", Some(&tenant.slug), details).await?;
        if let Some(refresher) = &self.refresher {
            refresher.wake();
        }
        Ok(PendingRefresh::of(
            &self.pool,
            refresh,
            self.stripe.rate_for(tenant),
            self.max_silence,
        )
        .await?)
    }

    /// A refresh with its live progress.
    pub async fn refresh_view(
        &self,
        tenant: &Tenant,
        refresh: refresh::Refresh,
    ) -> Result<PendingRefresh, BalanceError> {
        Ok(PendingRefresh::of(
            &self.pool,
            refresh,
            self.stripe.rate_for(tenant),
            self.max_silence,
        )
        .await?)
    }

    /// The aggregate's scope: the owner's, or the tenant's; a refresh's result without
    /// an owner is over the refresh's scope (the result link names only the refresh).
    async fn aggregate_scope(
        &self,
        tenant: &Tenant,
        owner: Option<&OwnerId>,
        fresh: Option<Fresh>,
    ) -> Result<RefreshScope, BalanceError> {
        if let (
            None,
            Some(Fresh {
                since: Since::Refresh(id),
                ..
            }),
        ) = (owner, fresh)
        {
            let refresh = store::refreshes::get(&self.pool, tenant.id, id)
                .await?
                .ok_or(BalanceError::UnknownRefresh)?;
            if let RefreshScope::Owner(_) = refresh.scope {
                return Ok(refresh.scope);
            }
        }
        match owner {
            None => Ok(RefreshScope::Tenant),
            Some(owner) => {
                if store::accounts::count_for_owner(&self.pool, tenant.id, owner).await? == 0 {
                    return Err(BalanceError::UnknownOwner);
                }
                Ok(RefreshScope::Owner(owner.to_owned()))
            }
        }
    }
}

/// Why a refresh failed, as the use cases say it.
impl From<RefreshFailure<'_>> for BalanceError {
    fn from(failure: RefreshFailure<'_>) -> BalanceError {
        match failure {
            RefreshFailure::TenantRemoved => BalanceError::TenantRemoved,
            RefreshFailure::Reason(reason) => BalanceError::Credential(reason.to_owned()),
        }
    }
}

/// Where a succeeded refresh's result is answered: the aggregate for a tenant's or an
/// owner's refresh, the account's balance for one account's.
pub fn result_path(scope: &RefreshScope, id: Uuid) -> String {
    match scope {
        RefreshScope::Account(stripeid) => format!(
            "/api/administrator/connect/stripe-account/balance?stripeid={stripeid}&refresh={id}"
        ),
        RefreshScope::Tenant | RefreshScope::Owner(_) => {
            format!("/api/administrator/connect/balances?refresh={id}")
        }
    }
}

/// A refresh's scope in words, for an error message.
fn scope_words(scope: &RefreshScope) -> String {
    match scope {
        RefreshScope::Tenant => "the whole tenant".to_owned(),
        RefreshScope::Owner(owner) => format!("owner {owner}"),
        RefreshScope::Account(stripeid) => format!("account {stripeid}"),
    }
}

/// A refresh's scope for the audit log.
fn scope_label(scope: &RefreshScope) -> Value {
    match scope {
        RefreshScope::Tenant => json!("tenant"),
        RefreshScope::Owner(owner) => json!({"accountid": owner}),
        RefreshScope::Account(stripeid) => json!({"stripeid": stripeid}),
    }
}
