//! Paging of the operator lists (tokens, the audit log, balance refreshes), the way
//! Stripe pages its lists: `limit` (1 to 100) and `starting_after` (the last id the
//! client saw), a body `{object: "list", url, has_more, data}`, and an RFC 8288
//! `Link` header with `rel="next"` while more follow, so a client can walk the pages
//! without building URLs. (The Dashboard-compatible account listing keeps its own
//! array body and offset paging; see `accounts.rs`.)

use std::fmt::Display;
use std::str::FromStr;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::query::QueryParams;
use crate::store::{self, Page};

pub const MAX_LIMIT: i64 = 100;

/// What a list request asked for: how many, and after which id.
pub struct PageRequest<Id> {
    pub limit: i64,
    pub starting_after: Option<Id>,
}

impl<Id: FromStr> PageRequest<Id> {
    /// `limit` (default `default_limit`) and `starting_after`, parsed as an `Id`;
    /// `what` names the id in the error (`"a refresh id"`).
    pub fn parse(
        params: &QueryParams,
        default_limit: i64,
        what: &str,
    ) -> Result<PageRequest<Id>, ApiError> {
        let limit = match params.get("limit") {
            None => default_limit,
            Some(value) => value
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid("invalid-limit", "limit must be an integer from 1 to 100")
                })?,
        };
        let starting_after = params
            .get("starting_after")
            .map(|id| id.parse::<Id>().map_err(|_| unknown_cursor(what)))
            .transpose()?;
        Ok(PageRequest {
            limit,
            starting_after,
        })
    }

    /// How many rows to read: one more than asked tells whether more follow.
    pub fn fetch_limit(&self) -> i64 {
        store::fetch_limit(self.limit)
    }
}

/// `starting_after` names no record of this list (a malformed id, or one that does
/// not exist, or belongs to another tenant).
pub fn unknown_cursor(what: &str) -> ApiError {
    ApiError::invalid(
        "invalid-starting-after",
        format!("starting_after must be {what} from this list"),
    )
}

impl<T> Page<T> {
    /// The page as Stripe's list body, with `Link: <…starting_after=last>;
    /// rel="next"` when more follow. `raw` is the request's query string: the next
    /// link keeps its other parameters. `id` is a row's id as the client sends it back.
    pub fn respond<I: Display>(
        self,
        path: &str,
        raw: Option<&str>,
        limit: i64,
        id: impl Fn(&T) -> I,
    ) -> Response
    where
        T: Serialize,
    {
        let next = self
            .data
            .last()
            .filter(|_| self.has_more)
            .map(|last| next_link(path, raw, limit, &id(last).to_string()));
        let body =
            json!({"object": "list", "url": path, "has_more": self.has_more, "data": self.data});
        let mut response = Json(body).into_response();
        if let Some(value) = next.and_then(|link| HeaderValue::from_str(&link).ok()) {
            response.headers_mut().insert(header::LINK, value);
        }
        response
    }
}

/// `rel="next"`: the page after `last`, keeping the request's other parameters.
fn next_link(path: &str, raw: Option<&str>, limit: i64, last: &str) -> String {
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .filter(|(key, value)| key != "starting_after" && key != "limit" && !value.is_empty())
            .collect();
    pairs.push(("limit".into(), limit.to_string()));
    pairs.push(("starting_after".into(), last.to_owned()));
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!("<{path}?{encoded}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_keeps_the_other_parameters_and_replaces_the_cursor() {
        assert_eq!(
            next_link(
                "/api/administrator/audit",
                Some("tenant=acme&limit=2&starting_after=9&since="),
                2,
                "7"
            ),
            "</api/administrator/audit?tenant=acme&limit=2&starting_after=7>; rel=\"next\""
        );
    }

    #[test]
    fn one_row_more_than_asked_means_more_follow() {
        let page = Page::from_fetched(vec![1, 2, 3], 2);
        assert_eq!(page.data, vec![1, 2]);
        assert!(page.has_more);
        let last = Page::from_fetched(vec![1, 2], 2);
        assert!(!last.has_more);
        assert_eq!(store::fetch_limit(2), 3);
    }

    #[test]
    fn limits_outside_one_to_a_hundred_are_refused() {
        for raw in ["limit=0", "limit=101", "limit=x", "limit=-1"] {
            let params = QueryParams::parse(Some(raw)).expect("parses");
            let error = PageRequest::<i64>::parse(&params, 10, "an id")
                .err()
                .expect("refused");
            assert_eq!(error.code(), "invalid-limit", "{raw}");
        }
        let params = QueryParams::parse(Some("starting_after=abc")).expect("parses");
        let error = PageRequest::<i64>::parse(&params, 10, "an id")
            .err()
            .expect("refused");
        assert_eq!(error.code(), "invalid-starting-after");
    }
}
