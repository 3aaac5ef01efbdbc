//! `tally tenant webhooks`: registers the tenant's Connect webhook endpoint at Stripe
//! (one for a platform key, one per platform for an organization key) and stores each
//! signing secret sealed, so `/webhooks/stripe/{tenant}` accepts the events signed with
//! it; `--remove` deletes them at Stripe and in tally. Stripe shows a secret only in the
//! answer that creates its endpoint, so an endpoint at the URL whose secret tally does
//! not hold is replaced, never adopted.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::audit::{self, Actor};
use crate::commands::tenant::{self, TenantError};
use crate::domain::StripeAccountId;
use crate::freshness::FreshnessMode;
use crate::store;
use crate::store::tenants::Tenant;
use crate::store::webhook_endpoints::WebhookEndpoint as Stored;
use crate::stripe::{
    CredentialKind, NewWebhookEndpoint, StripeError, TenantClient, WebhookEndpoint,
};
use crate::tenants::{StripeTenants, TenantClientError};

/// Every event type: tally marks an account changed for any event about it.
pub const ALL_EVENTS: &str = "*";
/// How tally's endpoints are labelled in the Stripe Dashboard.
const DESCRIPTION: &str = "tally";
/// Stripe allows 16 endpoints per account in test mode; this bounds a runaway list.
const MAX_LIST_PAGES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("--url '{0}' is not an absolute http(s) URL")]
    InvalidUrl(String),
    #[error("--url '{url}' does not end in /webhooks/stripe/{slug}: Stripe delivers the events there, and only that path checks them with tenant '{slug}''s secrets")]
    NotTheTenantsPath { url: String, slug: String },
    #[error("--events '{0}' is not an event type (like account.updated, or * for every type)")]
    InvalidEvent(String),
    #[error("tenant '{0}' has an organization key but lists no platforms, so there is no platform to receive Connect events for: add them first (tally tenant update {0} --platform acct_…)")]
    NoPlatforms(String),
    #[error(transparent)]
    Client(#[from] TenantClientError),
    /// Stripe's own message and request id; what was done before it is kept and audited.
    #[error("{doing}: {error}")]
    Stripe { doing: String, error: StripeError },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What happened to one platform's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    /// The organization's platform; `None` for a platform key's own endpoint.
    pub platform: Option<String>,
    pub endpoint_id: String,
    pub outcome: Outcome,
    /// Endpoints deleted at Stripe on the way (none for `Found` unless there was debris).
    pub deleted: Vec<Replaced>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// tally already held this endpoint, at this URL, and Stripe still has it.
    Found,
    /// Registered now, its secret stored sealed.
    Created,
    /// Deleted at Stripe (or already gone there) and forgotten by tally.
    Removed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Found => "found",
            Outcome::Created => "created",
            Outcome::Removed => "removed",
        }
    }
}

/// An endpoint deleted at Stripe, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub endpoint_id: String,
    pub reason: ReplaceReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceReason {
    /// At the URL, but tally does not hold its secret (Stripe shows it only on creation).
    SecretUnknown,
    /// tally's previous endpoint, registered for another URL.
    Moved { from: String },
}

/// What `tally tenant webhooks` did.
#[derive(Debug, Clone)]
pub struct Registration {
    pub slug: String,
    /// `None` for `--remove`.
    pub url: Option<String>,
    pub events: Vec<String>,
    pub endpoints: Vec<EndpointReport>,
    pub freshness: FreshnessMode,
    /// For `--remove`: whether events can still be received (a hand-set secret remains).
    pub hand_set_secret: bool,
}

/// Registers the tenant's Connect endpoint at `url` for `events` (empty: every type).
/// Safe to run again: what is already registered is found and left alone.
pub async fn register(
    pool: &PgPool,
    stripe: &StripeTenants,
    slug: &str,
    url: &str,
    events: &[String],
    actor: &Actor,
) -> Result<Registration, WebhookError> {
    let tenant = tenant::enabled_tenant(pool, slug).await?;
    let url = tenant_url(&tenant.slug, url)?;
    let events = event_types(events)?;
    let platforms = platforms(&tenant)?;
    let mut stored = stored_by_platform(pool, tenant.id).await?;
    let mut run = Run::new(pool, stripe, &tenant)?;
    let result = async {
        for platform_id in &platforms {
            let held = stored.remove(platform_id);
            run.register(platform_id, &url, &events, held.as_ref())
                .await?;
        }
        // What is left belongs to platforms the tenant no longer lists: no events of
        // theirs should arrive that tally no longer reads.
        for row in stored.values() {
            run.remove(row).await?;
        }
        Ok::<_, WebhookError>(())
    }
    .await;
    let details = json!({"url": url, "events": events, "endpoints": run.audit_details()});
    let done = run.audit(actor, details).await?;
    result?;
    Ok(Registration {
        url: Some(url),
        events,
        ..Registration::of(tenant, done)
    })
}

