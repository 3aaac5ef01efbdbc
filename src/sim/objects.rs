//! Rendering the simulator's compact records as Stripe JSON objects (the shapes of
//! Stripe's own fixtures for `account` and `balance`).
//!
//! Records stay small and the JSON is built per response, so 50,000+ accounts fit in memory.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::world::{Account, AccountType};

/// The account object, as `GET /v1/accounts/{id}` returns it.
pub fn account_json(a: &Account) -> Value {
    let onboarded = a.onboarded;
    let due: Vec<&str> = if onboarded {
        vec![]
    } else {
        vec![
            "business_profile.url",
            "external_account",
            "tos_acceptance.date",
            "tos_acceptance.ip",
        ]
    };
    let capability = if onboarded { "active" } else { "inactive" };
    json!({
        "id": a.id,
        "object": "account",
        "business_profile": {
            "annual_revenue": null,
            "estimated_worker_count": null,
            "mcc": if onboarded { json!("5734") } else { Value::Null },
            "minority_owned_business_designation": null,
            "name": a.business_name,
            "product_description": null,
            "support_address": null,
            "support_email": null,
            "support_phone": null,
            "support_url": null,
            "url": null,
        },
        "business_type": if onboarded { json!("company") } else { Value::Null },
        "capabilities": {
            "card_payments": capability,
            "transfers": capability,
        },
        "charges_enabled": onboarded,
        "controller": controller_json(a.kind),
        "country": a.country,
        "created": a.created,
        "default_currency": a.currency,
        "details_submitted": onboarded,
        "email": a.email,
        "external_accounts": {
            "object": "list",
            "data": [],
            "has_more": false,
            "total_count": 0,
            "url": format!("/v1/accounts/{}/external_accounts", a.id),
        },
        "future_requirements": requirements_json(&[], None),
        "metadata": a.metadata,
        "payouts_enabled": onboarded,
        "requirements": requirements_json(
            &due,
            (!onboarded).then_some("requirements.past_due"),
        ),
        "settings": settings_json(a),
        "tos_acceptance": {
            "date": if onboarded { json!(a.created) } else { Value::Null },
            "ip": null,
            "user_agent": null,
        },
        "type": a.kind.as_str(),
    })
}

/// Since 2024 Stripe describes who controls an account with `controller`; the legacy
/// `type` maps onto a fixed controller shape.
fn controller_json(kind: AccountType) -> Value {
    let (fees, losses, collection, dashboard) = match kind {
        AccountType::Standard => ("account", "stripe", "stripe", "full"),
        AccountType::Express => ("application_express", "application", "stripe", "express"),
        AccountType::Custom => ("application_custom", "application", "application", "none"),
    };
    json!({
        "fees": { "payer": fees },
        "is_controller": true,
        "losses": { "payments": losses },
        "requirement_collection": collection,
        "stripe_dashboard": { "type": dashboard },
        "type": "application",
    })
}

fn requirements_json(due: &[&str], disabled_reason: Option<&str>) -> Value {
    json!({
        "alternatives": [],
        "current_deadline": null,
        "currently_due": due,
        "disabled_reason": disabled_reason,
        "errors": [],
        "eventually_due": due,
        "past_due": due,
        "pending_verification": [],
    })
}

fn settings_json(a: &Account) -> Value {
    json!({
        "bacs_debit_payments": { "display_name": null, "service_user_number": null },
        "branding": { "icon": null, "logo": null, "primary_color": null, "secondary_color": null },
        "card_issuing": { "tos_acceptance": { "date": null, "ip": null } },
        "card_payments": {
            "decline_on": { "avs_failure": false, "cvc_failure": false },
            "statement_descriptor_prefix": null,
            "statement_descriptor_prefix_kana": null,
            "statement_descriptor_prefix_kanji": null,
        },
        "dashboard": { "display_name": a.business_name, "timezone": "Etc/UTC" },
        "invoices": { "default_account_tax_ids": null, "hosted_payment_method_save": "offer" },
        "payments": {
            "statement_descriptor": null,
            "statement_descriptor_kana": null,
            "statement_descriptor_kanji": null,
        },
        "payouts": {
            "debit_negative_balances": true,
            "schedule": { "delay_days": 2, "interval": "daily" },
            "statement_descriptor": null,
        },
        "sepa_debit_payments": {},
    })
}

