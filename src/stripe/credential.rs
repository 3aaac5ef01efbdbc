//! A tenant's Stripe credential and the kind of key it is (DESIGN §1).

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Stripe's production API; tests and the simulator override it per tenant.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com/";

/// Which account header a key needs (see [`crate::stripe::headers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A platform's secret or restricted key: targets accounts with `Stripe-Account`.
    Platform,
    /// An organization key: targets accounts with `Stripe-Context`.
    Organization,
}

/// Prefixes Stripe issues for platform keys. There is no restricted organization key (`rk_org_`).
const PLATFORM_PREFIXES: [&str; 4] = ["sk_live_", "sk_test_", "rk_live_", "rk_test_"];
const ORGANIZATION_PREFIX: &str = "sk_org_";

impl CredentialKind {
    /// Infers the kind from the key's prefix. The error never repeats the key, because the
    /// usual mistake (pasting a publishable key, or a key with a stray character) still
    /// leaves most of a live secret in the input.
    pub fn from_key(key: &str) -> Result<CredentialKind, UnknownKeyPrefix> {
        if key.starts_with(ORGANIZATION_PREFIX) {
            Ok(CredentialKind::Organization)
        } else if PLATFORM_PREFIXES.iter().any(|p| key.starts_with(p)) {
            Ok(CredentialKind::Platform)
        } else {
            Err(UnknownKeyPrefix)
        }
    }

    /// The stored / displayed name: `"platform"` or `"organization"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::Platform => "platform",
            CredentialKind::Organization => "organization",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the name written by [`CredentialKind::as_str`] (database column, config), not a key.
impl FromStr for CredentialKind {
    type Err = UnknownCredentialKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "platform" => Ok(CredentialKind::Platform),
            "organization" => Ok(CredentialKind::Organization),
            _ => Err(UnknownCredentialKind),
        }
    }
}

/// The key does not start with a prefix tally accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unrecognised Stripe key prefix: expected a platform key (sk_live_, sk_test_, rk_live_, \
     rk_test_) or an organization key (sk_org_)"
)]
pub struct UnknownKeyPrefix;

/// The text is not `"platform"` or `"organization"`. The input is not echoed in case a key
/// was passed by mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown credential kind: expected \"platform\" or \"organization\"")]
pub struct UnknownCredentialKind;

/// Everything needed to call Stripe on behalf of one tenant.
#[derive(Clone)]
pub struct Credential {
    pub kind: CredentialKind,
    pub key: SecretString,
    /// Sent as `Stripe-Version` on every request (organization keys require it; pinning it for
    /// platform keys too keeps response shapes identical across tenants).
    pub api_version: String,
    pub base_url: Url,
}

impl Credential {
    /// Builds a credential, inferring its kind from the key prefix.
    pub fn new(
        key: SecretString,
        api_version: impl Into<String>,
        base_url: Url,
    ) -> Result<Credential, UnknownKeyPrefix> {
        let kind = CredentialKind::from_key(key.expose_secret())?;
        Ok(Credential {
            kind,
            key,
            api_version: api_version.into(),
            base_url,
        })
    }

    /// The last four characters of the key, for logs and API responses.
    pub fn key_last4(&self) -> String {
        key_last4(self.key.expose_secret())
    }
}

/// Redacted: the key shows as its last four characters only.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("kind", &self.kind)
            .field("key", &format_args!("\"…{}\"", self.key_last4()))
            .field("api_version", &self.api_version)
            .field("base_url", &self.base_url.as_str())
            .finish()
    }
}

/// The last four characters of `key`. A key too short to be real (fewer than 8 characters)
/// yields `"****"`, so that showing "last4" never shows most of a malformed key.
pub fn key_last4(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 8 {
        return "****".to_owned();
    }
    chars[chars.len() - 4..].iter().collect()
}

/// The masked form used when scrubbing a key out of text: prefix kept, body hidden.
pub(crate) fn masked_key(key: &str) -> String {
    let prefix_len = key
        .match_indices('_')
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap_or(0);
    let prefix = key.get(..prefix_len).unwrap_or("");
    format!("{prefix}…{}", key_last4(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_prefixes_are_platform_keys() {
        for key in ["sk_live_abc", "sk_test_abc", "rk_live_abc", "rk_test_abc"] {
            assert_eq!(
                CredentialKind::from_key(key),
                Ok(CredentialKind::Platform),
                "{key}"
            );
        }
    }

    #[test]
    fn org_prefix_is_organization_key() {
        assert_eq!(
            CredentialKind::from_key("sk_org_abc"),
            Ok(CredentialKind::Organization)
        );
    }

    #[test]
    fn other_prefixes_are_rejected_without_echoing_the_key() {
        for key in [
            "rk_org_secretvalue",
            "pk_live_secretvalue",
            "whsec_secretvalue",
            "",
            "SK_TEST_secretvalue",
        ] {
            let err = CredentialKind::from_key(key).expect_err(key);
            let shown = err.to_string();
            assert!(!shown.contains("secretvalue"), "{shown}");
            assert!(
                shown.contains("sk_org_") && shown.contains("rk_test_"),
                "{shown}"
            );
        }
    }

    #[test]
    fn kind_round_trips_through_its_name() {
        for kind in [CredentialKind::Platform, CredentialKind::Organization] {
            assert_eq!(kind.as_str().parse::<CredentialKind>(), Ok(kind));
        }
        assert!("sk_test_x".parse::<CredentialKind>().is_err());
    }

    #[test]
    fn debug_shows_last4_only() {
        let cred = Credential::new(
            SecretString::from("sk_test_51Hsecretsecret1234"),
            "2025-03-31.basil",
            Url::parse(DEFAULT_BASE_URL).expect("constant URL parses"),
        )
        .expect("test key has a platform prefix");
        let shown = format!("{cred:?}");
        assert!(shown.contains("…1234"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(cred.kind, CredentialKind::Platform);
    }

    #[test]
    fn last4_of_short_keys_hides_everything() {
        assert_eq!(key_last4("sk_test_abcd1234"), "1234");
        assert_eq!(key_last4("abc"), "****");
        assert_eq!(key_last4("abcdefg"), "****");
    }

    #[test]
    fn masked_key_keeps_prefix_and_last4() {
        assert_eq!(masked_key("sk_test_51Habcdefgh9876"), "sk_test_…9876");
        assert_eq!(masked_key("sk_org_zzzzzzzz4321"), "sk_org_…4321");
    }
}