/// `--remove`: deletes every endpoint tally registered for the tenant, at Stripe and in
/// tally. Works for a removed tenant too, so its endpoints can go before a purge.
pub async fn remove(
    pool: &PgPool,
    stripe: &StripeTenants,
    slug: &str,
    actor: &Actor,
) -> Result<Registration, WebhookError> {
    let tenant = store::tenants::find_by_slug(pool, slug)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(slug.to_owned()))?;
    let registered = store::webhook_endpoints::list(pool, tenant.id).await?;
    let mut run = Run::new(pool, stripe, &tenant)?;
    let result = async {
        for row in &registered {
            run.remove(row).await?;
        }
        Ok::<_, WebhookError>(())
    }
    .await;
    let details = json!({"removed": true, "endpoints": run.audit_details()});
    let done = run.audit(actor, details).await?;
    result?;
    Ok(Registration::of(tenant, done))
}

impl Registration {
    fn of(tenant: Tenant, endpoints: Vec<EndpointReport>) -> Registration {
        Registration {
            hand_set_secret: tenant.webhook_secret_ciphertext.is_some(),
            freshness: tenant.freshness,
            slug: tenant.slug,
            url: None,
            events: vec![],
            endpoints,
        }
    }
}

/// `url`, if it is an absolute http(s) URL whose path is this tenant's webhook path.
fn tenant_url(slug: &str, url: &str) -> Result<String, WebhookError> {
    let url = url.trim();
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| WebhookError::InvalidUrl(url.to_owned()))?;
    let path = parsed.path().trim_end_matches('/');
    if !path.ends_with(&format!("/webhooks/stripe/{slug}")) {
        return Err(WebhookError::NotTheTenantsPath {
            url: url.to_owned(),
            slug: slug.to_owned(),
        });
    }
    Ok(url.to_owned())
}

/// `*`, or dotted lowercase names (`account.updated`); none given means every type.
fn event_types(events: &[String]) -> Result<Vec<String>, WebhookError> {
    if events.is_empty() {
        return Ok(vec![ALL_EVENTS.to_owned()]);
    }
    let mut types = Vec::new();
    for event in events.iter().flat_map(|e| e.split(',')).map(str::trim) {
        let dotted = event.split('.').count() >= 2
            && event.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if event != ALL_EVENTS && !dotted {
            return Err(WebhookError::InvalidEvent(event.to_owned()));
        }
        if !types.iter().any(|t| t == event) {
            types.push(event.to_owned());
        }
    }
    Ok(types)
}

/// The platforms to register for: the key's own (`''`), or each of the organization's.
fn platforms(tenant: &Tenant) -> Result<Vec<String>, WebhookError> {
    match tenant.credential_kind {
        CredentialKind::Platform => Ok(vec![String::new()]),
        CredentialKind::Organization if tenant.platform_ids.is_empty() => {
            Err(WebhookError::NoPlatforms(tenant.slug.clone()))
        }
        CredentialKind::Organization => Ok(tenant
            .platform_ids
            .iter()
            .map(ToString::to_string)
            .collect()),
    }
}

async fn stored_by_platform(
    pool: &PgPool,
    tenant_id: i64,
) -> Result<BTreeMap<String, Stored>, sqlx::Error> {
    Ok(store::webhook_endpoints::list(pool, tenant_id)
        .await?
        .into_iter()
        .map(|row| (row.platform_id.clone(), row))
        .collect())
}

/// `Stripe-Context` for a stored platform id ('' is the platform key's own account).
/// The platform a stored endpoint belongs to; `None` for the key's own (stored as `''`).
fn context(platform_id: &str) -> Option<StripeAccountId> {
    StripeAccountId::parse(platform_id)
}

fn stripe_error(doing: String) -> impl FnOnce(StripeError) -> WebhookError {
    move |error| WebhookError::Stripe { doing, error }
}

fn for_platform(platform_id: &str) -> String {
    match context(platform_id) {
        Some(p) => format!(" for platform {p}"),
        None => String::new(),
    }
}

/// One run against one tenant's endpoints: what it acts with, and what it did so far
/// (recorded in the audit log even when a later step fails).
struct Run<'a> {
    pool: &'a PgPool,
    stripe: &'a StripeTenants,
    tenant: &'a Tenant,
    client: TenantClient,
    done: Vec<EndpointReport>,
}

