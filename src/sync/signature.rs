//! Stripe webhook signatures (DESIGN §1, §7): `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`,
//! HMAC-SHA256 over `"{t}.{raw body}"` with the endpoint secret, compared in constant
//! time, within a tolerance of the timestamp. Checked before anything of the body is read.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Stripe's default tolerance, in seconds, between the signed timestamp and now.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("the signed timestamp is outside the 300 s tolerance")]
    Stale,
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// Verifies `header` for `payload` at unix time `now`. Any one of several `v1` values
/// may match (Stripe sends one per active secret while a secret is rolled).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (signed_at, timestamp, signatures) = parse_header(header)?;
    if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC-SHA256 takes a key of any length");
    // The timestamp exactly as sent: that is what the sender signed.
    mac.update(signed_at.as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time.
    let matches = signatures
        .iter()
        .any(|signature| mac.clone().verify_slice(signature).is_ok());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The timestamp and the decodable `v1` signatures; other schemes (`v0`) are ignored,
/// as Stripe's libraries do.
fn parse_header(header: &str) -> Result<(&str, i64, Vec<Vec<u8>>), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_none() => {
                timestamp = value.parse::<i64>().ok().map(|t| (value, t));
            }
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    match timestamp {
        Some((raw, t)) if !signatures.is_empty() => Ok((raw, t, signatures)),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::sign_webhook;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;
    const BODY: &str = r#"{"id":"evt_1","type":"account.updated"}"#;

    fn check(header: &str, body: &str, now: i64) -> Result<(), SignatureError> {
        verify(Some(header), body.as_bytes(), SECRET.as_bytes(), now)
    }

    #[test]
    fn a_valid_signature_passes_within_tolerance() {
        let header = sign_webhook(SECRET, NOW, BODY);
        assert_eq!(check(&header, BODY, NOW), Ok(()));
        assert_eq!(check(&header, BODY, NOW + TOLERANCE_SECS), Ok(()));
    }

    #[test]
    fn wrong_secret_tampered_body_and_stale_timestamp_fail() {
        let wrong = sign_webhook("whsec_other", NOW, BODY);
        assert_eq!(check(&wrong, BODY, NOW), Err(SignatureError::Mismatch));
        let header = sign_webhook(SECRET, NOW, BODY);
        let tampered = BODY.replace("evt_1", "evt_2");
        assert_eq!(
            check(&header, &tampered, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&header, BODY, NOW + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(&header, BODY, NOW - TOLERANCE_SECS - 1),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn any_one_of_several_v1_values_may_match() {
        let good = sign_webhook(SECRET, NOW, BODY);
        let good_v1 = good.split_once(",v1=").map(|(_, v)| v).expect("v1");
        let header = format!(
            "t={NOW},v1={},v0=abc,v1=zz-not-hex,v1={good_v1}",
            "0".repeat(64)
        );
        assert_eq!(check(&header, BODY, NOW), Ok(()));
    }

    #[test]
    fn a_header_without_timestamp_or_v1_is_malformed() {
        assert_eq!(check("v1=abcd", BODY, NOW), Err(SignatureError::Malformed));
        assert_eq!(
            check(&format!("t={NOW}"), BODY, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(check("garbage", BODY, NOW), Err(SignatureError::Malformed));
        assert_eq!(
            verify(None, BODY.as_bytes(), SECRET.as_bytes(), NOW),
            Err(SignatureError::Missing)
        );
    }
}
