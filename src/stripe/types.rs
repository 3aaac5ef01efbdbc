//! Stripe response objects tally reads (DESIGN §1). Unknown fields are ignored here; the
//! untouched JSON travels alongside in [`crate::stripe::Fetched::raw`].

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `GET /v1/balance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub object: String,
    pub livemode: bool,
    pub available: Vec<BalanceAmount>,
    pub pending: Vec<BalanceAmount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_reserved: Option<Vec<BalanceAmount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant_available: Option<Vec<BalanceAmount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing: Option<IssuingBalance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_and_dispute_prefunding: Option<RefundAndDisputePrefunding>,
}

/// One currency's amount in a balance bucket. `amount` is in the currency's minor unit and
/// may be negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceAmount {
    pub amount: i64,
    /// Lowercased on the way in, so sums never split `usd` and `USD`.
    #[serde(deserialize_with = "lowercase")]
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_types: Option<BTreeMap<String, i64>>,
    /// Present on `instant_available` entries; its shape varies, so it is kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_available: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuingBalance {
    pub available: Vec<BalanceAmount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundAndDisputePrefunding {
    pub available: Vec<BalanceAmount>,
    pub pending: Vec<BalanceAmount>,
}

/// A page of a Stripe list (`{object: "list", data, has_more, url}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
    pub has_more: bool,
    pub url: String,
}

/// A balance transaction (`/v1/balance_transactions`) with the fields tally keeps: amounts
/// in minor units, times as Unix seconds on Stripe's clock.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BalanceTransaction {
    pub id: String,
    /// Stripe's `type` (`charge`, `refund`, `adjustment`, `payout`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// What accounting reports group it under (`charge`, `refund`, `fee`, `payout`, …).
    pub reporting_category: String,
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
    #[serde(deserialize_with = "lowercase")]
    pub currency: String,
    pub created: i64,
    pub available_on: i64,
    /// `available` or `pending` when read.
    pub status: String,
    /// The object that caused it (`ch_…`, `po_…`, …); an id unless expanded.
    #[serde(default, deserialize_with = "id_or_object")]
    pub source: Option<String>,
}

fn id_or_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(id) => Some(id),
        Value::Object(object) => object.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    })
}

/// A webhook endpoint (`/v1/webhook_endpoints`), as listed: without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub enabled_events: Vec<String>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub livemode: bool,
}

/// The answer to `POST /v1/webhook_endpoints`: the only time Stripe shows the signing
/// secret. `SecretString` keeps it out of `Debug` and logs.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedWebhookEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    pub secret: SecretString,
}

/// What a Stripe `DELETE` answers: `{id, object, deleted: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

fn lowercase<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| s.to_ascii_lowercase())
}

/// Reads a balance, explaining which field is wrong when the body is not a balance.
pub(crate) fn parse_balance(value: &Value) -> Result<Balance, String> {
    let obj = expect_object(value, "balance")?;
    let amounts = |name: &str| check_amounts(obj.get(name), name);
    amounts("available")?;
    amounts("pending")?;
    amounts("connect_reserved")?;
    amounts("instant_available")?;
    if let Some(issuing) = obj.get("issuing").filter(|v| !v.is_null()) {
        let issuing = issuing
            .as_object()
            .ok_or_else(|| format!("issuing: expected an object, found {}", kind_of(issuing)))?;
        check_amounts(issuing.get("available"), "issuing.available")?;
    }
    if let Some(prefunding) = obj
        .get("refund_and_dispute_prefunding")
        .filter(|v| !v.is_null())
    {
        let name = "refund_and_dispute_prefunding";
        let prefunding = prefunding
            .as_object()
            .ok_or_else(|| format!("{name}: expected an object, found {}", kind_of(prefunding)))?;
        check_amounts(prefunding.get("available"), &format!("{name}.available"))?;
        check_amounts(prefunding.get("pending"), &format!("{name}.pending"))?;
    }
    // The field checks above name the culprit; this catches whatever they do not cover
    // (a missing `available`, a non-boolean `livemode`).
    Balance::deserialize(value).map_err(|e| e.to_string())
}

