//! Live tenants: a stored tenant opened into a Stripe client. One `TenantClient` per
//! tenant per process, so sync, fan-out and API requests share one rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::config::StripeSettings;
use crate::crypto::{CryptoError, MasterKey};
use crate::shared_budget::SharedBudget;
use crate::store::tenants::Tenant;
use crate::stripe::{
    AdaptiveRate, ClientSettings, Credential, RateBudget, RateSettings, StripeClient, StripeError,
    TenantClient,
};

#[derive(Debug, thiserror::Error)]
pub enum TenantClientError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("tenant {slug}: {reason}")]
    Invalid { slug: String, reason: String },
}

/// The process's Stripe access for every tenant.
pub struct StripeTenants {
    stripe: StripeClient,
    master: Arc<MasterKey>,
    defaults: StripeSettings,
    /// When set, every tenant's requests are paced by the budget shared through this
    /// database with every other process; otherwise by a limiter of this process's own.
    shared_budget: Option<PgPool>,
    /// Where the shared budgets' 429 reports run; see [`StripeTenants::finish_reports`].
    reports: TaskTracker,
    clients: Mutex<HashMap<i64, Cached>>,
}

/// A tenant's client and the row it was built from.
struct Cached {
    /// The row's `version`: a newer row (a rotated key, changed settings) rebuilds it.
    version: i64,
    rate: u32,
    client: TenantClient,
}

impl StripeTenants {
    pub fn new(
        defaults: &StripeSettings,
        master: Arc<MasterKey>,
    ) -> Result<StripeTenants, StripeError> {
        let stripe = StripeClient::new(ClientSettings {
            connect_timeout: Duration::from_millis(defaults.connect_timeout_ms),
            request_timeout: Duration::from_millis(defaults.request_timeout_ms),
            max_attempts: defaults.max_attempts,
            ..ClientSettings::default()
        })?;
        Ok(StripeTenants {
            stripe,
            master,
            defaults: defaults.clone(),
            shared_budget: None,
            reports: TaskTracker::new(),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Paces every tenant by the Stripe budget shared through `pool` (DESIGN §5).
    pub fn with_shared_budget(mut self, pool: PgPool) -> StripeTenants {
        self.shared_budget = Some(pool);
        self
    }

    /// Waits, at most `within`, for 429 reports still being written to the shared
    /// budget, so a stopping process leaves the others slowed as Stripe asked.
    pub async fn finish_reports(&self, within: Duration) {
        self.reports.close();
        let _ = tokio::time::timeout(within, self.reports.wait()).await;
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The tenant's client, created on first use and shared afterwards; rebuilt when
    /// `tenant` is a newer version of the row than the client was built from (the key
    /// was rotated or a setting changed, by any process). The rebuilt client keeps the
    /// old one's in-flight cap and, unless the rate changed, its budget; either way it
    /// is paced by the same budget row in Postgres, so nothing outruns the tenant's
    /// rate while both finish their requests. Callers pass a row they just read, so a
    /// change reaches every process as fast as it rereads the row.
    pub fn client_for(&self, tenant: &Tenant) -> Result<TenantClient, TenantClientError> {
        let previous = {
            let clients = self.lock();
            match clients.get(&tenant.id) {
                Some(cached) if cached.version >= tenant.version => {
                    return Ok(cached.client.clone())
                }
                Some(cached) => Some((cached.rate, cached.client.clone())),
                None => None,
            }
        };
        let credential = self.credential(tenant)?;
        let rate = self.rate_for(tenant);
        let client = match previous {
            Some((old_rate, old)) if old_rate == rate => old.with_credential(credential, None),
            Some((_, old)) => old.with_credential(credential, Some(self.budget(tenant.id, rate))),
            None => self.stripe.tenant_with_budget(
                credential,
                self.defaults.max_in_flight,
                self.budget(tenant.id, rate),
            ),
        };
        let mut clients = self.lock();
        let cached = clients.entry(tenant.id).or_insert(Cached {
            version: tenant.version,
            rate,
            client: client.clone(),
        });
        // Two threads may rebuild at once; the newest row wins.
        if cached.version < tenant.version {
            *cached = Cached {
                version: tenant.version,
                rate,
                client,
            };
        }
        Ok(cached.client.clone())
    }

    /// A client for a key that is not stored yet (checking it before `tenant add` or
    /// `set-key`), paced on its own: it sends one request.
    pub fn unstored_client(&self, credential: Credential) -> TenantClient {
        self.stripe.tenant(
            credential,
            RateSettings {
                per_second: 1,
                max_in_flight: 1,
            },
        )
    }

    fn credential(&self, tenant: &Tenant) -> Result<Credential, TenantClientError> {
        let invalid = |reason: String| TenantClientError::Invalid {
            slug: tenant.slug.clone(),
            reason,
        };
        let key = self.master.open(&tenant.slug, &tenant.key_ciphertext)?;
        let base = tenant
            .api_base
            .as_deref()
            .unwrap_or(&self.defaults.api_base);
        let base_url =
            Url::parse(base).map_err(|_| invalid(format!("api base {base:?} is not a URL")))?;
        Credential::new(key, tenant.api_version.clone(), base_url)
            .map_err(|error| invalid(error.to_string()))
    }

    /// The tenant's pace: shared through Postgres with every process, or this process's own.
    fn budget(&self, tenant_id: i64, rate: u32) -> Arc<dyn RateBudget> {
        match &self.shared_budget {
            Some(pool) => Arc::new(
                SharedBudget::new(
                    pool.clone(),
                    tenant_id,
                    rate,
                    self.defaults.endpoint_rate_limit,
                )
                .reporting_on(self.reports.clone()),
            ),
            None => Arc::new(AdaptiveRate::new(rate)),
        }
    }

    /// Requests per second the tenant's credential may send.
    pub fn rate_for(&self, tenant: &Tenant) -> u32 {
        tenant
            .rate_limit
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(self.defaults.rate_limit)
    }

    /// Stripe's per-endpoint limit (`stripe.endpoint_rate_limit`): one endpoint of one
    /// tenant never goes faster, whatever the tenant's rate.
    pub fn endpoint_rate(&self) -> u32 {
        self.defaults.endpoint_rate_limit
    }

    /// In-flight cap per tenant client in this process.
    pub fn max_in_flight(&self) -> usize {
        self.defaults.max_in_flight
    }

    /// The tenant's webhook endpoint secret, if one was configured.
    pub fn webhook_secret(&self, tenant: &Tenant) -> Result<Option<SecretString>, CryptoError> {
        tenant
            .webhook_secret_ciphertext
            .as_deref()
            .map(|sealed| self.master.open(&tenant.slug, sealed))
            .transpose()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Cached>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
