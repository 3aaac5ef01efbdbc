//! Secrets at rest (DESIGN §7): Stripe keys and webhook secrets are sealed with
//! AES-256-GCM under the master key; API tokens are random and stored hashed.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

/// The environment variable holding base64 of the 32-byte master key.
pub const MASTER_KEY_ENV: &str = "TALLY_MASTER_KEY";
/// During a master key rollout, the key secrets may still be sealed with: it opens
/// them, never seals (`tally rekey` re-seals everything under the current key).
pub const PREVIOUS_MASTER_KEY_ENV: &str = "TALLY_MASTER_KEY_PREVIOUS";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("{MASTER_KEY_ENV} is not set: it must hold base64 of 32 random bytes (for example: openssl rand -base64 32)")]
    MasterKeyMissing,
    #[error("{MASTER_KEY_ENV} is malformed: {0}")]
    MasterKeyMalformed(&'static str),
    #[error("{PREVIOUS_MASTER_KEY_ENV} is malformed: {0}")]
    PreviousKeyMalformed(&'static str),
    #[error("a stored secret could not be decrypted: wrong {MASTER_KEY_ENV}, or the record was tampered with")]
    Decrypt,
}

/// The key that seals Stripe keys at rest, and during a rollout the previous one,
/// which only opens. Deliberately not `Debug`.
///
/// A sealed secret is bound to its tenant's slug (the AES-GCM associated data), so
/// anything that renamed a tenant would have to open its secrets under the old slug
/// and re-seal them under the new one in the same transaction.
pub struct MasterKey {
    current: SecretBox<[u8; 32]>,
    previous: Option<SecretBox<[u8; 32]>>,
}

/// Which key opened a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedWith {
    Current,
    Previous,
}

fn decode_key(value: &str) -> Result<[u8; 32], &'static str> {
    let bytes = STANDARD
        .decode(value.trim())
        .map_err(|_| "not valid base64")?;
    bytes
        .try_into()
        .map_err(|_| "must decode to exactly 32 bytes")
}

impl MasterKey {
    /// `TALLY_MASTER_KEY`, and `TALLY_MASTER_KEY_PREVIOUS` when set (non-empty).
    pub fn from_env() -> Result<MasterKey, CryptoError> {
        let value = std::env::var(MASTER_KEY_ENV).map_err(|_| CryptoError::MasterKeyMissing)?;
        let key = MasterKey::from_base64(&value)?;
        match std::env::var(PREVIOUS_MASTER_KEY_ENV) {
            Ok(previous) if !previous.trim().is_empty() => key.with_previous_base64(&previous),
            _ => Ok(key),
        }
    }

    pub fn from_base64(value: &str) -> Result<MasterKey, CryptoError> {
        let key = decode_key(value).map_err(CryptoError::MasterKeyMalformed)?;
        Ok(MasterKey {
            current: SecretBox::new(Box::new(key)),
            previous: None,
        })
    }

    /// Also opens secrets sealed with `previous` (base64 of 32 bytes).
    pub fn with_previous_base64(mut self, previous: &str) -> Result<MasterKey, CryptoError> {
        let key = decode_key(previous).map_err(CryptoError::PreviousKeyMalformed)?;
        self.previous = Some(SecretBox::new(Box::new(key)));
        Ok(self)
    }

    /// A fresh random key, base64-encoded (the demo and tests use it).
    pub fn generate_base64() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.current.expose_secret().into())
    }

    /// Seals `plaintext`, binding it to `context` (the tenant slug) so a sealed key
    /// copied onto another tenant's row does not decrypt.
    pub fn seal(&self, context: &str, plaintext: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens with the current key, or else the previous one.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<SecretString, CryptoError> {
        self.open_reporting(context, sealed)
            .map(|(secret, _)| secret)
    }

    /// As [`MasterKey::open`], saying which key opened it.
    pub fn open_reporting(
        &self,
        context: &str,
        sealed: &[u8],
    ) -> Result<(SecretString, OpenedWith), CryptoError> {
        if let Some(secret) = open_with(&self.cipher(), context, sealed) {
            return Ok((secret, OpenedWith::Current));
        }
        let previous = self
            .previous
            .as_ref()
            .map(|key| Aes256Gcm::new(key.expose_secret().into()));
        previous
            .and_then(|cipher| open_with(&cipher, context, sealed))
            .map(|secret| (secret, OpenedWith::Previous))
            .ok_or(CryptoError::Decrypt)
    }
}

fn open_with(cipher: &Aes256Gcm, context: &str, sealed: &[u8]) -> Option<SecretString> {
    if sealed.len() <= NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let payload = Payload {
        msg: ciphertext,
        aad: context.as_bytes(),
    };
    let plaintext = cipher.decrypt(Nonce::from_slice(nonce), payload).ok()?;
    String::from_utf8(plaintext).ok().map(SecretString::from)
}

/// Prefix that makes tally tokens recognisable in a leaked-secret scan.
const TOKEN_PREFIX: &str = "tly_";

/// A new API token (shown once) and the hash that is stored.
pub fn generate_token() -> (SecretString, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&token);
    (SecretString::from(token), hash)
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_round_trips_and_is_not_plaintext() {
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).expect("valid key");
        let sealed = key.seal("acme", "sk_test_51secretvalue");
        assert!(!sealed
            .windows(b"sk_test_51secretvalue".len())
            .any(|w| w == b"sk_test_51secretvalue"));
        let opened = key.open("acme", &sealed).expect("opens");
        assert_eq!(opened.expose_secret(), "sk_test_51secretvalue");
    }

    #[test]
    fn sealed_secret_is_bound_to_its_tenant() {
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).expect("valid key");
        let sealed = key.seal("acme", "sk_test_x");
        assert!(matches!(
            key.open("other", &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn the_previous_key_opens_but_never_seals() {
        let old = MasterKey::generate_base64();
        let sealed_old = MasterKey::from_base64(&old)
            .expect("old")
            .seal("acme", "sk_test_x");
        let rolling = MasterKey::from_base64(&MasterKey::generate_base64())
            .expect("new")
            .with_previous_base64(&old)
            .expect("previous");
        let (opened, with) = rolling.open_reporting("acme", &sealed_old).expect("opens");
        assert_eq!(opened.expose_secret(), "sk_test_x");
        assert_eq!(with, OpenedWith::Previous);
        let resealed = rolling.seal("acme", "sk_test_x");
        assert_eq!(
            rolling.open_reporting("acme", &resealed).expect("opens").1,
            OpenedWith::Current
        );
        assert!(MasterKey::from_base64(&old)
            .expect("old")
            .open("acme", &resealed)
            .is_err());
        assert!(matches!(
            rolling.open("other", &sealed_old),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn malformed_master_keys_are_refused_with_a_reason() {
        assert!(matches!(
            MasterKey::from_base64("not base64!"),
            Err(CryptoError::MasterKeyMalformed("not valid base64"))
        ));
        assert!(matches!(
            MasterKey::from_base64(&STANDARD.encode([0u8; 16])),
            Err(CryptoError::MasterKeyMalformed(_))
        ));
        let previous = MasterKey::from_base64(&MasterKey::generate_base64())
            .expect("valid key")
            .with_previous_base64("c2hvcnQ=");
        assert!(matches!(
            previous,
            Err(CryptoError::PreviousKeyMalformed(
                "must decode to exactly 32 bytes"
            ))
        ));
    }

    #[test]
    fn tokens_are_unique_and_hash_deterministically() {
        let (a, hash_a) = generate_token();
        let (b, _) = generate_token();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(a.expose_secret()), hash_a);
    }
}
