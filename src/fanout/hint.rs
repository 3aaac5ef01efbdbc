//! What to do about a failed balance fetch, in words an operator can act on.

use crate::domain::StripeAccountId;
use crate::stripe::{CredentialKind, StripeError};

/// The hint for `error` when fetching `account` (controlled by `platform`, if any)
/// with a credential of `kind`.
pub fn hint(
    kind: CredentialKind,
    account: &StripeAccountId,
    platform: Option<&StripeAccountId>,
    error: &StripeError,
) -> String {
    let status = error.status();
    let code = error.code();
    match (kind, status, code) {
        (_, Some(401), _) => "Stripe rejected the tenant's key: it was rolled or revoked. Give the tenant its \
             current key (tally tenant set-key)."
            .to_owned(),
        (CredentialKind::Platform, Some(403), Some("account_invalid")) => format!(
            "The platform key has no access to {account}: it is not connected to this platform, or the \
             platform's access was revoked (deauthorized). Run `tally sync` to mark it removed, or check \
             the account id."
        ),
        (CredentialKind::Organization, Some(403), _) => match platform {
            None => format!(
                "The organization key cannot reach {account} as an account directly in the organization. \
                 If it is a connected account under a platform, its Stripe-Context must be \
                 platform/account: add the platform to the tenant (--platform acct_P) and sync, so the \
                 account is recorded with its platform."
            ),
            Some(platform) => format!(
                "The organization key cannot reach {account} under platform {platform} \
                 (Stripe-Context: {platform}/{account}): check that the platform is in the organization \
                 and the account is still connected to it."
            ),
        },
        (_, Some(403), _) => format!("Stripe refused access to {account}; check the key's permissions."),
        (_, Some(404), _) => format!("Stripe does not know {account}; run `tally sync` to refresh the account list."),
        (_, Some(429), _) => "Still rate limited by Stripe after every retry: lower the tenant's rate \
             (--rate-limit) or spread refreshes out; the next request retries it."
            .to_owned(),
        (_, Some(status), _) if status >= 500 => "Stripe answered with a server error after every retry; \
             it is usually transient, so the next refresh retries it."
            .to_owned(),
        (_, Some(400), _) => "Stripe refused the request as malformed; check the tenant's API version and \
             API base URL."
            .to_owned(),
        _ => match error {
            StripeError::Transport { timeout: true, .. } => "Stripe did not answer in time after every \
                 retry; check network egress to the API base URL."
                .to_owned(),
            StripeError::Transport { .. } => "Stripe could not be reached (connection failed) after every \
                 retry; check network egress and the tenant's API base URL."
                .to_owned(),
            StripeError::Decode { .. } => "Stripe's answer was not a balance object (a proxy in the way, \
                 or an API version tally does not read); check the API base URL and version."
                .to_owned(),
            _ => "See the message; the next refresh retries the account.".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::ApiErrorBody;

    fn acct(id: &str) -> StripeAccountId {
        StripeAccountId::parse(id).expect("an acct_ id")
    }

    fn api(status: u16, code: Option<&str>) -> StripeError {
        StripeError::Api {
            status,
            error: Box::new(ApiErrorBody {
                r#type: "invalid_request_error".into(),
                code: code.map(str::to_owned),
                message: Some("m".into()),
                param: None,
                doc_url: None,
                request_log_url: None,
                decline_code: None,
            }),
            request_id: Some("req_1".into()),
        }
    }

    #[test]
    fn an_org_key_without_the_platform_is_told_to_use_platform_slash_account() {
        let h = hint(
            CredentialKind::Organization,
            &acct("acct_X"),
            None,
            &api(403, None),
        );
        assert!(
            h.contains("platform/account") && h.contains("--platform"),
            "{h}"
        );
        let h = hint(
            CredentialKind::Organization,
            &acct("acct_X"),
            Some(&acct("acct_P")),
            &api(403, None),
        );
        assert!(h.contains("acct_P/acct_X"), "{h}");
    }

    #[test]
    fn a_platform_key_for_a_foreign_or_revoked_account_is_told_so() {
        let h = hint(
            CredentialKind::Platform,
            &acct("acct_X"),
            None,
            &api(403, Some("account_invalid")),
        );
        assert!(h.contains("not connected") && h.contains("revoked"), "{h}");
    }

    #[test]
    fn rate_limits_outages_and_bad_keys_each_get_their_own_advice() {
        let kind = CredentialKind::Platform;
        assert!(
            hint(kind, &acct("acct_a"), None, &api(429, Some("rate_limit")))
                .contains("rate limited")
        );
        assert!(hint(kind, &acct("acct_a"), None, &api(503, None)).contains("server error"));
        assert!(hint(kind, &acct("acct_a"), None, &api(401, None))
            .contains("rejected the tenant's key"));
        let unreachable = StripeError::Transport {
            detail: "refused".into(),
            timeout: false,
        };
        assert!(hint(kind, &acct("acct_a"), None, &unreachable).contains("could not be reached"));
        let slow = StripeError::Transport {
            detail: "timed out".into(),
            timeout: true,
        };
        assert!(hint(kind, &acct("acct_a"), None, &slow).contains("did not answer in time"));
    }
}
