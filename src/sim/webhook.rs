//! Connect events, signed as Stripe signs them.

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;

use super::objects::{account_json, application_json, balance_json};
use super::state::{SimState, API_VERSION};
use super::world::{Home, World};

/// The `Stripe-Signature` header value for `payload` sent at `timestamp`:
/// `t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{payload}" keyed with the endpoint secret>`.
pub fn sign_webhook(secret: &str, timestamp: i64, payload: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The event Stripe would deliver for `event_type` on `account`.
pub fn event(
    world: &World,
    event_type: &str,
    account: &str,
    created: i64,
) -> anyhow::Result<Value> {
    let a = world
        .get(account)
        .with_context(|| format!("the simulator has no account {account}"))?;
    let object = match event_type {
        "account.updated" => account_json(a),
        "balance.available" => balance_json(world.seed, a),
        "account.application.deauthorized" => {
            let platform = match a.home {
                Home::Connected { platform, .. } => &world.platforms[platform].id,
                _ => &a.id,
            };
            application_json(platform)
        }
        other => bail!("the simulator cannot build {other} events"),
    };
    Ok(envelope(event_type, Some(account), created, object, 1))
}

/// A Connect event about `account` (`None`: an event of the endpoint's own account, which
/// carries neither `account` nor `context`).
pub fn envelope(
    event_type: &str,
    account: Option<&str>,
    created: i64,
    object: Value,
    pending_webhooks: usize,
) -> Value {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let mut event = json!({
        "id": format!("evt_{suffix}"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": pending_webhooks,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    });
    if let Some(account) = account {
        event["account"] = json!(account);
        event["context"] = json!(account);
    }
    event
}

/// Builds, signs and POSTs one event; returns the endpoint's status.
pub async fn send(
    state: &SimState,
    url: &str,
    secret: &str,
    event_type: &str,
    account: &str,
) -> anyhow::Result<reqwest::StatusCode> {
    let now = chrono::Utc::now().timestamp();
    let payload = event(&state.world(), event_type, account, now)?.to_string();
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header("stripe-signature", sign_webhook(secret, now, &payload))
        .body(payload)
        .send()
        .await
        .with_context(|| format!("posting {event_type} to {url}"))?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_stripes_scheme() {
        // Stripe's scheme: hex(HMAC-SHA256(secret, "{t}.{payload}")).
        let header = sign_webhook("whsec_test", 1_700_000_000, "{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").expect("any key length");
        mac.update(b"1700000000.{}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
    }
}
