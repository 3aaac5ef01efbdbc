//! The HTTP client: one shared connection pool, one [`TenantClient`] per credential with its
//! own rate limit and in-flight cap, and the endpoints tally calls.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use http::{HeaderMap, HeaderValue, Method};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::domain::StripeAccountId;
use crate::stripe::credential::{Credential, CredentialKind};
use crate::stripe::error::{decode_success, error_from_response, StripeError};
use crate::stripe::headers::{
    account_header, AccountHeader, IDEMPOTENCY_KEY, REQUEST_ID, STRIPE_VERSION,
};
use crate::stripe::limiter::AdaptiveRate;
use crate::stripe::rate_budget::{Priority, RateBudget, Throttled};
use crate::stripe::retry::{
    backoff_delay, random_jitter, should_retry, stripe_should_retry, AttemptOutcome,
};
use crate::stripe::settings::{ClientSettings, RateSettings};
use crate::stripe::types::{
    parse_balance, parse_list, parse_list_of, parse_object, parse_typed, Balance,
    BalanceTransaction, CreatedWebhookEndpoint, Deleted, List, WebhookEndpoint,
};

/// The process-wide client. Cheap to clone; all clones share one connection pool.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    settings: Arc<ClientSettings>,
}

impl StripeClient {
    pub fn new(settings: ClientSettings) -> Result<Self, StripeError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StripeError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(StripeClient {
            http,
            settings: Arc::new(settings),
        })
    }

    /// A client acting with `credential`, paced by a rate limit of its own. Each call
    /// creates a new limit; clone the returned [`TenantClient`] (not call this again) to
    /// share it.
    pub fn tenant(&self, credential: Credential, rate: RateSettings) -> TenantClient {
        let budget = Arc::new(AdaptiveRate::new(rate.per_second));
        self.tenant_with_budget(credential, rate.max_in_flight, budget)
    }

    /// A client acting with `credential`, paced by `budget` (which other clients, or
    /// other processes, may share).
    pub fn tenant_with_budget(
        &self,
        credential: Credential,
        max_in_flight: usize,
        budget: Arc<dyn RateBudget>,
    ) -> TenantClient {
        TenantClient {
            inner: Arc::new(Tenant {
                http: self.http.clone(),
                settings: self.settings.clone(),
                budget,
                in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
                credential,
            }),
            priority: Priority::Interactive,
        }
    }
}

/// One tenant's view of Stripe. Clones share the rate budget and the in-flight cap.
#[derive(Clone)]
pub struct TenantClient {
    inner: Arc<Tenant>,
    /// Whose turn this clone's requests take in the budget.
    priority: Priority,
}

struct Tenant {
    http: reqwest::Client,
    settings: Arc<ClientSettings>,
    credential: Credential,
    budget: Arc<dyn RateBudget>,
    /// Shared with the clients that replace this one when its key rotates.
    in_flight: Arc<Semaphore>,
}

/// A decoded Stripe object with what came with it.
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    pub value: T,
    /// Exactly what Stripe returned, unknown fields included (for storing).
    pub raw: Value,
    pub request_id: Option<String>,
    /// Attempts it took, 1 when the first one succeeded.
    pub attempts: u32,
    /// When Stripe answered, by Stripe's clock (the `Date` header, whole seconds): the
    /// instant a balance was read, to line it up with balance transactions' `created`.
    pub stripe_date: Option<DateTime<Utc>>,
}

/// A `created` filter of a list, in Unix seconds on Stripe's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    /// `created[gte]`
    pub from: Option<i64>,
    /// `created[lt]`
    pub before: Option<i64>,
}

/// One logical request, retried as a unit.
struct Call {
    method: Method,
    path: Vec<String>,
    query: Vec<(&'static str, String)>,
    form: Option<String>,
    account: Option<AccountHeader>,
    /// What a successful body is, for error messages ("balance", "account", "list").
    what: &'static str,
}

/// A response, fully read.
struct Answer {
    status: u16,
    request_id: Option<String>,
    /// A 429's `Stripe-Rate-Limited-Reason` (`endpoint-rate`, `global-rate`, …).
    rate_limited_reason: Option<String>,
    date: Option<DateTime<Utc>>,
    content_type: Option<String>,
    should_retry: Option<bool>,
    body: bytes::Bytes,
}

impl TenantClient {
    /// `GET /v1/balance` for `account`, which `platform` controls (`None` if it is directly
    /// in the organization, or for a platform key).
    #[tracing::instrument(name = "stripe.retrieve_balance", skip_all, fields(account = %account))]
    pub async fn retrieve_balance(
        &self,
        account: &StripeAccountId,
        platform: Option<&StripeAccountId>,
    ) -> Result<Fetched<Balance>, StripeError> {
        let call = Call {
            method: Method::GET,
            path: segments(&["balance"]),
            query: Vec::new(),
            form: None,
            account: Some(self.header_for(account, platform)),
            what: "balance",
        };
        self.execute(call, parse_balance).await
    }

