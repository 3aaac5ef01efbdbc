//! Typed settings, layered as DESIGN §2 says: `config/default.toml`, then
//! `config/{TALLY_ENV}.toml`, then `TALLY__SECTION__KEY` variables, then the
//! well-known `DATABASE_URL` and `PAGE_SIZE`. Validated once, at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::SecretString;
use serde::Deserialize;

/// The defaults ship inside the binary so `tally` works from any directory;
/// a `config/default.toml` on disk is still read on top of them.
const EMBEDDED_DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub accounts: AccountSettings,
    pub stripe: StripeSettings,
    pub refresh: RefreshSettings,
    pub sync: SyncSettings,
    pub webhooks: WebhookSettings,
    pub close: CloseSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub request_timeout_secs: u64,
    /// How long SIGTERM waits for in-flight requests and fetches before it stops anyway.
    pub shutdown_grace_secs: u64,
    /// Where `/metrics` is served without a token. Unset: on `bind`, owner token only.
    #[serde(default)]
    pub metrics_bind: Option<SocketAddr>,
    /// A connection must send a request's head within this of its start (or of the
    /// head's first byte, on a kept-alive connection).
    pub header_read_timeout_secs: u64,
    /// A kept-alive connection with no request for this long is closed.
    pub keep_alive_timeout_secs: u64,
    /// Connections served at once by this process (each a file descriptor).
    pub max_connections: usize,
    /// The origin people reach the admin pages at (`https://tally.example.com`), what
    /// a form's `Origin` must be. Unset: the `Host` the request was sent to.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Whether `X-Forwarded-Host` and `X-Forwarded-Proto` say the admin pages' origin
    /// (only behind a proxy that sets them and strips clients' own).
    #[serde(default)]
    pub trust_forwarded_headers: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// A secret: the URL may carry a password.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
    /// Postgres ends a session of ours that sits inside a transaction doing nothing
    /// for this long (`idle_in_transaction_session_timeout`), releasing its locks.
    pub idle_in_transaction_timeout_secs: u64,
    /// `url` leads to PgBouncer in transaction-pooling mode: nothing is kept in a
    /// session (no prepared statement outlives its round trip; settings are set per
    /// transaction) and migrations need `migrate_url`.
    #[serde(default)]
    pub pgbouncer: bool,
    /// A direct connection to Postgres (not PgBouncer) that migrations run on; unset,
    /// they run on `url`, or behind PgBouncer a command only checks none is pending.
    /// A secret like `url`.
    #[serde(default)]
    pub migrate_url: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub page_size: i64,
    /// Streamed listings (`all=true`, `limit` above 500) open at once, in total.
    pub max_streams: usize,
    /// Streamed listings open at once per API token.
    pub max_streams_per_token: usize,
    /// A client that takes nothing of a response for this long is disconnected.
    pub stream_idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccountSettings {
    pub owner_metadata_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StripeSettings {
    pub api_base: String,
    pub api_version: String,
    pub rate_limit: u32,
    /// Requests per second per endpoint (`/v1/balance`, …) per credential: Stripe's
    /// default is 25; shared by every process like `rate_limit`.
    pub endpoint_rate_limit: u32,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RefreshSettings {
    /// Whether this process fetches balances at all (false: an API-only replica that
    /// leaves the work to the others).
    pub worker: bool,
    /// Whether the background refresher keeps every account fresh on its own. Polls
    /// and explicit refreshes are worked on either way.
    pub enabled: bool,
    /// Every listed account's latest snapshot is kept younger than this.
    pub interval_secs: u64,
    /// How long a claimed account stays claimed by one worker (a killed worker's
    /// accounts are picked up by others after this).
    pub lease_secs: u64,
    /// How often a worker looks for new work when it has none.
    pub tick_ms: u64,
    /// A changed account (a Connect event about it arrived) is fetched this long after
    /// its first event, so a burst of events makes one fetch.
    pub change_delay_ms: u64,
    /// In `events` mode, accounts no event named are re-read this often, the safety
    /// net for changes Stripe announced to nobody.
    pub sweep_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// A tenant's event stream with no event for this long vouches for nothing: its
    /// `events` freshness falls back to the poll rule until it speaks again and every
    /// account was fetched since.
    pub max_silence_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CloseSettings {
    /// The refresher reads each fetched account's new balance transactions.
    pub read_ledger: bool,
    /// A day closes this long after it ends, by Stripe's clock.
    pub settle_secs: u64,
    /// How far before the current day an account's first ledger read reaches; its
    /// first closed day starts that long after the read's start.
    pub settlement_days: u32,
    /// How often a server looks for days to close or reopen.
    pub tick_secs: u64,
}

/// How long each table that grows with time keeps its rows (`*_days`, 0: forever), and
/// how the server prunes them (`retention.rs`).
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Whether this process prunes (every replica may; they take turns per table).
    pub enabled: bool,
    /// Pause between pruning passes.
    pub interval_secs: u64,
    /// Rows deleted per transaction.
    pub batch_size: i64,
    /// A batch waits at most this long for a row lock before giving up until the next pass.
    pub lock_timeout_ms: u64,
    /// Every balance snapshot is kept this long; after it, one per account and day.
    pub snapshots_full_days: u32,
    /// The daily snapshots are kept this long (each account's latest stays regardless).
    pub snapshots_days: u32,
    /// Hourly totals over time (a row per tenant and hour at most).
    pub totals_history_days: u32,
    /// Balance transactions; days older than this are final.
    pub ledger_days: u32,
    /// Closed days (per account and per tenant).
    pub closes_days: u32,
    /// Finished balance refreshes (demands).
    pub refreshes_days: u32,
    /// Finished account syncs.
    pub sync_runs_days: u32,
    /// Processed webhook event ids (at least 3: Stripe retries for 3 days).
    pub webhook_events_days: u32,
    /// The audit log (at least [`AUDIT_MINIMUM_DAYS`]).
    pub audit_days: u32,
}

/// The audit log is never pruned younger than this: a year of entries plus the month
/// a yearly review takes to ask for them.
pub const AUDIT_MINIMUM_DAYS: u32 = 400;

/// Stripe retries a webhook delivery for up to three days; an event id is remembered
/// at least that long so a retry is never applied twice.
pub const WEBHOOK_EVENTS_MINIMUM_DAYS: u32 = 3;

#[derive(Debug, Clone, Deserialize)]
pub struct SyncSettings {
    /// Each tenant's account list is re-synced this often (0: only when asked).
    pub interval_secs: u64,
    /// A running sync renews its lease on a timer; one whose lease is older than this
    /// (its process died) is taken over by the next sync.
    pub lease_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The longest horizon a `retention.*_days` setting may name.
const MAX_RETENTION_DAYS: u32 = 36_500;

impl RetentionSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let invalid =
            |key: &'static str, reason: String| Err(SettingsError::Invalid { key, reason });
        if self.interval_secs < 1 {
            return invalid("retention.interval_secs", "must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return invalid("retention.batch_size", "must be between 1 and 10000".into());
        }
        if !(1..=60_000).contains(&self.lock_timeout_ms) {
            return invalid(
                "retention.lock_timeout_ms",
                "must be between 1 and 60000 (a batch waits that long for a row lock)".into(),
            );
        }
        // A horizon is a date: a century is the most that means anything, and more would
        // overflow the date arithmetic of the pruning task.
        for (key, days) in [
            ("retention.snapshots_full_days", self.snapshots_full_days),
            ("retention.snapshots_days", self.snapshots_days),
            ("retention.ledger_days", self.ledger_days),
            ("retention.closes_days", self.closes_days),
            ("retention.totals_history_days", self.totals_history_days),
            ("retention.webhook_events_days", self.webhook_events_days),
            ("retention.audit_days", self.audit_days),
            ("retention.refreshes_days", self.refreshes_days),
            ("retention.sync_runs_days", self.sync_runs_days),
        ] {
            if days > MAX_RETENTION_DAYS {
                return invalid(
                    key,
                    format!(
                        "must be at most {MAX_RETENTION_DAYS} (a century), or 0 to keep forever"
                    ),
                );
            }
        }
        if self.audit_days != 0 && self.audit_days < AUDIT_MINIMUM_DAYS {
            return invalid(
                "retention.audit_days",
                format!("must be at least {AUDIT_MINIMUM_DAYS} (the audit log's minimum), or 0 to keep it forever"),
            );
        }
        if self.webhook_events_days != 0 && self.webhook_events_days < WEBHOOK_EVENTS_MINIMUM_DAYS {
            return invalid(
                "retention.webhook_events_days",
                format!("must be at least {WEBHOOK_EVENTS_MINIMUM_DAYS} (Stripe retries an event for 3 days), or 0 to keep them forever"),
            );
        }
        if self.snapshots_days != 0
            && (self.snapshots_full_days == 0 || self.snapshots_days < self.snapshots_full_days)
        {
            return invalid(
                "retention.snapshots_days",
                "must be at least retention.snapshots_full_days (and 0 when that is 0)".into(),
            );
        }
        // A late balance moves the hourly totals from its time on; it is refused once
        // older than the full snapshots, so the hours after that may go.
        if self.totals_history_days != 0
            && (self.snapshots_full_days == 0
                || self.totals_history_days < self.snapshots_full_days)
        {
            return invalid(
                "retention.totals_history_days",
                "must be at least retention.snapshots_full_days (and 0 when that is 0)".into(),
            );
        }
        // The closer recomputes every day it has not computed from the stored
        // transactions, and opens the first open day from the closings of the day before.
        if self.closes_days != 0
            && (self.ledger_days == 0 || self.closes_days < self.ledger_days.saturating_add(2))
        {
            return invalid(
                "retention.closes_days",
                "must be at least retention.ledger_days + 2 (and 0 when that is 0)".into(),
            );
        }
        Ok(())
    }

    /// The days of a `*_days` setting as a duration; `None` for 0 (kept forever).
    pub fn horizon(days: u32) -> Option<Duration> {
        (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400))
    }
}

impl Settings {
    /// Loads settings from the process environment and `TALLY_CONFIG_DIR` (default `config/`).
    pub fn load() -> Result<Settings, SettingsError> {
        let dir = std::env::var_os("TALLY_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let environment = std::env::var("TALLY_ENV").unwrap_or_else(|_| "local".to_owned());
        Self::load_from(&dir, &environment)
    }

    pub fn load_from(dir: &Path, environment: &str) -> Result<Settings, SettingsError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(EMBEDDED_DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false))
            .add_source(File::from(dir.join(format!("{environment}.toml"))).required(false))
            .add_source(
                Environment::with_prefix("TALLY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .set_override_option("database.url", std::env::var("DATABASE_URL").ok())?
            .set_override_option("api.page_size", std::env::var("PAGE_SIZE").ok())?
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        fn invalid(key: &'static str, reason: &str) -> Result<(), SettingsError> {
            Err(SettingsError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        }
        if self.server.metrics_bind == Some(self.server.bind) {
            return invalid("server.metrics_bind", "must differ from server.bind");
        }
        if self.server.header_read_timeout_secs < 1 {
            return invalid("server.header_read_timeout_secs", "must be at least 1");
        }
        if self.server.keep_alive_timeout_secs < 1 {
            return invalid("server.keep_alive_timeout_secs", "must be at least 1");
        }
        if self.server.max_connections < 1 {
            return invalid("server.max_connections", "must be at least 1");
        }
        if let Some(url) = &self.server.public_url {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
                _ => {
                    return invalid(
                        "server.public_url",
                        "must be an http or https URL such as https://tally.example.com",
                    )
                }
            }
        }
        if self.api.page_size < 1 {
            return invalid("api.page_size (PAGE_SIZE)", "must be at least 1");
        }
        if self.api.max_streams < 1 {
            return invalid("api.max_streams", "must be at least 1");
        }
        if self.api.max_streams_per_token < 1 {
            return invalid("api.max_streams_per_token", "must be at least 1");
        }
        if self.api.stream_idle_timeout_secs < 1 {
            return invalid("api.stream_idle_timeout_secs", "must be at least 1");
        }
        if self.close.tick_secs < 1 {
            return invalid("close.tick_secs", "must be at least 1");
        }
        if self.database.max_connections < 1 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if self.stripe.rate_limit < 1 {
            return invalid("stripe.rate_limit", "must be at least 1 request per second");
        }
        if self.stripe.endpoint_rate_limit < 1 {
            return invalid(
                "stripe.endpoint_rate_limit",
                "must be at least 1 request per second",
            );
        }
        if self.stripe.max_in_flight < 1 {
            return invalid("stripe.max_in_flight", "must be at least 1");
        }
        if self.stripe.max_attempts < 1 {
            return invalid("stripe.max_attempts", "must be at least 1");
        }
        if url::Url::parse(&self.stripe.api_base).is_err() {
            return invalid("stripe.api_base", "must be an absolute URL");
        }
        if self.stripe.api_version.trim().is_empty() {
            return invalid("stripe.api_version", "must not be empty");
        }
        if self.accounts.owner_metadata_key.trim().is_empty() {
            return invalid("accounts.owner_metadata_key", "must not be empty");
        }
        if self.refresh.interval_secs < 1 {
            return invalid("refresh.interval_secs", "must be at least 1");
        }
        if self.refresh.sweep_interval_secs < 1 {
            return invalid("refresh.sweep_interval_secs", "must be at least 1");
        }
        if self.webhooks.max_silence_secs < 1 {
            return invalid("webhooks.max_silence_secs", "must be at least 1");
        }
        if self.sync.lease_secs < 1 {
            return invalid("sync.lease_secs", "must be at least 1");
        }
        if self.refresh.lease_secs < 1 {
            return invalid("refresh.lease_secs", "must be at least 1");
        }
        if !(10..=60_000).contains(&self.refresh.tick_ms) {
            return invalid("refresh.tick_ms", "must be between 10 and 60000");
        }
        self.retention.validate()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "is not a valid tracing filter directive");
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_secs)
    }

    /// What the freshness rule needs of a tenant beyond its accounts.
    pub fn max_silence(&self) -> Duration {
        Duration::from_secs(self.webhooks.max_silence_secs)
    }

    /// How long every balance snapshot is kept (`None`: forever); older history is
    /// daily, and a balance from before it is not stored.
    pub fn full_history(&self) -> Option<Duration> {
        RetentionSettings::horizon(self.retention.snapshots_full_days)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.server.shutdown_grace_secs)
    }

    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.api.stream_idle_timeout_secs)
    }

    /// `server.public_url`'s origin (`scheme://host[:port]`), if set.
    pub fn public_origin(&self) -> Option<String> {
        let url = url::Url::parse(self.server.public_url.as_deref()?).ok()?;
        Some(url.origin().ascii_serialization())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(environment_file: &str) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("check.toml"), environment_file).expect("write");
        Settings::load_from(dir.path(), "check")
    }

    #[test]
    fn the_environment_file_layers_over_the_defaults() {
        let settings = load_with("[api]\npage_size = 25\n").expect("valid");
        assert_eq!(settings.api.page_size, 25);
        assert_eq!(
            settings.accounts.owner_metadata_key, "accountid",
            "defaults stay"
        );
    }

    #[test]
    fn a_bad_value_is_an_error_naming_its_key() {
        let error = load_with("[api]\npage_size = 0\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("api.page_size"), "{error}");
        let error = load_with("[stripe]\napi_base = \"not a url\"\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("stripe.api_base"), "{error}");
        let error = load_with("[server]\nbind = \"nowhere\"\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("bind"), "{error}");
        let error = load_with("[server]\nmetrics_bind = \"127.0.0.1:8080\"\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("server.metrics_bind"), "{error}");
    }

    #[test]
    fn a_sync_lease_is_thirty_seconds_unless_set_and_never_zero() {
        assert_eq!(load_with("").expect("valid").sync.lease_secs, 30);
        let error = load_with("[sync]\nlease_secs = 0\n")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("sync.lease_secs"), "{error}");
    }

    #[test]
    fn connection_limits_have_defaults_and_are_never_zero() {
        let settings = load_with("").expect("valid");
        assert_eq!(settings.server.header_read_timeout_secs, 10);
        assert_eq!(settings.server.keep_alive_timeout_secs, 75);
        assert_eq!(settings.server.max_connections, 4096);
        for (file, key) in [
            (
                "[server]\nheader_read_timeout_secs = 0\n",
                "server.header_read_timeout_secs",
            ),
            (
                "[server]\nkeep_alive_timeout_secs = 0\n",
                "server.keep_alive_timeout_secs",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\npublic_url = \"tally.example.com\"\n",
                "server.public_url",
            ),
        ] {
            let error = load_with(file).expect_err("refused").to_string();
            assert!(error.contains(key), "{error}");
        }
        let settings = load_with("[server]\npublic_url = \"https://tally.example.com/admin\"\n")
            .expect("valid");
        assert_eq!(
            settings.public_origin().as_deref(),
            Some("https://tally.example.com")
        );
        assert!(!settings.server.trust_forwarded_headers);
    }

    #[test]
    fn retention_keeps_the_audit_and_webhook_minimums_and_days_the_close_needs() {
        let settings = load_with("").expect("valid");
        assert_eq!(settings.retention.audit_days, AUDIT_MINIMUM_DAYS);
        assert_eq!(settings.retention.ledger_days, 35);
        assert!(settings.retention.enabled);
        for (file, key) in [
            ("[retention]\naudit_days = 399\n", "retention.audit_days"),
            ("[retention]\naudit_days = 30\n", "retention.audit_days"),
            (
                "[retention]\nwebhook_events_days = 2\n",
                "retention.webhook_events_days",
            ),
            ("[retention]\ncloses_days = 36\n", "retention.closes_days"),
            ("[retention]\nledger_days = 0\n", "retention.closes_days"),
            (
                "[retention]\nsnapshots_full_days = 0\n",
                "retention.snapshots_days",
            ),
            ("[retention]\nbatch_size = 0\n", "retention.batch_size"),
            (
                "[retention]\nsync_runs_days = 100000000\n",
                "retention.sync_runs_days",
            ),
            (
                "[retention]\nlock_timeout_ms = 3600000\n",
                "retention.lock_timeout_ms",
            ),
        ] {
            let error = load_with(file).expect_err("refused").to_string();
            assert!(error.contains(key), "{file}: {error}");
        }
        let forever = load_with("[retention]\naudit_days = 0\nwebhook_events_days = 0\n")
            .expect("0 keeps forever");
        assert_eq!(forever.retention.audit_days, 0);
    }

    #[test]
    fn metrics_stay_on_the_api_address_unless_metrics_bind_is_set() {
        let settings = load_with("").expect("valid");
        assert_eq!(settings.server.metrics_bind, None);
        let settings = load_with("[server]\nmetrics_bind = \"127.0.0.1:9090\"\n").expect("valid");
        assert_eq!(
            settings.server.metrics_bind,
            Some("127.0.0.1:9090".parse().expect("address"))
        );
    }
}
