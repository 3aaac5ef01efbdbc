//! Live tenants: a stored tenant opened into a Stripe client. One `TenantClient` per
//! tenant per process, so sync, fan-out and API requests share one rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use sqlx::PgPool;
use url::Url;

use crate::config::StripeSettings;
use crate::crypto::{CryptoError, MasterKey};
use crate::refresh::budget::SharedBudget;
use crate::store::tenants::Tenant;
use crate::stripe::{
    ClientSettings, Credential, CredentialKind, RateSettings, StripeClient, StripeError,
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
    clients: Mutex<HashMap<i64, TenantClient>>,
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
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Paces every tenant by the Stripe budget shared through `pool` (DESIGN §5).
    pub fn with_shared_budget(mut self, pool: PgPool) -> StripeTenants {
        self.shared_budget = Some(pool);
        self
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The tenant's client, created on first use and shared afterwards.
    pub fn client_for(&self, tenant: &Tenant) -> Result<TenantClient, TenantClientError> {
        if let Some(client) = self.lock().get(&tenant.id) {
            return Ok(client.clone());
        }
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
        let credential = Credential::new(key, tenant.api_version.clone(), base_url)
            .map_err(|error| invalid(error.to_string()))?;
        let rate = RateSettings {
            per_second: self.rate_for(tenant),
            max_in_flight: self.defaults.max_in_flight,
        };
        let client = match &self.shared_budget {
            Some(pool) => self.stripe.tenant_with_budget(
                credential,
                rate.max_in_flight,
                Arc::new(SharedBudget::new(pool.clone(), tenant.id, rate.per_second)),
            ),
            None => self.stripe.tenant(credential, rate),
        };
        Ok(self.lock().entry(tenant.id).or_insert(client).clone())
    }

    /// Requests per second the tenant's credential may send.
    pub fn rate_for(&self, tenant: &Tenant) -> u32 {
        tenant
            .rate_limit
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(self.defaults.rate_limit)
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, TenantClient>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The tenant's credential kind as stored.
pub fn credential_kind(tenant: &Tenant) -> Option<CredentialKind> {
    tenant.credential_kind.parse().ok()
}
