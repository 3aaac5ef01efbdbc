//! Which account header a request carries (DESIGN §1's table). Every request that targets
//! an account goes through [`account_header`]; nothing else decides.

use crate::domain::StripeAccountId;
use crate::stripe::credential::CredentialKind;

pub const STRIPE_ACCOUNT: &str = "Stripe-Account";
pub const STRIPE_CONTEXT: &str = "Stripe-Context";
pub const STRIPE_VERSION: &str = "Stripe-Version";
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const REQUEST_ID: &str = "Request-Id";
pub const STRIPE_SHOULD_RETRY: &str = "Stripe-Should-Retry";

/// The one account header of a request. An enum, so a request can never carry both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountHeader {
    StripeAccount(String),
    StripeContext(String),
}

impl AccountHeader {
    pub fn name(&self) -> &'static str {
        match self {
            AccountHeader::StripeAccount(_) => STRIPE_ACCOUNT,
            AccountHeader::StripeContext(_) => STRIPE_CONTEXT,
        }
    }

    pub fn value(&self) -> &str {
        match self {
            AccountHeader::StripeAccount(v) | AccountHeader::StripeContext(v) => v,
        }
    }
}

/// The header that makes a request act on `account`.
///
/// `platform` is the platform that controls `account` (`None` for an account directly in
/// the organization). A platform key acts on its own connected accounts, so `platform` is
/// irrelevant there. An organization key must name the path from the organization:
/// `P/X` for a connected account X under platform P. Sending just `X` is the classic
/// failure: Stripe answers with a permission error.
pub fn account_header(
    kind: CredentialKind,
    account: &StripeAccountId,
    platform: Option<&StripeAccountId>,
) -> AccountHeader {
    match (kind, platform) {
        (CredentialKind::Platform, _) => AccountHeader::StripeAccount(account.to_string()),
        // Asking for the platform itself: it sits directly in the organization.
        (CredentialKind::Organization, Some(p)) if p == account => {
            AccountHeader::StripeContext(account.to_string())
        }
        (CredentialKind::Organization, Some(p)) => {
            AccountHeader::StripeContext(format!("{p}/{account}"))
        }
        (CredentialKind::Organization, None) => AccountHeader::StripeContext(account.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CredentialKind::{Organization, Platform};

    fn acct(id: &str) -> StripeAccountId {
        StripeAccountId::parse(id).expect("an acct_ id")
    }

    #[test]
    fn platform_key_connected_account_uses_stripe_account() {
        assert_eq!(
            account_header(Platform, &acct("acct_X"), None),
            AccountHeader::StripeAccount("acct_X".into())
        );
    }

    #[test]
    fn platform_key_ignores_the_platform_argument() {
        assert_eq!(
            account_header(Platform, &acct("acct_X"), Some(&acct("acct_P"))),
            AccountHeader::StripeAccount("acct_X".into())
        );
    }

    #[test]
    fn org_key_account_directly_in_org_uses_context_x() {
        let h = account_header(Organization, &acct("acct_X"), None);
        assert_eq!(h, AccountHeader::StripeContext("acct_X".into()));
        assert_eq!((h.name(), h.value()), ("Stripe-Context", "acct_X"));
    }

    #[test]
    fn org_key_connected_account_uses_context_platform_slash_account() {
        let h = account_header(Organization, &acct("acct_X"), Some(&acct("acct_P")));
        assert_eq!(h, AccountHeader::StripeContext("acct_P/acct_X".into()));
        assert_eq!(h.value(), "acct_P/acct_X");
    }

    #[test]
    fn org_key_platform_itself_is_not_doubled() {
        assert_eq!(
            account_header(Organization, &acct("acct_P"), Some(&acct("acct_P"))),
            AccountHeader::StripeContext("acct_P".into())
        );
    }

    #[test]
    fn header_names() {
        assert_eq!(
            AccountHeader::StripeAccount("a".into()).name(),
            "Stripe-Account"
        );
        assert_eq!(
            AccountHeader::StripeContext("a".into()).name(),
            "Stripe-Context"
        );
    }
}