impl<'a> Run<'a> {
    fn new(
        pool: &'a PgPool,
        stripe: &'a StripeTenants,
        tenant: &'a Tenant,
    ) -> Result<Run<'a>, WebhookError> {
        Ok(Run {
            pool,
            stripe,
            tenant,
            client: stripe.client_for(tenant)?,
            done: Vec::new(),
        })
    }

    /// Makes sure the platform has tally's endpoint at `url`: found when tally holds it
    /// and Stripe still has it, created otherwise. `held` is what tally stored for it.
    async fn register(
        &mut self,
        platform_id: &str,
        url: &str,
        events: &[String],
        held: Option<&Stored>,
    ) -> Result<(), WebhookError> {
        let ctx = context(platform_id);
        let at_stripe = list_all(&self.client, ctx.as_ref())
            .await
            .map_err(stripe_error(format!(
                "listing the webhook endpoints{}",
                for_platform(platform_id)
            )))?;
        let ours = held.filter(|s| s.url == url && at_stripe.iter().any(|e| e.id == s.endpoint_id));
        let (endpoint_id, outcome) = match ours {
            Some(row) => (row.endpoint_id.clone(), Outcome::Found),
            None => (
                self.create(platform_id, url, events).await?,
                Outcome::Created,
            ),
        };
        self.done.push(EndpointReport {
            platform: ctx.map(String::from),
            endpoint_id: endpoint_id.clone(),
            outcome,
            deleted: vec![],
        });
        // Only now, so events are never left without an endpoint: tally's previous
        // endpoint at another URL, and endpoints at this URL signing with a secret tally
        // does not hold (each of their deliveries would be refused).
        let previous = held
            .filter(|s| s.endpoint_id != endpoint_id && s.url != url)
            .filter(|s| at_stripe.iter().any(|e| e.id == s.endpoint_id))
            .map(|s| Replaced {
                endpoint_id: s.endpoint_id.clone(),
                reason: ReplaceReason::Moved {
                    from: s.url.clone(),
                },
            });
        let strangers = at_stripe
            .iter()
            .filter(|e| e.url == url && e.id != endpoint_id)
            .map(|e| Replaced {
                endpoint_id: e.id.clone(),
                reason: ReplaceReason::SecretUnknown,
            });
        for replaced in previous.into_iter().chain(strangers) {
            self.delete_at_stripe(platform_id, &replaced.endpoint_id)
                .await?;
            if let Some(report) = self.done.last_mut() {
                report.deleted.push(replaced);
            }
        }
        Ok(())
    }

    /// Creates the endpoint at Stripe and stores its secret sealed; returns its id.
    async fn create(
        &self,
        platform_id: &str,
        url: &str,
        events: &[String],
    ) -> Result<String, WebhookError> {
        let new = NewWebhookEndpoint {
            url,
            events,
            description: DESCRIPTION,
            api_version: Some(&self.tenant.api_version),
        };
        let created = self
            .client
            .create_webhook_endpoint(context(platform_id).as_ref(), &new)
            .await
            .map_err(stripe_error(format!(
                "creating the webhook endpoint{}",
                for_platform(platform_id)
            )))?;
        // Stored before anything else: Stripe never shows this secret again.
        let sealed = self
            .stripe
            .master()
            .seal(&self.tenant.slug, created.secret.expose_secret());
        let row = store::webhook_endpoints::NewWebhookEndpoint {
            platform_id,
            endpoint_id: &created.endpoint.id,
            url,
            secret_ciphertext: &sealed,
        };
        store::webhook_endpoints::upsert(self.pool, self.tenant.id, &row).await?;
        Ok(created.endpoint.id)
    }

    /// Deletes tally's endpoint `row` at Stripe, then forgets it.
    async fn remove(&mut self, row: &Stored) -> Result<(), WebhookError> {
        self.delete_at_stripe(&row.platform_id, &row.endpoint_id)
            .await?;
        store::webhook_endpoints::delete(self.pool, self.tenant.id, &row.platform_id).await?;
        self.done.push(EndpointReport {
            platform: context(&row.platform_id).map(String::from),
            endpoint_id: row.endpoint_id.clone(),
            outcome: Outcome::Removed,
            deleted: vec![],
        });
        Ok(())
    }

    /// Deletes the endpoint at Stripe; one that is already gone counts as deleted.
    async fn delete_at_stripe(
        &self,
        platform_id: &str,
        endpoint_id: &str,
    ) -> Result<(), WebhookError> {
        match self
            .client
            .delete_webhook_endpoint(context(platform_id).as_ref(), endpoint_id)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.status() == Some(404) => Ok(()),
            Err(error) => Err(WebhookError::Stripe {
                doing: format!(
                    "deleting webhook endpoint {endpoint_id}{}",
                    for_platform(platform_id)
                ),
                error,
            }),
        }
    }

    fn audit_details(&self) -> Value {
        self.done
            .iter()
            .map(|report| {
                json!({
                    "platform": report.platform,
                    "endpoint": report.endpoint_id,
                    "outcome": report.outcome.as_str(),
                    "deleted": report.deleted.iter().map(|r| &r.endpoint_id).collect::<Vec<_>>(),
                })
            })
            .collect()
    }

    /// Records what changed, if anything did (not a run that found everything as it
    /// was); returns what was done.
    async fn audit(
        self,
        actor: &Actor,
        details: Value,
    ) -> Result<Vec<EndpointReport>, sqlx::Error> {
        let changed = self
            .done
            .iter()
            .any(|r| r.outcome != Outcome::Found || !r.deleted.is_empty());
        if changed {
            audit::record(
                self.pool,
                actor,
                "tenant.webhooks",
                Some(&self.tenant.slug),
                details,
            )
            .await?;
        }
        Ok(self.done)
    }
}

