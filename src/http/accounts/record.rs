//! The Dashboard module's record shape, as every listing writes it.

use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::domain::ApiTimestamp;
use crate::http::error::ApiError;
use crate::store::accounts::AccountRow;

/// The Dashboard module's record shape.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = StripeAccount)]
pub struct StripeAccountRecord<'a> {
    /// The Stripe account id.
    #[schema(value_type = String, pattern = "^acct_[A-Za-z0-9]+$")]
    stripeid: &'a str,
    #[schema(schema_with = stripe_account_kind)]
    object: &'static str,
    /// The owner: the platform's own id for the user owning the account, from the
    /// Stripe account's metadata (`accounts.owner_metadata_key`); null when absent.
    #[schema(value_type = Option<String>)]
    accountid: Option<&'a str>,
    /// The tenant's slug.
    #[schema(value_type = String)]
    appid: &'a str,
    /// The platform controlling the account (organization tenants); null for accounts
    /// directly in the organization and for platform tenants.
    #[schema(value_type = Option<String>)]
    platformid: Option<&'a str>,
    /// Stripe's account object exactly as stored, not re-parsed.
    #[schema(value_type = Object)]
    stripe_object: &'a RawValue,
    /// Stripe's `created`.
    #[schema(value_type = String, format = DateTime)]
    created_at: ApiTimestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: ApiTimestamp,
    /// Only on records Stripe no longer returns; they are kept, not deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    removed_at: Option<ApiTimestamp>,
}

fn stripe_account_kind() -> utoipa::openapi::schema::Schema {
    crate::http::openapi::kind("stripeAccount")
}

impl<'a> StripeAccountRecord<'a> {
    pub fn new(row: &'a AccountRow, appid: &'a str) -> Result<StripeAccountRecord<'a>, ApiError> {
        let stripe_object = serde_json::from_str::<&RawValue>(&row.stripe_object)
            .map_err(|error| ApiError::Internal(error.into()))?;
        Ok(StripeAccountRecord {
            stripeid: &row.stripeid,
            object: "stripeAccount",
            accountid: row.accountid.as_deref(),
            appid,
            platformid: row.platform_id.as_deref(),
            stripe_object,
            created_at: ApiTimestamp(row.created_at),
            updated_at: ApiTimestamp(row.updated_at),
            removed_at: row.removed_at.map(ApiTimestamp),
        })
    }
}
