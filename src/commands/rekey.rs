//! `tally rekey`: re-seals every stored secret (each tenant's Stripe key, its hand-set
//! webhook secret and the secrets of the endpoints `tally tenant webhooks` registered)
//! under the current `TALLY_MASTER_KEY`, in one transaction. Secrets still
//! sealed with `TALLY_MASTER_KEY_PREVIOUS` open with it; one that opens with neither
//! stops the whole run, and nothing changes. Plaintext exists only in memory.

use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;

use crate::audit::{self, Actor};
use crate::crypto::{MasterKey, OpenedWith, PREVIOUS_MASTER_KEY_ENV};
use crate::store;

/// What a rekey did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyReport {
    /// Secrets re-sealed (Stripe keys, webhook secrets, registered endpoints' secrets).
    pub secrets: usize,
    pub tenants: usize,
    /// Of those, how many were still sealed with the previous master key.
    pub from_previous: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("tenant '{slug}': its {what} opens with neither TALLY_MASTER_KEY nor {PREVIOUS_MASTER_KEY_ENV} (set {PREVIOUS_MASTER_KEY_ENV} to the key it was sealed with); nothing was changed")]
    CannotOpen { slug: String, what: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn run(
    pool: &PgPool,
    master: &MasterKey,
    actor: &Actor,
) -> Result<RekeyReport, RekeyError> {
    let mut tx = store::begin(pool).await?;
    let rows = store::tenants::sealed_for_rekey(&mut *tx).await?;
    let mut report = RekeyReport {
        secrets: 0,
        tenants: rows.len(),
        from_previous: 0,
    };
    let mut reseal = |slug: &str, sealed: &[u8], what: &dyn Fn() -> String| {
        let (secret, with) =
            master
                .open_reporting(slug, sealed)
                .map_err(|_| RekeyError::CannotOpen {
                    slug: slug.to_owned(),
                    what: what(),
                })?;
        report.secrets += 1;
        report.from_previous += usize::from(with == OpenedWith::Previous);
        Ok::<_, RekeyError>(master.seal(slug, secret.expose_secret()))
    };
    for row in &rows {
        let key = reseal(&row.slug, &row.key_ciphertext, &|| "Stripe key".to_owned())?;
        let webhook = row
            .webhook_secret_ciphertext
            .as_deref()
            .map(|sealed| reseal(&row.slug, sealed, &|| "webhook secret".to_owned()))
            .transpose()?;
        store::tenants::reseal(&mut *tx, row.id, &key, webhook.as_deref()).await?;
    }
    for row in store::webhook_endpoints::sealed_for_rekey(&mut *tx).await? {
        let what = || format!("webhook endpoint {} signing secret", row.endpoint_id);
        let sealed = reseal(&row.slug, &row.secret_ciphertext, &what)?;
        store::webhook_endpoints::reseal(&mut *tx, row.tenant_id, &row.platform_id, &sealed)
            .await?;
    }
    let details = json!({
        "secrets": report.secrets,
        "tenants": report.tenants,
        "fromPrevious": report.from_previous,
    });
    audit::record(&mut *tx, actor, "rekey", None, details).await?;
    tx.commit().await?;
    Ok(report)
}
