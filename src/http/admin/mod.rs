//! `/admin`: server-rendered pages for people (DESIGN §3), on the same roles and
//! tenant scoping as the API. Sign in with a token; an owner sees every tenant, a
//! tenant's admin or reader that tenant; admins and owners get buttons that start a
//! sync or a refresh (the same use cases as `POST /sync` and
//! `POST /balances/refreshes`).
//!
//! Templates are maud: markup written as Rust in the crate, checked and escaped at
//! compile time, with no template files, no build step beyond cargo and no runtime
//! loading. askama would do as well; maud won because the SVG chart is built from
//! Rust values anyway and one language for markup and logic keeps it in one place.
//! No JavaScript: forms and links only. These routes are not part of the API and
//! stay out of its OpenAPI document.

pub mod chart;
mod close_page;
mod pages;
pub mod session;

use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;

use self::session::{AdminSession, Posted, SameOrigin, TenantPage, TenantPageAdmin};
use super::auth::verify_token;
use super::error::{ApiError, Code};
use super::query;
use super::AppState;
use crate::audit::Actor;
use crate::balances::BalanceError;
use crate::dashboard::{self, DashboardError};
use crate::domain::OwnerId;
use crate::refresh::RefreshScope;
use crate::store;
use crate::store::sync_runs::Claim;
use crate::totals::TotalsError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(home))
        .route("/admin/", get(home))
        .route("/admin/login", get(login_form).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/tenants/{slug}", get(tenant_page))
        .route("/admin/tenants/{slug}/close", get(close_page::close_page))
        .route("/admin/tenants/{slug}/sync", post(start_sync))
        .route("/admin/tenants/{slug}/refresh", post(start_refresh))
        .layer(axum::middleware::from_fn(page_headers))
}

/// Why a page could not be shown, rendered as a page that says what to do.
#[derive(Debug)]
pub enum AdminError {
    /// No live session: back to the sign-in form.
    SignIn {
        secure: bool,
    },
    UnknownTenant,
    /// The tenant was removed (`tally tenant remove`): 404 `tenant-removed`, as the API.
    TenantRemoved,
    /// Signed in, but the role may not do this (a reader posting).
    Forbidden,
    /// A form posted from another origin.
    CrossSite,
    /// A form without this session's CSRF token.
    BadCsrf,
    Invalid {
        code: Code,
        message: String,
    },
    Api(ApiError),
}

impl AdminError {
    pub fn internal(message: &'static str) -> AdminError {
        AdminError::Api(ApiError::Internal(anyhow::anyhow!(message)))
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(error: sqlx::Error) -> AdminError {
        AdminError::Api(ApiError::from(error))
    }
}

impl From<ApiError> for AdminError {
    fn from(error: ApiError) -> AdminError {
        AdminError::Api(error)
    }
}

impl From<BalanceError> for AdminError {
    fn from(error: BalanceError) -> AdminError {
        AdminError::Api(ApiError::from(error))
    }
}

impl From<DashboardError> for AdminError {
    fn from(error: DashboardError) -> AdminError {
        match error {
            DashboardError::Balances(error) => AdminError::from(error),
            DashboardError::Totals(TotalsError::Database(error)) => AdminError::from(error),
            other => AdminError::Api(ApiError::Internal(other.into())),
        }
    }
}

fn back_home() -> Markup {
    html! { a href="/admin" { "Back to the admin page" } }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (code, title, message, what) = match self {
            AdminError::SignIn { secure } => {
                let mut response = Redirect::to("/admin/login").into_response();
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, session::cleared_cookie(secure));
                return response;
            }
            AdminError::UnknownTenant => (
                Code::UnknownTenant,
                "No such tenant",
                "There is no tenant by that name that you can see.".to_owned(),
                back_home(),
            ),
            AdminError::TenantRemoved => (
                Code::TenantRemoved,
                "Tenant removed",
                "That tenant was removed (tally tenant remove): its data is kept but not shown, and nothing can be synced or refreshed for it.".to_owned(),
                back_home(),
            ),
            AdminError::Forbidden => (
                Code::Forbidden,
                "Not allowed",
                "Starting a sync or a refresh needs an admin or owner token; you are signed in with a reader token.".to_owned(),
                html! { "Sign out and sign in with an admin or owner token, or ask one to do it. " (back_home()) },
            ),
            AdminError::CrossSite => (
                Code::CrossSiteRequest,
                "Refused",
                "This form was sent from another site, so nothing was done.".to_owned(),
                html! { "Use the buttons on the admin page itself. " (back_home()) },
            ),
            AdminError::BadCsrf => (
                Code::InvalidCsrfToken,
                "Refused",
                "This form did not come from your current session (it may be from before you signed in again), so nothing was done.".to_owned(),
                html! { "Reload the page and use its buttons again. " (back_home()) },
            ),
            AdminError::Invalid { code, message } => (
                code,
                "Cannot show that",
                message,
                back_home(),
            ),
            AdminError::Api(error) => {
                let status = error.status();
                if status.is_server_error() {
                    // Logged once, here, inside the request's span.
                    tracing::error!(error = ?error, code = %error.code(), "admin page failed");
                }
                let message = if status.is_server_error() {
                    "Something went wrong on the server; nothing secret is shown here. Try again; if it persists, the server log has the details under this request's X-Request-Id.".to_owned()
                } else {
                    error.to_string()
                };
                (error.code(), "Cannot show that", message, back_home())
            }
        };
        let page = pages::error_page(None, code.as_str(), title, &message, what);
        (code.status(), page).into_response()
    }
}