/// A page of a Stripe list: `{object: "list", data, has_more, url}`.
pub fn list_json(data: Vec<Value>, has_more: bool, url: &str) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

/// The application object of `account.application.deauthorized` events.
pub fn application_json(platform_id: &str) -> Value {
    let suffix = platform_id.trim_start_matches("acct_");
    json!({ "id": format!("ca_{suffix}"), "object": "application", "name": "tally simulator" })
}

/// Currencies a balance may hold; the kwd entries exercise a 3-decimal currency and jpy
/// a zero-decimal one.
const CURRENCIES: [&str; 5] = ["usd", "eur", "gbp", "jpy", "kwd"];

/// The balance of an account: deterministic from the world seed and the account id, so it
/// needs no storage and two simulators with one seed agree. Accounts created through the
/// API start empty, as on Stripe.
pub fn balance_json(seed: u64, a: &Account) -> Value {
    if a.empty_balance {
        let zero = json!([{ "amount": 0, "currency": a.currency, "source_types": { "card": 0 } }]);
        return json!({
            "object": "balance",
            "available": zero,
            "connect_reserved": [{ "amount": 0, "currency": a.currency }],
            "livemode": false,
            "pending": zero,
        });
    }
    // Version 0 is the balance the account was generated with; later versions are
    // others, as deterministic.
    let mut rng = if a.balance_version == 0 {
        rng_for(seed, &a.id)
    } else {
        rng_for(seed, &format!("{}#{}", a.id, a.balance_version))
    };
    let mut currencies = vec![a.currency];
    for c in CURRENCIES {
        let odds = if c == "kwd" { 0.1 } else { 0.35 };
        if c != a.currency && rng.random_bool(odds) {
            currencies.push(c);
        }
    }
    let available: Vec<Value> = currencies
        .iter()
        .map(|c| entry(&mut rng, c, 0.15))
        .collect();
    let pending: Vec<Value> = currencies
        .iter()
        .map(|c| entry(&mut rng, c, 0.05))
        .collect();
    let mut balance = json!({
        "object": "balance",
        "available": available,
        "livemode": false,
        "pending": pending,
    });
    if rng.random_bool(0.3) {
        let reserved: Vec<Value> = currencies
            .iter()
            .map(|c| json!({ "amount": rng.random_range(0..50_000i64), "currency": c }))
            .collect();
        balance["connect_reserved"] = json!(reserved);
    }
    if rng.random_bool(0.2) {
        let c = currencies[0];
        let amount = rng.random_range(0..200_000i64);
        let net = amount - amount / 100;
        balance["instant_available"] = json!([{
            "amount": amount,
            "currency": c,
            "net_available": [{ "amount": net, "destination": format!("ba_{}", &a.id[5..]) }],
            "source_types": { "card": amount },
        }]);
    }
    balance
}

/// One `{amount, currency, source_types}` entry; with probability `negative_odds` it is
/// below zero (refunds and disputes can drive a Stripe balance negative).
fn entry(rng: &mut StdRng, currency: &str, negative_odds: f64) -> Value {
    // Amounts are minor units: yen have none, so keep them in a realistic range.
    let max = if currency == "jpy" {
        500_000
    } else {
        5_000_000
    };
    let amount = if rng.random_bool(negative_odds) {
        -rng.random_range(1..max / 20)
    } else {
        rng.random_range(0..max)
    };
    json!({ "amount": amount, "currency": currency, "source_types": { "card": amount } })
}

/// An rng seeded from (world seed, id): stable across runs and independent of the order
/// in which accounts were generated.
pub fn rng_for(seed: u64, id: &str) -> StdRng {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(id.as_bytes());
    StdRng::from_seed(hasher.finalize().into())
}
