//! Paging of the operator lists (tokens, the audit log, balance refreshes), the way
//! Stripe pages its lists: `limit` (1 to 100) and `starting_after` (the last id the
//! client saw), a body `{object: "list", url, has_more, data}`, and an RFC 8288
//! `Link` header with `rel="next"` while more follow, so a client can walk the pages
//! without building URLs. (The Dashboard-compatible account listing keeps its own
//! array body and offset paging; see `accounts.rs`.)

use std::fmt::Display;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::{ApiError, Code};
use crate::store::Page;

/// The largest `limit` of an operator list.
pub const MAX_LIMIT: i64 = 100;

/// The body of a page of an operator list: `{object: "list", url, has_more, data}`.
pub trait ListBody: Serialize {
    type Item;
    fn new(url: &'static str, page: Page<Self::Item>) -> Self;
}

/// Declares the list body of `$item`s (its own schema, so each list is typed):
/// `list_body!(/** A page of refreshes. */ BalanceRefreshList, RefreshBody);`
macro_rules! list_body {
    ($(#[doc = $doc:literal])* $name:ident, $item:ty) => {
        $(#[doc = $doc])*
        #[derive(serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            #[schema(schema_with = $crate::http::paging::list_kind)]
            object: &'static str,
            /// The list's path.
            url: &'static str,
            /// More follow: the `Link` header's `rel="next"` (or `starting_after` set to
            /// the last id) reads them.
            has_more: bool,
            data: Vec<$item>,
        }

        impl $crate::http::paging::ListBody for $name {
            type Item = $item;
            fn new(url: &'static str, page: $crate::store::Page<$item>) -> Self {
                $name {
                    object: "list",
                    url,
                    has_more: page.has_more,
                    data: page.data,
                }
            }
        }
    };
}
pub(crate) use list_body;

/// The `object` of a list body.
pub fn list_kind() -> utoipa::openapi::schema::Schema {
    super::openapi::kind("list")
}

/// `starting_after` names no record of this list (one that does not exist, or
/// belongs to another tenant).
pub fn unknown_cursor(what: &str) -> ApiError {
    ApiError::new(
        Code::InvalidStartingAfter,
        format!("starting_after must be {what} from this list"),
    )
}

/// The page as its list body `L`, with `Link: <…starting_after=last>; rel="next"`
/// when more follow. `raw` is the request's query string: the next link keeps its
/// other parameters. `id` is a row's id as the client sends it back.
pub fn respond<L: ListBody, I: Display>(
    page: Page<L::Item>,
    path: &'static str,
    raw: Option<&str>,
    limit: i64,
    id: impl Fn(&L::Item) -> I,
) -> Response {
    let next = page
        .data
        .last()
        .filter(|_| page.has_more)
        .map(|last| next_link(path, raw, limit, &id(last).to_string()));
    let mut response = Json(L::new(path, page)).into_response();
    if let Some(value) = next.and_then(|link| HeaderValue::from_str(&link).ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

/// `rel="next"`: the page after `last`, keeping the request's other parameters.
fn next_link(path: &str, raw: Option<&str>, limit: i64, last: &str) -> String {
    let mut pairs: Vec<(String, String)> = super::query::pairs(raw)
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
    use crate::store;

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
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Listing {
            limit: Option<super::super::params::PageLimit>,
            starting_after: Option<super::super::params::RecordId>,
        }
        let refused = |raw: &str| {
            super::super::query::parse::<Listing>(Some(raw))
                .err()
                .map(|error| error.code())
        };
        for raw in ["limit=0", "limit=101", "limit=x", "limit=-1"] {
            assert_eq!(refused(raw), Some(Code::InvalidLimit), "{raw}");
        }
        assert_eq!(refused("limit=100"), None);
        assert_eq!(
            refused("starting_after=abc"),
            Some(Code::InvalidStartingAfter)
        );
    }
}
