//! Secret keys and DESIGN §1's header rules: which account a request acts as.

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;

use super::errors::SimError;
use super::world::{Home, KeyOwner, World};

/// An authenticated key.
#[derive(Clone, Debug)]
pub struct Caller {
    pub owner: KeyOwner,
    /// The key, masked as Stripe shows it in messages (the full key is never kept here).
    pub masked: String,
    /// Names the key in stats and logs: the platform id, or `org`.
    pub label: String,
    /// A restricted key's permissions; `None` for a secret key.
    pub permissions: Option<Vec<String>>,
}

/// The account a request acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acting {
    /// Index into `World::accounts`.
    pub account: usize,
    /// Set when the acting account is a platform (it may list and create accounts).
    pub platform: Option<usize>,
}

const KEY_PREFIXES: [&str; 9] = [
    "sk_org_test_",
    "sk_org_live_",
    "sk_org_",
    "sk_test_",
    "sk_live_",
    "rk_test_",
    "rk_live_",
    "pk_test_",
    "pk_live_",
];

/// Masks a key the way Stripe's messages do: the prefix and the last four characters stay.
pub fn mask_key(key: &str) -> String {
    let prefix = KEY_PREFIXES
        .iter()
        .find(|p| key.starts_with(*p))
        .map_or("", |p| *p);
    let rest: Vec<char> = key[prefix.len()..].chars().collect();
    let shown = rest.len().min(4);
    let hidden = rest.len() - shown;
    let last: String = rest[hidden..].iter().collect();
    format!("{prefix}{}{last}", "*".repeat(hidden))
}

/// Reads the key from `Authorization: Bearer <key>` or HTTP Basic with the key as the
/// user name (what curl -u and several SDKs send).
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string()).filter(|k| !k.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let user = decoded.split(':').next().unwrap_or_default();
        return Some(user.to_string()).filter(|k| !k.is_empty());
    }
    None
}

pub fn authenticate(headers: &HeaderMap, world: &World) -> Result<Caller, SimError> {
    let Some(key) = presented_key(headers) else {
        return Err(SimError::invalid(
            StatusCode::UNAUTHORIZED,
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, \
             or we can help at https://support.stripe.com/.",
        ));
    };
    let masked = mask_key(&key);
    let Some(owner) = world.key_owner(&key) else {
        return Err(SimError::invalid(
            StatusCode::UNAUTHORIZED,
            format!("Invalid API Key provided: {masked}"),
        ));
    };
    if world.is_expired(&key) {
        return Err(SimError::invalid(
            StatusCode::UNAUTHORIZED,
            format!("Expired API Key provided: {masked}"),
        ));
    }
    let label = match owner {
        KeyOwner::Platform(p) => world.platforms[p].id.clone(),
        KeyOwner::Org => "org".to_string(),
    };
    Ok(Caller {
        owner,
        masked,
        label,
        permissions: world.key_permissions(&key).map(<[String]>::to_vec),
    })
}

/// The permission a restricted key needs for a route (`GET /v1/balance`, …).
fn required_permission(route: &str) -> Option<&'static str> {
    match route {
        "GET /v1/balance"
        | "GET /v1/balance_transactions"
        | "GET /v1/balance_transactions/{id}" => Some("rak_balance_read"),
        "GET /v1/webhook_endpoints" | "GET /v1/webhook_endpoints/{id}" => Some("rak_webhook_read"),
        "POST /v1/webhook_endpoints"
        | "POST /v1/webhook_endpoints/{id}"
        | "DELETE /v1/webhook_endpoints/{id}" => Some("rak_webhook_write"),
        "GET /v1/account" | "GET /v1/accounts" | "GET /v1/accounts/{id}" => {
            Some("rak_accounts_read")
        }
        "POST /v1/accounts" => Some("rak_accounts_write"),
        _ => None,
    }
}

/// A restricted key without the route's permission gets Stripe's 403, naming the
/// permission and the account the request acts on.
pub fn authorize(caller: &Caller, route: &str, headers: &HeaderMap) -> Result<(), SimError> {
    let (Some(permissions), Some(required)) = (&caller.permissions, required_permission(route))
    else {
        return Ok(());
    };
    if permissions.iter().any(|p| p == required) {
        return Ok(());
    }
    let account = header(headers, "stripe-account")
        .or_else(|| header(headers, "stripe-context"))
        .unwrap_or(&caller.label);
    Err(SimError::invalid(
        StatusCode::FORBIDDEN,
        format!(
            "The provided key '{}' does not have the required permissions for this endpoint \
             on account '{account}'. Having the '{required}' permission would allow this \
             request to continue.",
            caller.masked
        ),
    ))
}

