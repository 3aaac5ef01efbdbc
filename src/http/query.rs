//! Query strings, read one way everywhere: [`ApiQuery<T>`] deserializes the query into
//! `T`, a serde struct that also derives `utoipa::IntoParams`, so the type that parses
//! a request is the one its documentation is made from. A malformed value is answered
//! with its parameter's own code ([`Code::of_param`]: `invalid-limit`, …) and a message
//! saying what was expected, which the value's type gives (`domain::FromText`).
//!
//! The rules, as the Dashboard module has them: a value is percent-decoded (invalid
//! UTF-8 becomes U+FFFD, so every query string can be read); an empty value counts as
//! absent; of a repeated parameter the first non-empty value counts; unknown parameters
//! are ignored. `T`'s fields are each `Option<V>` or a required `V`, where `V` reads a
//! string (no `#[serde(default)]`, `flatten` or aliases).

use std::borrow::Cow;
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::error::{ApiError, Code};

/// The query, deserialized into `T`; rejected with the error body and the code of the
/// first malformed parameter (in `T`'s field order).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse(parts.uri.query()).map(ApiQuery)
    }
}

/// Reads `raw` (a query string without `?`) into `T`, as [`ApiQuery`] does.
pub fn parse<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    let pairs = pairs(raw)?;
    T::deserialize(Query { pairs: &pairs }).map_err(ApiError::from)
}

/// The decoded pairs of a query string, in order.
pub fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| ApiError::new(Code::InvalidQuery, "the query string is malformed"))
}

/// The first non-empty value of `key`; an empty value counts as absent.
pub fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Why a query could not be read into its type, from serde.
#[derive(Debug)]
pub struct QueryError {
    /// The parameter, once known.
    param: Option<&'static str>,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    /// Absent, and required; what it should be.
    Missing(String),
    /// Present and malformed; what it should be.
    Malformed(String),
    /// A message of its own.
    Other(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.param.unwrap_or("the query");
        match &self.problem {
            Problem::Missing(expected) => write!(f, "{name} is required: {expected}"),
            Problem::Malformed(expected) => write!(f, "{name} must be {expected}"),
            Problem::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for QueryError {}

impl de::Error for QueryError {
    fn custom<M: fmt::Display>(message: M) -> QueryError {
        QueryError {
            param: None,
            problem: Problem::Other(message.to_string()),
        }
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> QueryError {
        let expected = expected.to_string();
        QueryError {
            param: None,
            problem: match unexpected {
                // What an absent value offers (see `Value`).
                de::Unexpected::Option => Problem::Missing(expected),
                _ => Problem::Malformed(expected),
            },
        }
    }

    fn invalid_value(_: de::Unexpected<'_>, expected: &dyn de::Expected) -> QueryError {
        QueryError {
            param: None,
            problem: Problem::Malformed(expected.to_string()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> ApiError {
        match error.param.and_then(Code::of_param) {
            Some(code) => ApiError::new(code, error.to_string()),
            // A parameter type that does not read a string: a bug, but the client's
            // query is what could not be read.
            None => ApiError::new(Code::InvalidQuery, Cow::Owned(error.to_string())),
        }
    }
}

/// The query as serde sees it: a struct whose every field is offered, with its value
/// or absent, so a required field that is absent is refused by its own type.
struct Query<'a> {
    pairs: &'a [(String, String)],
}

impl<'de> de::Deserializer<'de> for Query<'_> {
    type Error = QueryError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, QueryError> {
        visitor.visit_map(Fields {
            pairs: self.pairs,
            fields: fields.iter(),
            current: None,
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, QueryError> {
        Err(de::Error::custom("query parameters are read into a struct"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

struct Fields<'a> {
    pairs: &'a [(String, String)],
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = QueryError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, QueryError> {
        let Some(&name) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(name);
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, QueryError> {
        let name = self.current.take().expect("a value follows its key");
        seed.deserialize(Value(first(self.pairs, name)))
            .map_err(|error| QueryError {
                param: Some(name),
                ..error
            })
    }
}

/// One parameter's value, or its absence.
struct Value<'a>(Option<&'a str>);

impl<'de> de::Deserializer<'de> for Value<'_> {
    type Error = QueryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        match self.0 {
            Some(text) => visitor.visit_str(text),
            // A type that is not an `Option` refuses this, saying what it expected.
            None => visitor.visit_none(),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        match self.0 {
            Some(_) => visitor.visit_some(self),
            None => visitor.visit_none(),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StripeAccountId;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Sample {
        stripeid: StripeAccountId,
        accountid: Option<crate::domain::OwnerId>,
    }

    fn refusal(raw: &str) -> (Code, String) {
        let error = parse::<Sample>(Some(raw)).expect_err("refused");
        let code = error.code();
        (code, error.to_string())
    }

    #[test]
    fn a_parameter_is_refused_with_its_own_code_and_what_was_expected() {
        assert_eq!(
            refusal("stripeid=nope"),
            (
                Code::MalformedStripeid,
                "stripeid must be an acct_ id".into()
            )
        );
        assert_eq!(
            refusal("accountid=o"),
            (
                Code::MalformedStripeid,
                "stripeid is required: an acct_ id".into()
            )
        );
        assert_eq!(
            refusal("stripeid=acct_1&accountid=a%00").0,
            Code::MalformedAccountid
        );
    }

    #[test]
    fn empty_values_are_absent_the_first_value_counts_and_unknown_keys_are_ignored() {
        let sample: Sample = parse(Some(
            "x=1&accountid=&stripeid=&stripeid=acct_1A&stripeid=nope&accountid=o",
        ))
        .expect("read");
        assert_eq!(sample.stripeid.as_str(), "acct_1A");
        assert_eq!(sample.accountid.as_ref().map(|o| o.as_str()), Some("o"));
    }

    proptest! {
        #[test]
        fn any_query_string_is_read_or_refused_with_a_parameters_code(raw in "\\PC{0,60}") {
            if let Err(error) = parse::<Sample>(Some(&raw)) {
                prop_assert!(
                    matches!(error.code(), Code::MalformedStripeid | Code::MalformedAccountid),
                    "{}", error.code()
                );
            }
        }
    }
}