/// Reads a list page whose items are kept as JSON objects.
pub(crate) fn parse_list(value: &Value) -> Result<List<Value>, String> {
    let obj = expect_object(value, "list")?;
    if let Some(data) = obj.get("data") {
        let items = data
            .as_array()
            .ok_or_else(|| format!("data: expected an array, found {}", kind_of(data)))?;
        if let Some(i) = items.iter().position(|item| !item.is_object()) {
            return Err(format!("data[{i}]: expected an object"));
        }
    }
    field::<bool>(obj, "has_more")?;
    field::<String>(obj, "url")?;
    List::<Value>::deserialize(value).map_err(|e| e.to_string())
}

/// Checks that `value` is a Stripe object of type `object` (e.g. `"account"`) and returns it.
pub(crate) fn parse_object(value: &Value, object: &str) -> Result<Value, String> {
    expect_object(value, object)?;
    Ok(value.clone())
}

/// Reads a Stripe object of type `object` into `T`.
pub(crate) fn parse_typed<T: DeserializeOwned>(value: &Value, object: &str) -> Result<T, String> {
    expect_object(value, object)?;
    T::deserialize(value).map_err(|e| e.to_string())
}

/// Reads a list page whose items are Stripe objects of type `object`, into `T`s.
pub(crate) fn parse_list_of<T: DeserializeOwned>(
    value: &Value,
    object: &str,
) -> Result<List<T>, String> {
    let list = parse_list(value)?;
    let data = list
        .data
        .iter()
        .enumerate()
        .map(|(i, item)| parse_typed(item, object).map_err(|e| format!("data[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(List {
        object: list.object,
        data,
        has_more: list.has_more,
        url: list.url,
    })
}

fn expect_object<'v>(value: &'v Value, object: &str) -> Result<&'v Map<String, Value>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind_of(value)))?;
    match obj.get("object") {
        Some(Value::String(s)) if s == object => Ok(obj),
        Some(Value::String(s)) => Err(format!("object is \"{s}\"")),
        Some(other) => Err(format!(
            "object: expected a string, found {}",
            kind_of(other)
        )),
        None => Err("missing field `object`".to_owned()),
    }
}

/// Names the first bad entry of an amounts array; a missing or null field is left to serde
/// (which knows whether it is optional).
fn check_amounts(value: Option<&Value>, name: &str) -> Result<(), String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let entries = value
        .as_array()
        .ok_or_else(|| format!("{name}: expected an array, found {}", kind_of(value)))?;
    for (i, entry) in entries.iter().enumerate() {
        BalanceAmount::deserialize(entry).map_err(|e| format!("{name}[{i}]: {e}"))?;
    }
    Ok(())
}