/// `/admin`: an owner's overview; a tenant token goes to its tenant's page.
async fn home(
    session: AdminSession,
    State(state): State<AppState>,
) -> Result<Response, AdminError> {
    if let Some(tenant) = &session.caller.tenant {
        return Ok(Redirect::to(&format!("/admin/tenants/{}", tenant.slug)).into_response());
    }
    let interval = Duration::from_secs(state.settings.refresh.interval_secs);
    let tenants = dashboard::overview(&state.pool, interval).await?;
    Ok(pages::overview(&session, &tenants).into_response())
}

async fn login_form(State(state): State<AppState>, parts: Parts) -> Result<Response, AdminError> {
    if session::current(&parts, &state).await?.is_some() {
        return Ok(Redirect::to("/admin").into_response());
    }
    Ok(pages::login(None).into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Exchanges a pasted token for a session cookie; the token goes no further.
async fn login(
    _: SameOrigin,
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, AdminError> {
    let refused =
        |message: &str| (StatusCode::UNAUTHORIZED, pages::login(Some(message))).into_response();
    let Ok(Form(form)) = form else {
        return Ok(refused("Paste a token into the field, then sign in."));
    };
    let caller = match verify_token(&state, form.token.trim()).await {
        Ok(caller) => caller,
        Err(ApiError::Refused { code: Code::TokenRevoked, .. }) => {
            return Ok(refused("That token was revoked. Ask an owner for a new one (tally token create)."))
        }
        Err(ApiError::Refused { code: Code::TokenExpired, .. }) => {
            return Ok(refused("That token has expired. Ask an owner for a new one (tally token create)."))
        }
        Err(ApiError::Refused { code: Code::TokenOfRemovedTenant, .. }) => {
            return Ok(refused("That token's tenant was removed, so its tokens no longer work."))
        }
        Err(ApiError::Refused { code: Code::Unauthorized, .. }) => {
            return Ok(refused("That is not a token this server knows. Check that you pasted all of it (it starts with tly_)."))
        }
        Err(other) => return Err(other.into()),
    };
    store::admin::delete_expired_sessions(&state.pool).await?;
    let (id, hash) = session::new_session_id();
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(session::SESSION_TTL)
            .expect("eight hours fit a chrono duration");
    store::admin::insert_session(&state.pool, &hash, caller.token_id, expires_at).await?;
    let mut response = Redirect::to("/admin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::session_cookie(&id, session::came_over_tls(&parts)),
    );
    Ok(response)
}

async fn logout(
    State(state): State<AppState>,
    parts: Parts,
    Posted(session): Posted<AdminSession>,
) -> Result<Response, AdminError> {
    session.end(&state).await?;
    let mut response = Redirect::to("/admin/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::cleared_cookie(session::came_over_tls(&parts)),
    );
    Ok(response)
}

/// `page` (1-based) and `owner` of the account table, and a notice to show.
struct TenantQuery {
    page: i64,
    owner: Option<OwnerId>,
    notice: Option<&'static str>,
}

fn tenant_query(raw: Option<&str>) -> Result<TenantQuery, AdminError> {
    let pairs = query::pairs(raw).map_err(|_| AdminError::Invalid {
        code: Code::InvalidQuery,
        message: "The address's query could not be read. Open the tenant from the admin page."
            .into(),
    })?;
    let param = |key: &str| query::first(&pairs, key);
    let page = match param("page") {
        None | Some("") => 1,
        Some(value) => value
            .parse::<i64>()
            .ok()
            .filter(|page| (1..=i64::MAX / 1_000_000).contains(page))
            .ok_or_else(|| AdminError::Invalid {
                code: Code::InvalidPage,
                message: "The page number must be a whole number from 1. Use the page links under the account table.".into(),
            })?,
    };
    let owner = match param("owner").map(str::trim) {
        None | Some("") => None,
        Some(value) => Some(OwnerId::parse(value).ok_or_else(|| AdminError::Invalid {
            code: Code::MalformedAccountid,
            message: format!(
                "An owner id is 1 to {} characters with no NUL. Clear the filter and try again.",
                OwnerId::MAX_CHARS
            ),
        })?),
    };
    Ok(TenantQuery {
        page,
        owner,
        notice: param("notice").and_then(pages::notice_text),
    })
}

async fn tenant_page(
    TenantPage { session, tenant }: TenantPage,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    let query = tenant_query(raw.as_deref())?;
    let view = dashboard::tenant_view(
        &state.balances(),
        &tenant,
        query.owner.as_ref(),
        query.page,
        state.settings.api.page_size,
    )
    .await?;
    let body = pages::tenant(&session, &tenant.slug, &view, query.notice);
    Ok(pages::layout(&format!("Tenant {}", tenant.slug), Some(&session), body).into_response())
}

fn back_to(slug: &str, notice: &str) -> Response {
    Redirect::to(&format!("/admin/tenants/{slug}?notice={notice}")).into_response()
}

async fn start_sync(
    State(state): State<AppState>,
    Posted(TenantPageAdmin(page)): Posted<TenantPageAdmin>,
) -> Result<Response, AdminError> {
    let by = Actor::token(page.session.caller.token_id);
    let notice = match super::sync::start_sync(&state, &page.tenant, &by).await? {
        Claim::Started(_) => "sync-started",
        Claim::Running(_) => "sync-running",
    };
    Ok(back_to(&page.tenant.slug, notice))
}

async fn start_refresh(
    State(state): State<AppState>,
    Posted(TenantPageAdmin(page)): Posted<TenantPageAdmin>,
) -> Result<Response, AdminError> {
    state
        .balances()
        .start_refresh(
            &page.tenant,
            RefreshScope::Tenant,
            Duration::ZERO,
            &Actor::token(page.session.caller.token_id),
        )
        .await?;
    Ok(back_to(&page.tenant.slug, "refresh-started"))
}

/// Answers with the same headers on every admin page: not cached, not framed.
pub async fn page_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}
