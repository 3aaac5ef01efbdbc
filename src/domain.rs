//! Newtypes parsed at the edge (STYLE: parse, don't validate), so the core never
//! re-checks strings.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// How every timestamp leaves tally (API bodies, CSV): RFC 3339 in UTC with
/// milliseconds, as the Dashboard module writes `createdAt`.
pub fn api_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A Stripe account id: `acct_` followed by letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StripeAccountId(String);

impl StripeAccountId {
    pub fn parse(value: &str) -> Option<StripeAccountId> {
        let rest = value.strip_prefix("acct_")?;
        let well_formed = !rest.is_empty()
            && rest.len() <= 255
            && rest.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then(|| StripeAccountId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StripeAccountId {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        StripeAccountId::parse(&value).ok_or_else(|| format!("not a Stripe account id: {value:?}"))
    }
}

impl From<StripeAccountId> for String {
    fn from(id: StripeAccountId) -> String {
        id.0
    }
}

impl fmt::Display for StripeAccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's slug: lowercase letters, digits, `-` and `_`, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(value: &str) -> Option<TenantSlug> {
        let mut bytes = value.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        (first_ok && rest_ok && value.len() <= 63).then(|| TenantSlug(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an API token may do (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every tenant; manages tenants and tokens.
    Owner,
    /// One tenant: read, trigger sync and refresh.
    Admin,
    /// One tenant: read.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_account_ids_are_parsed_strictly() {
        assert!(StripeAccountId::parse("acct_1LEBrTDFE7gToZYy").is_some());
        for bad in ["", "acct_", "acct_12 3", "cus_123", "acct_1;drop", "ACCT_1"] {
            assert!(StripeAccountId::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenant_slugs_are_lowercase_words() {
        assert!(TenantSlug::parse("acme-eu_1").is_some());
        for bad in ["", "-acme", "Acme", "a b", &"a".repeat(64)] {
            assert!(TenantSlug::parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