/// A header's value, with an empty value treated as absent (as SDKs send none for None).
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn bad_header(message: &str) -> SimError {
    SimError::invalid(StatusCode::BAD_REQUEST, message).violation()
}

/// Applies DESIGN §1: which header each key may send and what it may reach.
pub fn resolve(caller: &Caller, headers: &HeaderMap, world: &World) -> Result<Acting, SimError> {
    let account = header(headers, "stripe-account");
    let context = header(headers, "stripe-context");
    if account.is_some() && context.is_some() {
        return Err(bad_header(
            "You cannot set both the Stripe-Account and the Stripe-Context header on the same \
             request. Use Stripe-Context.",
        ));
    }
    match caller.owner {
        KeyOwner::Platform(p) => resolve_platform(caller, p, account, context, world),
        KeyOwner::Org => {
            if header(headers, "stripe-version").is_none() {
                return Err(bad_header(
                    "Requests made with an organization API key must set the Stripe-Version \
                     header to an explicit API version.",
                )
                .param("Stripe-Version"));
            }
            if account.is_some() {
                return Err(bad_header(
                    "The Stripe-Account header cannot be used with an organization API key. \
                     Use the Stripe-Context header to name the account instead.",
                ));
            }
            let Some(context) = context else {
                return Err(bad_header(
                    "Requests made with an organization API key must set the Stripe-Context \
                     header to the account the request is for.",
                ));
            };
            resolve_org_context(context, world)
        }
    }
}

fn resolve_platform(
    caller: &Caller,
    p: usize,
    account: Option<&str>,
    context: Option<&str>,
    world: &World,
) -> Result<Acting, SimError> {
    let platform = &world.platforms[p];
    let own = Acting {
        account: platform.account,
        platform: Some(p),
    };
    // Stripe-Context supersedes Stripe-Account (docs.stripe.com/context): a platform
    // key may name its own connected account either way, or as `P/X` with itself as P.
    let context_account = match context.map(|c| c.split('/').collect::<Vec<_>>()) {
        None => None,
        Some(segments) => match segments.as_slice() {
            [account] => Some(*account),
            [p_id, account] if *p_id == platform.id => Some(*account),
            _ => {
                return Err(account_invalid(&caller.masked, context.unwrap_or_default()).violation())
            }
        },
    };
    let account = account.or(context_account);
    match account {
        None => Ok(own),
        Some(id) if id == platform.id => Ok(own),
        Some(id) => match world.connected_index(id, p) {
            Some(account) => Ok(Acting {
                account,
                platform: None,
            }),
            None => Err(account_invalid(&caller.masked, id).violation()),
        },
    }
}

/// 403 for an account the key cannot reach, worded as Stripe words it.
pub fn account_invalid(masked_key: &str, account: &str) -> SimError {
    SimError::invalid(
        StatusCode::FORBIDDEN,
        format!(
            "The provided key '{masked_key}' does not have access to account '{account}' (or \
             that account does not exist). Application access may have been revoked."
        ),
    )
    .code("account_invalid")
}

fn permission_denied(account: &str) -> SimError {
    SimError::invalid(
        StatusCode::FORBIDDEN,
        format!(
            "Permission denied. API Key does not have permission to access account \
             '{account}'. If this account is connected to a platform in your organization, \
             you may also need to supply an Account ID in the Stripe-Context header in the \
             form '<platform account ID>/<connected account ID>'."
        ),
    )
    .violation()
}

/// An organization key reaches accounts directly in the org (`X`) and connected accounts
/// through their platform (`P/X`); a bare connected account id is the classic mistake.
fn resolve_org_context(context: &str, world: &World) -> Result<Acting, SimError> {
    let segments: Vec<&str> = context.split('/').collect();
    match segments.as_slice() {
        [id] => {
            let found = world.by_id.get(*id).map(|&i| (i, world.accounts[i].home));
            match found {
                Some((account, Home::Platform(p))) => Ok(Acting {
                    account,
                    platform: Some(p),
                }),
                Some((account, Home::Org)) => Ok(Acting {
                    account,
                    platform: None,
                }),
                _ => Err(permission_denied(id)),
            }
        }
        [platform_id, id] => {
            let account = world
                .platform_index(platform_id)
                .and_then(|p| world.connected_index(id, p));
            match account {
                Some(account) => Ok(Acting {
                    account,
                    platform: None,
                }),
                None => Err(permission_denied(id)),
            }
        }
        _ => Err(permission_denied(context)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_stripe() {
        assert_eq!(mask_key("sk_test_abcdefgh1234"), "sk_test_********1234");
        assert_eq!(mask_key("sk_org_test_xyz9876"), "sk_org_test_***9876");
        assert_eq!(mask_key("abc"), "abc");
        assert_eq!(mask_key("nonsense-key"), "********-key");
    }
}
