//! Sessions of the admin pages and what guards them, as extractors.
//!
//! Signing in exchanges a pasted API token for a random session id held in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the request came over TLS or
//! with `X-Forwarded-Proto: https`) that expires after [`SESSION_TTL`]. Only the
//! id's SHA-256 is stored, tied to the token's id; every page looks the session up
//! with its token, uncached, so revoking or expiring the token ends the session on
//! every replica at once. The token itself is never in the cookie or a URL.
//!
//! A form that changes something carries a per-session CSRF token (derived from the
//! session id, so nothing more is stored), and its request must come from the page's
//! own origin (`Sec-Fetch-Site: same-origin`, `Origin` equal to the pages' own: the
//! configured `server.public_url`, else the `Host` the request was sent to; a proxy's
//! `X-Forwarded-Host`/`-Proto` count only with `server.trust_forwarded_headers`).

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::Form;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AdminError;
use crate::domain::Role;
use crate::http::auth::Caller;
use crate::http::AppState;
use crate::store;
use crate::store::tenants::Tenant;

pub const COOKIE: &str = "tally_admin_session";
/// How long a session lasts without signing in again (less if its token ends first).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// A new session id (for the cookie only) and the hash that is stored.
pub fn new_session_id() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let id = URL_SAFE_NO_PAD.encode(bytes);
    let hash = session_hash(&id);
    (id, hash)
}

fn session_hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The session's CSRF token: only someone holding the session id can compute it,
/// and it differs from the stored hash.
pub fn csrf_for(session_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tally-admin-csrf\0");
    hasher.update(session_id.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether the request reached us over TLS (directly or through a proxy that says so).
pub fn came_over_tls(parts: &Parts) -> bool {
    let forwarded = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    forwarded || parts.uri.scheme_str() == Some("https")
}

/// `Set-Cookie` for a new session.
pub fn session_cookie(id: &str, secure: bool) -> HeaderValue {
    cookie_value(id, SESSION_TTL.as_secs(), secure)
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn cleared_cookie(secure: bool) -> HeaderValue {
    cookie_value("", 0, secure)
}

fn cookie_value(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of base64url characters is a valid header value")
}

fn cookie_in(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// A signed-in person: who their token says they are, and their session's CSRF token.
#[derive(Clone)]
pub struct AdminSession {
    pub caller: Caller,
    pub csrf: String,
    hash: Vec<u8>,
}

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSession")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl AdminSession {
    pub fn may_change(&self) -> bool {
        matches!(self.caller.role, Role::Owner | Role::Admin)
    }

    /// Refuses a form whose CSRF token is not this session's (constant time).
    pub fn check_csrf(&self, presented: &str) -> Result<(), AdminError> {
        if constant_time_eq(presented.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(AdminError::BadCsrf)
        }
    }

    /// Ends the session (sign-out).
    pub async fn end(&self, state: &AppState) -> Result<(), sqlx::Error> {
        store::admin::delete_session(&state.pool, &self.hash).await
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session of the request, if it has a live one.
pub async fn current(parts: &Parts, state: &AppState) -> Result<Option<AdminSession>, AdminError> {
    let Some(id) = cookie_in(&parts.headers) else {
        return Ok(None);
    };
    let hash = session_hash(&id);
    let Some(grant) = store::admin::find_session(&state.pool, &hash).await? else {
        return Ok(None);
    };
    let role = Role::parse(&grant.role)
        .ok_or_else(|| AdminError::internal("stored token has an unknown role"))?;
    let tenant = match grant.tenant_id {
        Some(id) => match store::tenants::find_by_id(&state.pool, id).await? {
            Some(tenant) => Some(std::sync::Arc::new(tenant)),
            None => return Ok(None),
        },
        None => None,
    };
    Ok(Some(AdminSession {
        caller: Caller {
            token_id: grant.token_id,
            role,
            tenant,
        },
        csrf: csrf_for(&id),
        hash,
    }))
}

impl FromRequestParts<AppState> for AdminSession {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        if let Some(session) = parts.extensions.get::<AdminSession>() {
            return Ok(session.clone());
        }
        let session = current(parts, state).await?.ok_or(AdminError::SignIn {
            secure: came_over_tls(parts),
        })?;
        parts.extensions.insert(session.clone());
        Ok(session)
    }
}

/// A request that comes from the admin page's own origin. Browsers say where a
/// request comes from in `Sec-Fetch-Site` and `Origin`; either, when present, must
/// name this origin. (A client that sends neither is no browser, so no cross-site
/// forgery; it still needs the session's CSRF token.)
pub struct SameOrigin;

/// How the admin pages know their own origin.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `server.public_url`'s origin: when set, the only one.
    pub public_origin: Option<String>,
    /// `server.trust_forwarded_headers`: a proxy's `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` say it. Without it they are a client's word, and ignored.
    pub trust_forwarded: bool,
}

impl OriginPolicy {
    pub fn from_settings(settings: &crate::config::Settings) -> OriginPolicy {
        OriginPolicy {
            public_origin: settings.public_origin(),
            trust_forwarded: settings.server.trust_forwarded_headers,
        }
    }

    /// The pages' own origin: configured; else what a trusted proxy forwards; else the
    /// `Host` this request was sent to, over plain HTTP (tally does not terminate TLS).
    fn own_origin(&self, parts: &Parts) -> Option<String> {
        if let Some(origin) = &self.public_origin {
            return Some(origin.clone());
        }
        let first = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let forwarded = |name: &str| {
            if self.trust_forwarded {
                first(name)
            } else {
                None
            }
        };
        let host = forwarded("x-forwarded-host").or_else(|| first(header::HOST.as_str()))?;
        let scheme = match forwarded("x-forwarded-proto") {
            Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
            _ if parts.uri.scheme_str() == Some("https") => "https",
            _ => "http",
        };
        Some(format!("{scheme}://{host}"))
    }
}

pub fn check_same_origin(parts: &Parts, policy: &OriginPolicy) -> Result<(), AdminError> {
    if let Some(site) = parts.headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return Err(AdminError::CrossSite);
        }
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| AdminError::CrossSite)?;
        match policy.own_origin(parts) {
            Some(own) if own.eq_ignore_ascii_case(origin) => {}
            _ => return Err(AdminError::CrossSite),
        }
    }
    Ok(())
}

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        check_same_origin(parts, &OriginPolicy::from_settings(&state.settings))?;
        Ok(SameOrigin)
    }
}

