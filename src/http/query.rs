//! Raw query-string parsing, so every malformed parameter gets our own stable code
//! rather than a framework rejection.

use super::error::ApiError;

pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(raw: Option<&str>) -> Result<QueryParams, ApiError> {
        let pairs = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|_| ApiError::invalid("invalid-query", "the query string is malformed"))?;
        Ok(QueryParams(pairs))
    }

    /// The first non-empty value of `key`; an empty value counts as absent, as the
    /// Dashboard module treats it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_query_string_parses_or_is_invalid_query(raw in "\\PC{0,60}", key in "[a-z]{1,8}") {
            match QueryParams::parse(Some(&raw)) {
                Ok(params) => {
                    // An empty value counts as absent.
                    prop_assert!(params.get(&key).is_none_or(|value| !value.is_empty()));
                }
                Err(error) => prop_assert_eq!(error.code(), "invalid-query"),
            }
        }
    }
}
