//! Rendering ledger records as Stripe JSON: `balance_transaction`, and the `charge`,
//! `dispute`, `payout`, `transfer` and `balance` objects events carry (the shapes of
//! Stripe's own fixtures, trimmed to the fields a client reads).

use serde_json::{json, Value};

use super::ledger::{AccountLedger, Txn, TxnType};
use super::objects::application_json;

pub fn balance_transaction_json(t: &Txn, platform_id: Option<&str>) -> Value {
    let mut fee_details = Vec::new();
    let stripe_fee = t.fee - t.application_fee;
    if stripe_fee != 0 {
        let description = if t.kind == TxnType::Adjustment {
            "Dispute fee"
        } else {
            "Stripe processing fees"
        };
        fee_details.push(json!({
            "amount": stripe_fee,
            "application": null,
            "currency": t.currency,
            "description": description,
            "type": "stripe_fee",
        }));
    }
    if t.application_fee != 0 {
        fee_details.push(json!({
            "amount": t.application_fee,
            "application": platform_id.map(|p| application_json(p)["id"].clone()),
            "currency": t.currency,
            "description": "Application fee",
            "type": "application_fee",
        }));
    }
    json!({
        "id": t.id,
        "object": "balance_transaction",
        "amount": t.amount,
        "available_on": t.available_on,
        "balance_type": "payments",
        "created": t.created,
        "currency": t.currency,
        "description": t.description,
        "exchange_rate": null,
        "fee": t.fee,
        "fee_details": fee_details,
        "net": t.net,
        "reporting_category": t.reporting_category,
        "source": t.source,
        "status": if t.available { "available" } else { "pending" },
        "type": t.kind.as_str(),
    })
}

/// The balance object of an account in ledger mode: available and pending from the
/// ledger (available with any injected drift), `connect_reserved` as generated.
pub fn ledger_balance_json(l: &AccountLedger) -> Value {
    let entries = |pick: fn(&AccountLedger, &super::ledger::CurrencyBalance) -> i64| -> Vec<Value> {
        l.balances
            .iter()
            .map(|b| {
                let amount = pick(l, b);
                json!({ "amount": amount, "currency": b.currency, "source_types": { "card": amount } })
            })
            .collect()
    };
    let mut balance = json!({
        "object": "balance",
        "available": entries(|l, b| b.available.saturating_add(l.drift(b.currency))),
        "livemode": false,
        "pending": entries(|_, b| b.pending),
    });
    if let Some(reserved) = &l.connect_reserved {
        balance["connect_reserved"] = reserved.clone();
    }
    balance
}

/// The charge behind a charge transaction, as `charge.*` events carry it.
pub fn charge_json(charge: &Txn, platform_id: Option<&str>, failed: bool) -> Value {
    let refunded = if failed { 0 } else { charge.reversed };
    let application = platform_id.map(|p| application_json(p)["id"].clone());
    json!({
        "id": charge.source,
        "object": "charge",
        "amount": charge.amount,
        "amount_captured": if failed { 0 } else { charge.amount },
        "amount_refunded": refunded,
        "application": application,
        "application_fee": null,
        "application_fee_amount": charge.application_fee,
        "balance_transaction": charge.id,
        "billing_details": {
            "address": null, "email": null, "name": null, "phone": null,
        },
        "captured": !failed,
        "created": charge.created,
        "currency": charge.currency,
        "customer": null,
        "description": null,
        "disputed": false,
        "failure_balance_transaction": null,
        "failure_code": if failed { json!("insufficient_funds") } else { Value::Null },
        "failure_message": if failed {
            json!("The customer's account has insufficient funds to cover this payment.")
        } else {
            Value::Null
        },
        "livemode": false,
        "metadata": {},
        "on_behalf_of": null,
        "outcome": {
            "network_status": if failed { "declined_by_network" } else { "approved_by_network" },
            "reason": null,
            "risk_level": "normal",
            "seller_message": if failed { "The bank returned the payment." } else { "Payment complete." },
            "type": if failed { "issuer_declined" } else { "authorized" },
        },
        "paid": !failed,
        "payment_intent": null,
        "payment_method": null,
        "refunded": !failed && refunded >= charge.amount,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": false,
            "url": format!("/v1/charges/{}/refunds", charge.source.as_deref().unwrap_or_default()),
        },
        "status": if failed { "failed" } else { "succeeded" },
    })
}

/// A dispute opened by an `adjustment` transaction of category `dispute`.
pub fn dispute_json(t: &Txn, charge: &Txn, platform_id: Option<&str>) -> Value {
    json!({
        "id": t.source,
        "object": "dispute",
        "amount": -t.amount,
        "balance_transactions": [balance_transaction_json(t, platform_id)],
        "charge": charge.source,
        "created": t.created,
        "currency": t.currency,
        "evidence_details": {
            "due_by": t.created + 7 * 86_400,
            "has_evidence": false,
            "past_due": false,
            "submission_count": 0,
        },
        "is_charge_refundable": false,
        "livemode": false,
        "metadata": {},
        "payment_intent": null,
        "reason": "fraudulent",
        "status": "needs_response",
    })
}

pub fn payout_json(t: &Txn, account_id: &str) -> Value {
    json!({
        "id": t.source,
        "object": "payout",
        "amount": -t.amount,
        "application_fee": null,
        "application_fee_amount": null,
        "arrival_date": t.arrival_date,
        "automatic": true,
        "balance_transaction": t.id,
        "created": t.created,
        "currency": t.currency,
        "description": "STRIPE PAYOUT",
        "destination": format!("ba_{}", account_id.trim_start_matches("acct_")),
        "failure_balance_transaction": null,
        "failure_code": null,
        "failure_message": null,
        "livemode": false,
        "metadata": {},
        "method": "standard",
        "original_payout": null,
        "reconciliation_status": if t.paid { "completed" } else { "in_progress" },
        "reversed_by": null,
        "source_type": "card",
        "statement_descriptor": null,
        "status": if t.paid { "paid" } else { "pending" },
        "type": "bank_account",
    })
}

/// An account debit: a transfer from the connected account to its platform.
pub fn transfer_json(t: &Txn, platform_id: Option<&str>) -> Value {
    let id = t.source.as_deref().unwrap_or_default();
    json!({
        "id": id,
        "object": "transfer",
        "amount": -t.amount,
        "amount_reversed": 0,
        "balance_transaction": t.id,
        "created": t.created,
        "currency": t.currency,
        "description": t.description,
        "destination": platform_id,
        "destination_payment": format!("py_{}", id.trim_start_matches("tr_")),
        "livemode": false,
        "metadata": {},
        "reversals": {
            "object": "list",
            "data": [],
            "has_more": false,
            "url": format!("/v1/transfers/{id}/reversals"),
        },
        "reversed": false,
        "source_transaction": null,
        "source_type": "card",
        "transfer_group": null,
    })
}
