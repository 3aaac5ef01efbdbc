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
