//! The outbound Stripe client (DESIGN §1, §5): credentials, the per-request account header,
//! retries, per-tenant rate limits, response types and errors. It knows nothing about
//! Postgres or tenants beyond the credential it is given.

pub mod client;
pub mod credential;
pub mod error;
pub mod headers;
mod limiter;
pub mod rate_budget;
pub mod retry;
pub mod settings;
pub mod types;

pub use client::{CreatedRange, Fetched, NewWebhookEndpoint, StripeClient, TenantClient};
pub use credential::{
    key_last4, Credential, CredentialKind, UnknownCredentialKind, UnknownKeyPrefix,
};
pub use error::{ApiErrorBody, StripeError};
pub use headers::{account_header, AccountHeader};
pub use limiter::AdaptiveRate;
pub use rate_budget::{Priority, RateBudget, Throttled};
pub use retry::backoff_delay;
pub use settings::{ClientSettings, RateSettings};
pub use types::{
    Balance, BalanceAmount, BalanceTransaction, CreatedWebhookEndpoint, Deleted, IssuingBalance,
    List, RefundAndDisputePrefunding, WebhookEndpoint,
};