/// Every endpoint of the platform, following `has_more`.
async fn list_all(
    client: &TenantClient,
    platform: Option<&StripeAccountId>,
) -> Result<Vec<WebhookEndpoint>, StripeError> {
    let mut all: Vec<WebhookEndpoint> = Vec::new();
    for _ in 0..MAX_LIST_PAGES {
        let after = all.last().map(|e| e.id.clone());
        let page = client
            .list_webhook_endpoints_page(platform, after.as_deref(), 100)
            .await?;
        let more = page.has_more && !page.data.is_empty();
        all.extend(page.data);
        if !more {
            break;
        }
    }
    Ok(all)
}

/// What to print: one line per endpoint, then what to do next. Never a secret.
pub fn render(registration: &Registration) -> String {
    let slug = &registration.slug;
    let registering = registration.url.is_some();
    let mut out = match &registration.url {
        Some(url) => format!(
            "tenant {slug}: Connect webhook endpoint {url} (events: {})\n",
            registration.events.join(", ")
        ),
        None if registration.endpoints.is_empty() => {
            return format!("tenant {slug} has no registered webhook endpoints; nothing removed\n")
        }
        None => format!("tenant {slug}: webhook endpoints removed\n"),
    };
    for report in &registration.endpoints {
        let whose = match &report.platform {
            Some(p) => format!("platform {p}"),
            None => "platform key".to_owned(),
        };
        let what = match report.outcome {
            Outcome::Found => "already registered; nothing changed",
            Outcome::Created => "created; its signing secret is stored sealed",
            // While registering, only for a platform the tenant no longer lists.
            Outcome::Removed if registering => {
                "deleted at Stripe and in tally: the tenant no longer lists this platform"
            }
            Outcome::Removed => "deleted at Stripe and in tally",
        };
        out.push_str(&format!("  {whose}: {} {what}\n", report.endpoint_id));
        for replaced in &report.deleted {
            let why = match &replaced.reason {
                ReplaceReason::SecretUnknown => "it has this URL, but Stripe shows a signing \
                    secret only when it creates the endpoint and tally does not hold this one"
                    .to_owned(),
                ReplaceReason::Moved { from } => format!("tally's previous endpoint, for {from}"),
            };
            out.push_str(&format!(
                "    deleted {} at Stripe: {why}\n",
                replaced.endpoint_id
            ));
        }
    }
    match registration.freshness {
        FreshnessMode::Poll if registering => out.push_str(&format!(
            "Stripe now sends the events; to let them vouch for unchanged accounts too: \
             tally tenant update {slug} --freshness events\n"
        )),
        FreshnessMode::Events if !registering && !registration.hand_set_secret => {
            out.push_str(&format!(
                "tenant {slug} is in events mode but no longer receives events: \
                 tally tenant update {slug} --freshness poll\n"
            ))
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_must_be_the_tenants_webhook_address() {
        assert_eq!(
            tenant_url("acme", " https://t.example/webhooks/stripe/acme ").expect("valid"),
            "https://t.example/webhooks/stripe/acme"
        );
        assert!(tenant_url("acme", "http://127.0.0.1:8080/webhooks/stripe/acme/").is_ok());
        assert!(matches!(
            tenant_url("acme", "https://t.example/webhooks/stripe/globex"),
            Err(WebhookError::NotTheTenantsPath { .. })
        ));
        assert!(matches!(
            tenant_url("acme", "/webhooks/stripe/acme"),
            Err(WebhookError::InvalidUrl(_))
        ));
        assert!(matches!(
            tenant_url("acme", "ftp://t.example/webhooks/stripe/acme"),
            Err(WebhookError::InvalidUrl(_))
        ));
    }

    #[test]
    fn events_default_to_every_type_and_are_checked() {
        assert_eq!(event_types(&[]).expect("valid"), vec!["*"]);
        let given = vec![
            "account.updated,balance.available".to_owned(),
            "account.updated".to_owned(),
            "account.application.deauthorized".to_owned(),
        ];
        assert_eq!(
            event_types(&given).expect("valid"),
            vec![
                "account.updated",
                "balance.available",
                "account.application.deauthorized"
            ]
        );
        for bad in ["Account.updated", "account", "account..updated", ""] {
            assert!(event_types(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