    /// One page of `GET /v1/balance_transactions` of `account` (reached like its balance),
    /// newest first, created within `range`, after `starting_after`. `limit` is 1..=100.
    #[tracing::instrument(name = "stripe.list_balance_transactions", skip_all, fields(account = %account))]
    pub async fn list_balance_transactions_page(
        &self,
        account: &StripeAccountId,
        platform: Option<&StripeAccountId>,
        range: CreatedRange,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<Fetched<List<BalanceTransaction>>, StripeError> {
        let mut call = list_call(
            "balance_transactions",
            Some(self.header_for(account, platform)),
            starting_after,
            limit,
        )?;
        if let Some(from) = range.from {
            call.query.push(("created[gte]", from.to_string()));
        }
        if let Some(before) = range.before {
            call.query.push(("created[lt]", before.to_string()));
        }
        self.execute(call, |v| parse_list_of(v, "balance_transaction"))
            .await
    }

    /// `GET /v1/accounts/{account}`, sent with the same account header as its balance.
    #[tracing::instrument(name = "stripe.retrieve_account", skip_all, fields(account = %account))]
    pub async fn retrieve_account(
        &self,
        account: &StripeAccountId,
        platform: Option<&StripeAccountId>,
    ) -> Result<Fetched<Value>, StripeError> {
        let call = Call {
            method: Method::GET,
            path: segments(&["accounts", account.as_str()]),
            query: Vec::new(),
            form: None,
            account: Some(self.header_for(account, platform)),
            what: "account",
        };
        self.execute(call, |v| parse_object(v, "account")).await
    }

    /// One page of `GET /v1/accounts`, newest first. An organization key lists one
    /// platform's connected accounts (`Stripe-Context: platform`), so `platform` is required
    /// there; a platform key lists its own and ignores `platform`. `limit` is 1..=100.
    #[tracing::instrument(name = "stripe.list_accounts", skip_all, fields(account = platform.map_or("", StripeAccountId::as_str)))]
    pub async fn list_accounts_page(
        &self,
        platform: Option<&StripeAccountId>,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<Fetched<List<Value>>, StripeError> {
        let account = self.context_header(
            platform,
            "listing accounts with an organization key needs the platform whose accounts \
             to list (sent as Stripe-Context)",
        )?;
        let call = list_call("accounts", account, starting_after, limit)?;
        self.execute(call, parse_list).await
    }

    /// `POST /v1/accounts` with form-encoded `params` (Stripe's bracket syntax, e.g.
    /// `("capabilities[transfers][requested]", "true")`). Sent without an account header: the
    /// account is created under the credential's own account. One `Idempotency-Key` covers
    /// every retry, so a retried POST can never create two accounts.
    #[tracing::instrument(name = "stripe.create_account", skip_all)]
    pub async fn create_account(
        &self,
        params: &[(&str, &str)],
    ) -> Result<Fetched<Value>, StripeError> {
        let form = serde_urlencoded::to_string(params)
            .map_err(|e| StripeError::Config(format!("cannot encode account parameters: {e}")))?;
        let call = Call {
            method: Method::POST,
            path: segments(&["accounts"]),
            query: Vec::new(),
            form: Some(form),
            account: None,
            what: "account",
        };
        self.execute(call, |v| parse_object(v, "account")).await
    }

    /// `GET /v1/balance` of the key's own account: the cheapest request that proves a key
    /// works and may read balances. A platform key sends no account header; an
    /// organization key must name an account in the organization (`Stripe-Context`).
    #[tracing::instrument(name = "stripe.retrieve_own_balance", skip_all)]
    pub async fn retrieve_own_balance(
        &self,
        context: Option<&StripeAccountId>,
    ) -> Result<Fetched<Balance>, StripeError> {
        let account = self.context_header(
            context,
            "an organization key reads a balance only for an account it names in Stripe-Context",
        )?;
        let call = Call {
            method: Method::GET,
            path: segments(&["balance"]),
            query: Vec::new(),
            form: None,
            account,
            what: "balance",
        };
        self.execute(call, parse_balance).await
    }

    /// `POST /v1/webhook_endpoints`: a Connect endpoint (`connect=true`) receiving
    /// `endpoint.events` of the connected accounts of the key's platform, or, for an
    /// organization key, of `platform` (sent as `Stripe-Context`). The answer is the only
    /// time Stripe shows the endpoint's signing secret; it is returned as a secret and the
    /// raw body is dropped here. One `Idempotency-Key` covers every retry, so a retried
    /// POST never registers two endpoints.
    #[tracing::instrument(name = "stripe.create_webhook_endpoint", skip_all, fields(account = platform.map_or("", StripeAccountId::as_str)))]
    pub async fn create_webhook_endpoint(
        &self,
        platform: Option<&StripeAccountId>,
        endpoint: &NewWebhookEndpoint<'_>,
    ) -> Result<CreatedWebhookEndpoint, StripeError> {
        let account = self.context_header(platform, WEBHOOKS_NEED_A_PLATFORM)?;
        let mut params: Vec<(&str, &str)> = vec![("url", endpoint.url)];
        params.extend(
            endpoint
                .events
                .iter()
                .map(|e| ("enabled_events[]", e.as_str())),
        );
        params.extend([("connect", "true"), ("description", endpoint.description)]);
        if let Some(version) = endpoint.api_version {
            params.push(("api_version", version));
        }
        let form = serde_urlencoded::to_string(&params).map_err(|e| {
            StripeError::Config(format!("cannot encode webhook endpoint parameters: {e}"))
        })?;
        let call = Call {
            method: Method::POST,
            path: segments(&["webhook_endpoints"]),
            query: Vec::new(),
            form: Some(form),
            account,
            what: "webhook_endpoint",
        };
        let created = self
            .execute(call, |v| parse_typed(v, "webhook_endpoint"))
            .await?;
        Ok(created.value)
    }

    /// One page of `GET /v1/webhook_endpoints` of the key's platform, or, for an
    /// organization key, of `platform` (`Stripe-Context`). `limit` is 1..=100.
    #[tracing::instrument(name = "stripe.list_webhook_endpoints", skip_all, fields(account = platform.map_or("", StripeAccountId::as_str)))]
    pub async fn list_webhook_endpoints_page(
        &self,
        platform: Option<&StripeAccountId>,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<List<WebhookEndpoint>, StripeError> {
        let account = self.context_header(platform, WEBHOOKS_NEED_A_PLATFORM)?;
        let call = list_call("webhook_endpoints", account, starting_after, limit)?;
        let page = self
            .execute(call, |v| parse_list_of(v, "webhook_endpoint"))
            .await?;
        Ok(page.value)
    }

    /// `DELETE /v1/webhook_endpoints/{id}` of the key's platform, or, for an organization
    /// key, of `platform` (`Stripe-Context`).
    #[tracing::instrument(name = "stripe.delete_webhook_endpoint", skip_all, fields(account = platform.map_or("", StripeAccountId::as_str), endpoint = %id))]
    pub async fn delete_webhook_endpoint(
        &self,
        platform: Option<&StripeAccountId>,
        id: &str,
    ) -> Result<Deleted, StripeError> {
        let account = self.context_header(platform, WEBHOOKS_NEED_A_PLATFORM)?;
        let call = Call {
            method: Method::DELETE,
            path: segments(&["webhook_endpoints", id]),
            query: Vec::new(),
            form: None,
            account,
            what: "webhook_endpoint",
        };
        let deleted = self
            .execute(call, |v| parse_typed(v, "webhook_endpoint"))
            .await?;
        Ok(deleted.value)
    }

    /// A client for `credential` (a rotated key, a changed API version) that keeps this
    /// one's in-flight cap, and its rate budget unless `budget` replaces it: requests
    /// already sent finish with the old key, new ones use the new key, and the two
    /// together never exceed the tenant's pace.
    pub fn with_credential(
        &self,
        credential: Credential,
        budget: Option<Arc<dyn RateBudget>>,
    ) -> TenantClient {
        TenantClient {
            inner: Arc::new(Tenant {
                http: self.inner.http.clone(),
                settings: self.inner.settings.clone(),
                budget: budget.unwrap_or_else(|| self.inner.budget.clone()),
                in_flight: self.inner.in_flight.clone(),
                credential,
            }),
            priority: self.priority,
        }
    }

    /// Requests per second in force now: the configured rate, or less for a while after a 429.
    pub fn rate(&self) -> u32 {
        self.inner.budget.current()
    }

    /// The rate the tenant was configured with, which [`TenantClient::rate`] returns to.
    pub fn configured_rate(&self) -> u32 {
        self.inner.budget.configured()
    }

    /// The same client (shared budget and in-flight cap) whose requests take
    /// `priority`'s turn.
    pub fn with_priority(&self, priority: Priority) -> TenantClient {
        TenantClient {
            inner: self.inner.clone(),
            priority,
        }
    }

    pub fn kind(&self) -> CredentialKind {
        self.inner.credential.kind
    }

    fn header_for(
        &self,
        account: &StripeAccountId,
        platform: Option<&StripeAccountId>,
    ) -> AccountHeader {
        account_header(self.inner.credential.kind, account, platform)
    }

    /// The header of a request that acts as an account of the organization itself (a
    /// platform listing its accounts, a key checking its own balance): none for a
    /// platform key, which acts as its own account; `Stripe-Context: context` for an
    /// organization key, which must name one (`missing` says why when it does not).
    fn context_header(
        &self,
        context: Option<&StripeAccountId>,
        missing: &str,
    ) -> Result<Option<AccountHeader>, StripeError> {
        match (self.inner.credential.kind, context) {
            (CredentialKind::Platform, _) => Ok(None),
            (CredentialKind::Organization, Some(account)) => Ok(Some(account_header(
                CredentialKind::Organization,
                account,
                None,
            ))),
            (CredentialKind::Organization, None) => Err(StripeError::Config(missing.to_owned())),
        }
    }

    /// Runs `call` with retries, decoding a successful body with `parse`.
    async fn execute<T>(
        &self,
        call: Call,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Fetched<T>, StripeError> {
        let key = self.inner.credential.key.expose_secret();
        let (url, headers) = self.prepare(&call).map_err(|e| e.redact(key))?;
        let settings = &self.inner.settings;
        let max_attempts = settings.max_attempts.max(1);
        for attempt in 1.. {
            let (error, outcome) = match self.send_once(&call, &url, &headers).await {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    let (value, raw) = decode_success(
                        answer.status,
                        answer.request_id.as_deref(),
                        answer.content_type.as_deref(),
                        &answer.body,
                        call.what,
                        &parse,
                    )
                    .map_err(|e| e.redact(key))?;
                    return Ok(Fetched {
                        value,
                        raw,
                        request_id: answer.request_id,
                        attempts: attempt,
                        stripe_date: answer.date,
                    });
                }
                Ok(answer) => {
                    if answer.status == 429 {
                        let endpoint = endpoint_of(&url);
                        self.inner.budget.throttled(Throttled::from_reason(
                            answer.rate_limited_reason.as_deref(),
                            &endpoint,
                        ));
                    }
                    let outcome = AttemptOutcome::Response {
                        status: answer.status,
                        should_retry: answer.should_retry,
                    };
                    let error = error_from_response(
                        answer.status,
                        answer.request_id,
                        answer.content_type.as_deref(),
                        &answer.body,
                    );
                    (error, outcome)
                }
                Err((error, retryable)) => (error, AttemptOutcome::Transport { retryable }),
            };
            let error = error.redact(key);
            if attempt >= max_attempts || !should_retry(outcome) {
                tracing::debug!(attempt, error = %error, "Stripe request failed");
                return Err(error);
            }
            let delay = backoff_delay(attempt, settings, random_jitter());
            tracing::warn!(
                attempt,
                status = error.status(),
                request_id = error.request_id(),
                error_type = error.error_type(),
                delay_ms = delay.as_millis() as u64,
                rate = self.inner.budget.current(),
                "retrying Stripe request"
            );
            metrics::counter!("stripe_retries_total").increment(1);
            tokio::time::sleep(delay).await;
        }
        unreachable!("the attempt loop only ends by returning")
    }

    /// URL and headers, built once per call and reused by every attempt.
    fn prepare(&self, call: &Call) -> Result<(url::Url, HeaderMap), StripeError> {
        let credential = &self.inner.credential;
        let mut url = credential.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| StripeError::Config("the Stripe base URL cannot take a path".into()))?
            .pop_if_empty()
            .push("v1")
            .extend(&call.path);
        if !call.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.query);
        }

        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::try_from(format!("Bearer {}", credential.key.expose_secret()))
            .map_err(|_| {
                StripeError::Config("the API key has characters a header cannot carry".into())
            })?;
        auth.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, auth);
        if credential.api_version.is_empty() {
            return Err(StripeError::Config(
                "no Stripe API version configured".into(),
            ));
        }
        headers.insert(
            STRIPE_VERSION,
            header_value(&credential.api_version, STRIPE_VERSION)?,
        );
        if let Some(account) = &call.account {
            headers.insert(
                account.name(),
                header_value(account.value(), account.name())?,
            );
        }
        if call.form.is_some() {
            // Generated once here, so every retry of this POST carries the same key.
            let key = uuid::Uuid::new_v4().to_string();
            headers.insert(IDEMPOTENCY_KEY, header_value(&key, IDEMPOTENCY_KEY)?);
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        Ok((url, headers))
    }

