//! Account sync over the API: `POST /api/administrator/connect/sync` starts one in
//! the background; `GET /api/administrator/connect/sync/{id}` shows how it goes.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use serde_json::json;

use super::auth::{TenantAdmin, TenantScope};
use super::error::{ApiError, Code};
use super::openapi::{api_errors, one_of_strings, Access, TenantParam};
use super::AppState;
use crate::audit::{self, Actor};
use crate::domain::api_timestamp;
use crate::store;
use crate::store::sync_runs::{Claim, SyncRun};
use crate::store::tenants::Tenant;
use crate::sync::{self, SyncError, SyncOptions};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(show))
}

api_errors!(
    StartErrors,
    Access::TenantAdmin,
    [Code::TenantCredentialUnusable]
);
api_errors!(ShowErrors, Access::TenantRead, [Code::UnknownSyncid]);

/// Starts a sync: 202 with the new run, or 200 with the run already going (one sync
/// per tenant at a time; asking again while it runs is not an error).
#[utoipa::path(
    post,
    path = "/api/administrator/connect/sync",
    tag = "sync",
    operation_id = "startSync",
    description = "Import the tenant's accounts from Stripe, in the background (admin or \
        owner). One sync per tenant runs at a time across every process; asking while one \
        runs answers that run.",
    params(TenantParam),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A new run started.", body = SyncRunRecord),
        (status = 200, description = "A run was already going: that run.", body = SyncRunRecord),
        StartErrors,
    )
)]
async fn start(
    TenantAdmin(scope): TenantAdmin,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<SyncRunRecord>), ApiError> {
    let by = Actor::token(scope.token_id);
    Ok(match start_sync(&state, &scope.tenant, &by).await? {
        Claim::Started(run) => (
            StatusCode::ACCEPTED,
            Json(SyncRunRecord::new(&run, &scope.tenant.slug)),
        ),
        Claim::Running(run) => (
            StatusCode::OK,
            Json(SyncRunRecord::new(&run, &scope.tenant.slug)),
        ),
    })
}

/// Starts the tenant's sync in the background, or finds the one running (what
/// `POST /sync` and the admin page's button do), and records who asked.
pub async fn start_sync(state: &AppState, tenant: &Tenant, by: &Actor) -> Result<Claim, ApiError> {
    let client = state.stripe.client_for(tenant)?;
    let options = SyncOptions::from_settings(&state.settings);
    let claim = sync::start_in_background(
        state.pool.clone(),
        client,
        tenant.clone(),
        options,
        state.tasks.clone(),
    )
    .await
    .map_err(|error| match error {
        SyncError::Database(error) => ApiError::from(error),
        SyncError::TenantRemoved => ApiError::tenant_removed(),
        other => ApiError::Internal(other.into()),
    })?;
    let (run, joined) = match &claim {
        Claim::Started(run) => (run, false),
        Claim::Running(run) => (run, true),
    };
    audit::record(
        &state.pool,
        by,
        "sync.start",
        Some(&tenant.slug),
        json!({"syncId": run.id, "joined": joined}),
    )
    .await?;
    Ok(claim)
}

/// One run of the caller's tenant; another tenant's run answers as a missing one.
#[utoipa::path(
    get,
    path = "/api/administrator/connect/sync/{id}",
    tag = "sync",
    operation_id = "getSync",
    description = "One sync run, with its progress and result.",
    params(
        ("id" = String, Path, description = "The run's id (a UUID; anything else is an unknown run)."),
        TenantParam,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run.", body = SyncRunRecord),
        ShowErrors,
    )
)]
async fn show(
    scope: TenantScope,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SyncRunRecord>, ApiError> {
    // A segment that is not even UTF-8 (`%80`) cannot name a run either.
    let Path(id) = id.map_err(|_| unknown_run())?;
    let id = run_id(&id)?;
    let run = store::sync_runs::get(&state.pool, scope.tenant.id, id)
        .await?
        .ok_or_else(unknown_run)?;
    Ok(Json(SyncRunRecord::new(&run, &scope.tenant.slug)))
}

pub(crate) fn unknown_run() -> ApiError {
    ApiError::new(Code::UnknownSyncid, "no sync run has that id")
}

/// The `{id}` of a run: a UUID; anything else cannot name a run, so it is answered
/// as an unknown one.
fn run_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| unknown_run())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SyncRun)]
pub struct SyncRunRecord {
    id: Uuid,
    #[schema(schema_with = sync_run_kind)]
    object: &'static str,
    /// The tenant's slug.
    appid: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    #[schema(schema_with = sync_status)]
    status: String,
    pages: i64,
    accounts_seen: i64,
    inserted: i64,
    updated: i64,
    unchanged: i64,
    removed: i64,
    /// Why it failed or was interrupted (with Stripe's request id when Stripe answered).
    error: Option<String>,
    #[schema(format = DateTime)]
    started_at: String,
    /// The lease's last renewal.
    #[schema(format = DateTime)]
    heartbeat_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
}

fn sync_run_kind() -> utoipa::openapi::schema::Schema {
    super::openapi::kind("syncRun")
}

fn sync_status() -> utoipa::openapi::schema::Schema {
    one_of_strings(&["running", "succeeded", "failed", "interrupted"])
}

impl SyncRunRecord {
    fn new(run: &SyncRun, appid: &str) -> SyncRunRecord {
        SyncRunRecord {
            id: run.id,
            object: "syncRun",
            appid: appid.to_owned(),
            status: run.status.clone(),
            pages: run.pages,
            accounts_seen: run.accounts_seen,
            inserted: run.inserted,
            updated: run.updated,
            unchanged: run.unchanged,
            removed: run.removed,
            error: run.error.clone(),
            started_at: api_timestamp(&run.started_at),
            heartbeat_at: api_timestamp(&run.heartbeat_at),
            finished_at: run.finished_at.as_ref().map(api_timestamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_run_id_is_a_uuid_or_an_unknown_run(raw in "\\PC{0,40}") {
            match run_id(&raw) {
                Ok(id) => prop_assert_eq!(Uuid::parse_str(&raw).ok(), Some(id)),
                Err(error) => {
                    prop_assert_eq!(error.status().as_u16(), 404);
                    prop_assert_eq!(error.code(), "invalid-syncid");
                }
            }
        }

        #[test]
        fn every_uuid_is_taken(bytes in any::<[u8; 16]>()) {
            let id = Uuid::from_bytes(bytes);
            prop_assert_eq!(run_id(&id.to_string()).ok(), Some(id));
        }
    }
}
