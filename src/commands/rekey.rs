//! `tally rekey`: re-seals every stored secret (each tenant's Stripe key and webhook
//! secret) under the current `TALLY_MASTER_KEY`, in one transaction. Secrets still
//! sealed with `TALLY_MASTER_KEY_PREVIOUS` open with it; one that opens with neither
//! stops the whole run, and nothing changes. Plaintext exists only in memory.

use serde_json::json;
use sqlx::PgPool;

use crate::audit::{self, Actor};
use crate::crypto::{MasterKey, OpenedWith, PREVIOUS_MASTER_KEY_ENV};
use crate::store;

/// What a rekey did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyReport {
    /// Secrets re-sealed (Stripe keys and webhook secrets).
    pub secrets: usize,
    pub tenants: usize,
    /// Of those, how many were still sealed with the previous master key.
    pub from_previous: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error("tenant '{slug}': its {what} opens with neither TALLY_MASTER_KEY nor {PREVIOUS_MASTER_KEY_ENV} (set {PREVIOUS_MASTER_KEY_ENV} to the key it was sealed with); nothing was changed")]
    CannotOpen { slug: String, what: &'static str },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn run(
    pool: &PgPool,
    master: &MasterKey,
    actor: &Actor,
) -> Result<RekeyReport, RekeyError> {
    let mut tx = pool.begin().await?;
    let rows = store::tenants::sealed_for_rekey(&mut *tx).await?;
    let mut report = RekeyReport {
        secrets: 0,
        tenants: rows.len(),
        from_previous: 0,
    };
    for row in &rows {
        let mut reseal = |sealed: &[u8], what: &'static str| {
            let (secret, with) =
                master
                    .open_reporting(&row.slug, sealed)
                    .map_err(|_| RekeyError::CannotOpen {
                        slug: row.slug.clone(),
                        what,
                    })?;
            report.secrets += 1;
            report.from_previous += usize::from(with == OpenedWith::Previous);
            use secrecy::ExposeSecret;
            Ok::<_, RekeyError>(master.seal(&row.slug, secret.expose_secret()))
        };
        let key = reseal(&row.key_ciphertext, "Stripe key")?;
        let webhook = row
            .webhook_secret_ciphertext
            .as_deref()
            .map(|sealed| reseal(sealed, "webhook secret"))
            .transpose()?;
        store::tenants::reseal(&mut *tx, row.id, &key, webhook.as_deref()).await?;
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
