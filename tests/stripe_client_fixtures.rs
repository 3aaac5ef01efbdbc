//! tally's types read objects shaped like Stripe's published examples (fixtures written in
//! the shape of Stripe's OpenAPI `fixtures3.json`, with values of our own).

use tally::stripe::{Balance, List};

const BALANCE: &str = include_str!("fixtures/stripe_balance.json");
const ACCOUNT: &str = include_str!("fixtures/stripe_account.json");

#[test]
fn balance_fixture_parses_every_bucket() {
    let balance: Balance = serde_json::from_str(BALANCE).expect("fixture is a balance");
    assert_eq!(balance.object, "balance");
    assert!(!balance.livemode);
    let usd = &balance.available[0];
    assert_eq!((usd.amount, usd.currency.as_str()), (184_523, "usd"));
    assert_eq!(usd.source_types.as_ref().map(|s| s["card"]), Some(184_523));
    assert_eq!(
        balance.available[1].amount, -2300,
        "negative amounts survive"
    );
    assert_eq!(balance.pending[0].amount, 9100);
    assert_eq!(balance.connect_reserved.as_ref().map(Vec::len), Some(1));
    let instant = balance
        .instant_available
        .as_ref()
        .expect("instant_available");
    assert_eq!(instant[0].net_available.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        balance.issuing.as_ref().map(|i| i.available[0].amount),
        Some(120)
    );
    let prefunding = balance
        .refund_and_dispute_prefunding
        .as_ref()
        .expect("prefunding");
    assert_eq!(
        (prefunding.available.len(), prefunding.pending.len()),
        (1, 1)
    );
}

#[test]
fn balance_round_trips_without_losing_known_fields() {
    let balance: Balance = serde_json::from_str(BALANCE).expect("fixture is a balance");
    let again: Balance =
        serde_json::from_value(serde_json::to_value(&balance).expect("serializes"))
            .expect("reads back");
    assert_eq!(balance, again);
}

#[test]
fn account_fixture_lists_as_a_page() {
    let account: serde_json::Value = serde_json::from_str(ACCOUNT).expect("fixture is JSON");
    let page = serde_json::json!({
        "object": "list", "url": "/v1/accounts", "has_more": false, "data": [account]
    });
    let list: List<serde_json::Value> = serde_json::from_value(page).expect("list parses");
    assert_eq!(list.data[0]["id"], "acct_1TallyFixture01");
    assert_eq!(list.data[0]["metadata"]["accountid"], "user_42");
    assert!(!list.has_more);
}