    /// One attempt: wait for an in-flight slot, then for the rate limit, then send and read
    /// the whole body. The slot comes first so a token is never held while queueing (tokens
    /// taken early and spent late would bunch up and break the per-second bound). On failure,
    /// also says whether a retry could help.
    async fn send_once(
        &self,
        call: &Call,
        url: &url::Url,
        headers: &HeaderMap,
    ) -> Result<Answer, (StripeError, bool)> {
        let inner = &self.inner;
        let _slot = inner.in_flight.acquire().await.map_err(|_| {
            (
                StripeError::Config("the tenant client was shut down".into()),
                false,
            )
        })?;
        let endpoint = endpoint_of(url);
        inner.budget.acquire(self.priority, &endpoint).await;

        let mut request = inner
            .http
            .request(call.method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(form) = &call.form {
            request = request.body(form.clone());
        }
        let response = request.send().await.map_err(|e| {
            count_request(&endpoint, "error");
            (
                StripeError::transport(&e),
                !e.is_builder() && !e.is_redirect(),
            )
        })?;

        let status = response.status().as_u16();
        count_request(&endpoint, &status.to_string());
        let headers = response.headers();
        let request_id = header_text(headers, REQUEST_ID);
        let content_type = header_text(headers, http::header::CONTENT_TYPE.as_str());
        let should_retry = stripe_should_retry(headers);
        let rate_limited_reason = header_text(headers, "stripe-rate-limited-reason");
        let date = header_text(headers, http::header::DATE.as_str())
            .and_then(|text| DateTime::parse_from_rfc2822(&text).ok())
            .map(|date| date.with_timezone(&Utc));
        // A body cut off mid-read is a network failure like any other: retryable.
        let body = response
            .bytes()
            .await
            .map_err(|e| (StripeError::transport(&e), true))?;
        tracing::debug!(
            status,
            request_id = request_id.as_deref(),
            "Stripe answered"
        );
        Ok(Answer {
            status,
            request_id,
            rate_limited_reason,
            date,
            content_type,
            should_retry,
            body,
        })
    }
}

/// What `POST /v1/webhook_endpoints` registers, besides `connect=true`.
pub struct NewWebhookEndpoint<'a> {
    pub url: &'a str,
    /// Event types, or `*` for every one.
    pub events: &'a [String],
    pub description: &'a str,
    /// The API version Stripe renders the endpoint's events with (`None`: the account's default).
    pub api_version: Option<&'a str>,
}

const WEBHOOKS_NEED_A_PLATFORM: &str = "an organization key manages the webhook endpoints of \
    one of its platforms, named in Stripe-Context";

/// One page of `GET /v1/{resource}`: at most `limit` (1..=100), after `starting_after`.
fn list_call(
    resource: &str,
    account: Option<AccountHeader>,
    starting_after: Option<&str>,
    limit: u8,
) -> Result<Call, StripeError> {
    if !(1..=100).contains(&limit) {
        return Err(StripeError::Config(format!(
            "list limit must be between 1 and 100, got {limit}"
        )));
    }
    let mut query = vec![("limit", limit.to_string())];
    if let Some(id) = starting_after {
        query.push(("starting_after", id.to_owned()));
    }
    Ok(Call {
        method: Method::GET,
        path: segments(&[resource]),
        query,
        form: None,
        account,
        what: "list",
    })
}

fn segments(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

fn header_value(value: &str, name: &str) -> Result<HeaderValue, StripeError> {
    HeaderValue::from_str(value)
        .map_err(|_| StripeError::Config(format!("{name} has characters a header cannot carry")))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// Stripe requests by endpoint (`/v1/balance`, `/v1/accounts`, …: Stripe's rate limits
/// are per endpoint) and status.
fn count_request(endpoint: &str, status: &str) {
    metrics::counter!("stripe_requests_total", "endpoint" => endpoint.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// The endpoint a URL calls: its first two path segments (`/v1/accounts/acct_1` is
/// `/v1/accounts`), so ids never become label values.
fn endpoint_of(url: &url::Url) -> String {
    let parts: Vec<&str> = url
        .path_segments()
        .map(|segments| segments.filter(|s| !s.is_empty()).take(2).collect())
        .unwrap_or_default();
    format!("/{}", parts.join("/"))
}