/// A signed-in person allowed to see the tenant the path names: an owner (any
/// tenant), or that tenant's own admin or reader. Another tenant answers as an
/// unknown one.
pub struct TenantPage {
    pub session: AdminSession,
    pub tenant: Tenant,
}

impl FromRequestParts<AppState> for TenantPage {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        let session = AdminSession::from_request_parts(parts, state).await?;
        let Path(slug) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AdminError::UnknownTenant)?;
        if let Some(own) = &session.caller.tenant {
            if own.slug != slug {
                return Err(AdminError::UnknownTenant);
            }
        }
        let tenant = store::tenants::find_by_slug(&state.pool, &slug)
            .await?
            .ok_or(AdminError::UnknownTenant)?;
        // As the API answers an owner naming it: shown nowhere, and nothing starts for it.
        if tenant.disabled_at.is_some() {
            return Err(AdminError::TenantRemoved);
        }
        Ok(TenantPage { session, tenant })
    }
}

/// [`TenantPage`] for someone who may start a sync or a refresh: owner or admin.
pub struct TenantPageAdmin(pub TenantPage);

impl FromRequestParts<AppState> for TenantPageAdmin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        let page = TenantPage::from_request_parts(parts, state).await?;
        if !page.session.may_change() {
            return Err(AdminError::Forbidden);
        }
        Ok(TenantPageAdmin(page))
    }
}

/// Whatever carries the signed-in session.
pub trait SignedIn {
    fn session(&self) -> &AdminSession;
}

impl SignedIn for AdminSession {
    fn session(&self) -> &AdminSession {
        self
    }
}