fn field<T: DeserializeOwned>(obj: &Map<String, Value>, name: &str) -> Result<(), String> {
    match obj.get(name) {
        Some(v) => T::deserialize(v)
            .map(drop)
            .map_err(|e| format!("{name}: {e}")),
        None => Ok(()),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Stripe's own example balance (from the API reference fixtures).
    fn stripe_example_balance() -> Value {
        json!({
            "object": "balance",
            "available": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}],
            "connect_reserved": [{"amount": 0, "currency": "usd"}],
            "livemode": false,
            "pending": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]
        })
    }

    #[test]
    fn parses_stripe_example_balance() {
        let b = parse_balance(&stripe_example_balance()).expect("example parses");
        assert_eq!(
            b.available[0].source_types.as_ref().map(|s| s["card"]),
            Some(0)
        );
        assert_eq!(b.connect_reserved.as_ref().map(Vec::len), Some(1));
        assert!(b.issuing.is_none());
    }

    #[test]
    fn parses_every_optional_bucket_and_tolerates_unknown_fields() {
        let v = json!({
            "object": "balance", "livemode": true, "brand_new_field": {"x": 1},
            "available": [{"amount": -1250, "currency": "EUR", "future": true}],
            "pending": [],
            "instant_available": [{"amount": 5, "currency": "usd",
                "net_available": [{"amount": 4, "destination": "ba_1"}]}],
            "issuing": {"available": [{"amount": 7, "currency": "gbp"}]},
            "refund_and_dispute_prefunding": {
                "available": [{"amount": 1, "currency": "usd"}],
                "pending": [{"amount": 2, "currency": "usd"}]}
        });
        let b = parse_balance(&v).expect("parses");
        assert_eq!(b.available[0].amount, -1250);
        assert_eq!(b.available[0].currency, "eur");
        assert_eq!(
            b.instant_available.expect("present")[0]
                .net_available
                .as_ref()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(b.issuing.expect("present").available[0].amount, 7);
        assert_eq!(
            b.refund_and_dispute_prefunding.expect("present").pending[0].amount,
            2
        );
    }

    #[test]
    fn available_not_an_array_names_the_field() {
        let mut v = stripe_example_balance();
        v["available"] = json!("lots");
        let err = parse_balance(&v).expect_err("not a balance");
        assert!(err.starts_with("available: expected an array"), "{err}");
    }

    #[test]
    fn bad_entry_names_its_index() {
        let mut v = stripe_example_balance();
        v["pending"] =
            json!([{"amount": 1, "currency": "usd"}, {"amount": "1", "currency": "usd"}]);
        let err = parse_balance(&v).expect_err("string amount");
        assert!(err.starts_with("pending[1]: invalid type: string"), "{err}");
    }

    #[test]
    fn wrong_object_or_missing_fields_are_explained() {
        let err =
            parse_balance(&json!({"object": "account", "id": "acct_1"})).expect_err("account");
        assert_eq!(err, "object is \"account\"");
        let err = parse_balance(&json!({"object": "balance", "livemode": false, "pending": []}))
            .expect_err("no available");
        assert!(err.contains("missing field `available`"), "{err}");
        let err = parse_balance(&json!([1, 2])).expect_err("array");
        assert_eq!(err, "expected a JSON object, found an array");
    }

    #[test]
    fn parses_a_list_page() {
        let v = json!({"object": "list", "url": "/v1/accounts", "has_more": true,
            "data": [{"id": "acct_1", "object": "account"}]});
        let list = parse_list(&v).expect("parses");
        assert!(list.has_more);
        assert_eq!(list.data[0]["id"], "acct_1");
        let err = parse_list(
            &json!({"object": "list", "url": "/v1/accounts", "has_more": "no", "data": []}),
        )
        .expect_err("bad has_more");
        assert!(err.starts_with("has_more: invalid type"), "{err}");
    }

    #[test]
    fn a_created_webhook_endpoint_keeps_its_secret_out_of_debug() {
        let v = json!({"id": "we_1", "object": "webhook_endpoint", "url": "https://t.example/h",
            "enabled_events": ["*"], "status": "enabled", "livemode": false,
            "secret": "whsec_abc123", "application": null, "api_version": null});
        let created: CreatedWebhookEndpoint = parse_typed(&v, "webhook_endpoint").expect("parses");
        assert_eq!(created.endpoint.id, "we_1");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&created.secret),
            "whsec_abc123"
        );
        assert!(!format!("{created:?}").contains("whsec_abc123"));
        let list: List<WebhookEndpoint> = parse_list_of(
            &json!({"object": "list", "url": "/v1/webhook_endpoints", "has_more": false,
                "data": [{"id": "we_1", "object": "webhook_endpoint", "url": "https://a/b"}]}),
            "webhook_endpoint",
        )
        .expect("parses");
        assert_eq!(list.data[0].url, "https://a/b");
        let err = parse_list_of::<WebhookEndpoint>(
            &json!({"object": "list", "url": "/", "has_more": false,
                "data": [{"id": "acct_1", "object": "account"}]}),
            "webhook_endpoint",
        )
        .expect_err("not endpoints");
        assert_eq!(err, "data[0]: object is \"account\"");
    }

    #[test]
    fn parse_object_checks_the_type() {
        assert!(parse_object(&json!({"object": "account", "id": "acct_1"}), "account").is_ok());
        assert!(parse_object(&json!({"object": "balance"}), "account").is_err());
    }
}
