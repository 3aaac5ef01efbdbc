//! Stripe's form-style parameters (`created[gt]=…`, `metadata[key]=…`) parsed into what
//! the handlers use. Unknown parameters are refused as Stripe refuses them.

use std::collections::BTreeMap;

use axum::http::StatusCode;

use super::errors::SimError;
use super::world::{known_country, AccountType, CreatedRange, Cursor, NewAccount};

pub type Pairs = Vec<(String, String)>;

/// Decodes `a=1&b[c]=2` into pairs, keeping bracketed names whole.
pub fn decode(raw: &str) -> Result<Pairs, SimError> {
    serde_urlencoded::from_str(raw).map_err(|_| {
        SimError::invalid(
            StatusCode::BAD_REQUEST,
            "Invalid request: the parameters could not be decoded as \
             application/x-www-form-urlencoded.",
        )
    })
}

pub fn unknown(name: &str) -> SimError {
    SimError::invalid(
        StatusCode::BAD_REQUEST,
        format!("Received unknown parameter: {name}"),
    )
    .code("parameter_unknown")
    .param(name)
}

fn integer(name: &str, value: &str) -> Result<i64, SimError> {
    value.parse().map_err(|_| {
        SimError::invalid(StatusCode::BAD_REQUEST, format!("Invalid integer: {value}"))
            .code("parameter_invalid_integer")
            .param(name)
    })
}

/// Whether a parameter is one the simulator accepts and ignores (expansion, for one).
pub fn ignorable(name: &str) -> bool {
    name == "expand" || name.starts_with("expand[")
}

#[derive(Debug, Default)]
pub struct ListParams {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub created: CreatedRange,
}

/// `GET /v1/accounts` parameters.
pub fn list_params(pairs: &Pairs) -> Result<ListParams, SimError> {
    list_params_with(pairs, &[]).map(|(params, _)| params)
}

/// A list's paging and `created` parameters, and the pairs named in `extra` (the list's
/// own filters) for the caller; anything else is refused.
pub fn list_params_with(pairs: &Pairs, extra: &[&str]) -> Result<(ListParams, Pairs), SimError> {
    let mut rest = Pairs::new();
    let mut params = ListParams {
        limit: 10,
        ..ListParams::default()
    };
    let mut starting_after = None;
    let mut ending_before = None;
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                let limit = integer(name, value)?;
                if !(1..=100).contains(&limit) {
                    return Err(SimError::invalid(
                        StatusCode::BAD_REQUEST,
                        "Invalid limit: must be between 1 and 100",
                    )
                    .param("limit"));
                }
                params.limit = usize::try_from(limit).unwrap_or(10);
            }
            "starting_after" => starting_after = Some(value.clone()),
            "ending_before" => ending_before = Some(value.clone()),
            "created" => {
                let t = integer(name, value)?;
                params.created.gte = Some(t);
                params.created.lte = Some(t);
            }
            "created[gt]" => params.created.gt = Some(integer(name, value)?),
            "created[gte]" => params.created.gte = Some(integer(name, value)?),
            "created[lt]" => params.created.lt = Some(integer(name, value)?),
            "created[lte]" => params.created.lte = Some(integer(name, value)?),
            other if ignorable(other) => {}
            other if extra.contains(&other) => rest.push((name.clone(), value.clone())),
            other => return Err(unknown(other)),
        }
    }
    params.cursor = match (starting_after, ending_before) {
        (Some(_), Some(_)) => {
            return Err(SimError::invalid(
                StatusCode::BAD_REQUEST,
                "You may only specify one of these parameters: ending_before, starting_after.",
            )
            .code("parameters_exclusive"))
        }
        (Some(id), None) => Some(Cursor::StartingAfter(id)),
        (None, Some(id)) => Some(Cursor::EndingBefore(id)),
        (None, None) => None,
    };
    Ok((params, rest))
}

/// Parameter groups of `POST /v1/accounts` the simulator accepts but does not model.
const ACCEPTED_GROUPS: [&str; 10] = [
    "business_type",
    "business_profile",
    "capabilities",
    "company",
    "controller",
    "default_currency",
    "external_account",
    "individual",
    "settings",
    "tos_acceptance",
];

/// `POST /v1/accounts` parameters.
pub fn new_account(pairs: &Pairs) -> Result<NewAccount, SimError> {
    let mut kind = None;
    let mut dashboard = None;
    let mut new = NewAccount {
        kind: AccountType::Standard,
        country: None,
        email: None,
        metadata: BTreeMap::new(),
    };
    for (name, value) in pairs {
        let group = name.split('[').next().unwrap_or_default();
        match name.as_str() {
            "type" => {
                kind = Some(AccountType::parse(value).ok_or_else(|| {
                    SimError::invalid(
                        StatusCode::BAD_REQUEST,
                        "Invalid type: must be one of custom, express, or standard",
                    )
                    .param("type")
                })?)
            }
            "country" => {
                new.country = Some(known_country(value).ok_or_else(|| {
                    SimError::invalid(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Country '{value}' is unknown. Try using a 2-character \
                             alphanumeric country code instead, such as 'US', 'EG', or 'GB'."
                        ),
                    )
                    .param("country")
                })?)
            }
            "email" => new.email = Some(value.clone()),
            "controller[stripe_dashboard][type]" => dashboard = Some(value.clone()),
            _ if group == "metadata" => {
                let key = name
                    .strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                    .ok_or_else(|| unknown(name))?;
                // As on Stripe, an empty value unsets the key.
                if !value.is_empty() {
                    new.metadata.insert(key.to_string(), value.clone());
                }
            }
            _ if ACCEPTED_GROUPS.contains(&group) || ignorable(name) => {}
            other => return Err(unknown(other)),
        }
    }
    // Without `type`, Stripe derives the kind of account from its controller settings.
    new.kind = kind.unwrap_or(match dashboard.as_deref() {
        Some("express") => AccountType::Express,
        Some("none") => AccountType::Custom,
        _ => AccountType::Standard,
    });
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &str) -> Pairs {
        decode(raw).expect("test input is valid")
    }

    #[test]
    fn list_defaults_and_bounds() {
        assert_eq!(list_params(&pairs("")).map(|p| p.limit).ok(), Some(10));
        assert!(list_params(&pairs("limit=0")).is_err());
        assert!(list_params(&pairs("limit=101")).is_err());
        assert!(list_params(&pairs("limit=x")).is_err());
        assert!(list_params(&pairs("starting_after=a&ending_before=b")).is_err());
        assert!(list_params(&pairs("bogus=1")).is_err());
        let p = list_params(&pairs("created%5Bgt%5D=5&created[lte]=9")).expect("valid");
        assert_eq!((p.created.gt, p.created.lte), (Some(5), Some(9)));
    }

    #[test]
    fn new_account_form() {
        let a = new_account(&pairs(
            "type=express&country=US&metadata[accountid]=x&capabilities[transfers][requested]=true",
        ))
        .expect("valid");
        assert_eq!(a.kind, AccountType::Express);
        assert_eq!(a.metadata.get("accountid").map(String::as_str), Some("x"));
        assert!(new_account(&pairs("type=weird")).is_err());
        assert!(new_account(&pairs("nonsense=1")).is_err());
    }
}