impl SignedIn for TenantPageAdmin {
    fn session(&self) -> &AdminSession {
        &self.0.session
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form post that changes something: from the page's own origin, by a caller `T`
/// allows, carrying the session's CSRF token — checked in that order.
pub struct Posted<T>(pub T);

impl<T> FromRequest<AppState> for Posted<T>
where
    T: FromRequestParts<AppState, Rejection = AdminError> + SignedIn + Send,
{
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, AdminError> {
        let (mut parts, body) = request.into_parts();
        check_same_origin(&parts, &OriginPolicy::from_settings(&state.settings))?;
        let caller = T::from_request_parts(&mut parts, state).await?;
        let presented = Form::<CsrfForm>::from_request(Request::from_parts(parts, body), state)
            .await
            .map(|Form(form)| form.csrf)
            .unwrap_or_default();
        caller.session().check_csrf(&presented)?;
        Ok(Posted(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::post("/admin/tenants/acme/sync");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_the_pages_own_origin_may_post() {
        let check_same_origin = |parts: &Parts| check_same_origin(parts, &OriginPolicy::default());
        let host = ("host", "127.0.0.1:8080");
        assert!(check_same_origin(&parts(&[host])).is_ok());
        assert!(check_same_origin(&parts(&[
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin")
        ]))
        .is_ok());
        for bad in [
            vec![host, ("origin", "http://127.0.0.1:9999")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "https://127.0.0.1:8080")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "none")],
        ] {
            assert!(
                matches!(check_same_origin(&parts(&bad)), Err(AdminError::CrossSite)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_origin_is_configured_or_the_host_and_forwarded_headers_count_only_when_trusted() {
        let host = ("host", "127.0.0.1:8080");
        let forged = [
            host,
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://evil.example"),
        ];
        let untrusted = OriginPolicy::default();
        assert!(matches!(
            check_same_origin(&parts(&forged), &untrusted),
            Err(AdminError::CrossSite)
        ));
        // The Host it was sent to stays the origin whatever a client forwards.
        let own = [
            host,
            ("x-forwarded-host", "evil.example"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert!(check_same_origin(&parts(&own), &untrusted).is_ok());
        // Behind a trusted TLS proxy, the proxy says it.
        let trusted = OriginPolicy {
            trust_forwarded: true,
            ..OriginPolicy::default()
        };
        let proxied = [
            host,
            ("x-forwarded-host", "tally.example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://tally.example.com"),
        ];
        assert!(check_same_origin(&parts(&proxied), &trusted).is_ok());
        assert!(check_same_origin(&parts(&proxied), &untrusted).is_err());
        // Configured, it is the only one.
        let configured = OriginPolicy {
            public_origin: Some("https://tally.example.com".into()),
            trust_forwarded: true,
        };
        assert!(check_same_origin(&parts(&proxied), &configured).is_ok());
        assert!(matches!(
            check_same_origin(&parts(&own), &configured),
            Err(AdminError::CrossSite)
        ));
    }

    #[test]
    fn the_cookie_is_httponly_strict_and_secure_only_over_tls() {
        let plain = session_cookie("abc", false);
        let plain = plain.to_str().expect("ascii");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Max-Age=28800") && !plain.contains("Secure"));
        let tls = session_cookie("abc", true);
        assert!(tls.to_str().expect("ascii").ends_with("; Secure"));
        assert!(parts(&[("x-forwarded-proto", "https")]).headers.len() == 1);
        assert!(came_over_tls(&parts(&[("x-forwarded-proto", "https")])));
        assert!(!came_over_tls(&parts(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let p = parts(&[("cookie", "a=1; tally_admin_session=xyz; b=2")]);
        assert_eq!(cookie_in(&p.headers).as_deref(), Some("xyz"));
        assert_eq!(
            cookie_in(&parts(&[("cookie", "tally_admin_session=")]).headers),
            None
        );
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_from_the_stored_hash() {
        let (a, hash_a) = new_session_id();
        let (b, _) = new_session_id();
        assert_ne!(csrf_for(&a), csrf_for(&b));
        assert_ne!(csrf_for(&a), hex::encode(hash_a));
        assert_eq!(csrf_for(&a), csrf_for(&a));
    }
}
