//! The listing's query parameters, parsed at the edge and checked together.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::{OwnerId, StripeAccountId};
use crate::http::error::{ApiError, Code};
use crate::http::params::{Flag, Int};
use crate::store::accounts::Direction;

type Offset = Int<0, { i64::MAX }>;
type ListLimit = Int<1, { i64::MAX }>;

/// The listing's query parameters (checked together by [`ListParams::listing`]).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Records to skip, newest `createdAt` first (ties by stripeid); default 0. Not with
    /// a cursor.
    #[param(inline)]
    offset: Option<Offset>,
    /// Records per page; default `api.page_size` (`PAGE_SIZE`). Above 500 the page is
    /// streamed; with a cursor at most 500.
    #[param(inline)]
    limit: Option<ListLimit>,
    /// `true` (or `1`): every record, streamed, `offset` and `limit` ignored. Not with a
    /// cursor.
    #[param(inline)]
    all: Option<Flag>,
    /// Only the records of this owner (the platform's own user id, from the Stripe
    /// account's metadata). An owner with no stored account is 404 `invalid-accountid`.
    #[param(inline)]
    accountid: Option<OwnerId>,
    /// A cursor: the page of records after this listed account (at most 500 per page).
    /// With `offset`, `all=true` or `ending_before`: 400 `invalid-paging`.
    #[param(inline)]
    starting_after: Option<StripeAccountId>,
    /// A cursor: the page of records before this listed account.
    #[param(inline)]
    ending_before: Option<StripeAccountId>,
}

/// The `accountid` filter of the count.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OwnerQuery {
    /// Only the records of this owner; an owner with no stored account is 404
    /// `invalid-accountid`.
    #[param(inline)]
    pub accountid: Option<OwnerId>,
}

/// One account, by its Stripe id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AccountQuery {
    /// The account's Stripe id.
    #[param(inline)]
    pub stripeid: StripeAccountId,
}

/// The listing's query, parsed at the edge.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListQuery {
    pub owner: Option<OwnerId>,
    pub offset: i64,
    pub limit: i64,
    pub all: bool,
    /// `starting_after` / `ending_before`: a page by cursor instead of by offset.
    pub cursor: Option<(Direction, StripeAccountId)>,
}

/// The largest page by cursor (a cursor page is never streamed).
const CURSOR_LIMIT_MAX: i64 = 500;

impl ListParams {
    /// The parameters checked together: a cursor takes neither `offset` nor `all`, and
    /// at most 500 records.
    pub(super) fn listing(self, default_limit: i64) -> Result<ListQuery, ApiError> {
        let cursor = match (self.starting_after, self.ending_before) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "give starting_after or ending_before, not both",
                ))
            }
            (Some(id), None) => Some((Direction::Forward, id)),
            (None, Some(id)) => Some((Direction::Backward, id)),
            (None, None) => None,
        };
        let limit = self.limit.map_or(default_limit, |Int(limit)| limit);
        let all = self.all.is_some_and(|Flag(all)| all);
        if cursor.is_some() {
            if self.offset.is_some() {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "offset and a cursor (starting_after, ending_before) cannot be combined",
                ));
            }
            if all {
                return Err(ApiError::new(
                    Code::InvalidPaging,
                    "all=true and a cursor (starting_after, ending_before) cannot be combined",
                ));
            }
            if limit > CURSOR_LIMIT_MAX {
                return Err(ApiError::new(
                    Code::InvalidLimit,
                    "with a cursor, limit is an integer from 1 to 500",
                ));
            }
        }
        Ok(ListQuery {
            owner: self.accountid,
            offset: self.offset.map_or(0, |Int(offset)| offset),
            limit,
            all,
            cursor,
        })
    }
}

impl ListQuery {
    #[cfg(test)]
    fn parse(raw: Option<&str>, default_limit: i64) -> Result<ListQuery, ApiError> {
        crate::http::query::parse::<ListParams>(raw)?.listing(default_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str) -> Result<ListQuery, &'static str> {
        ListQuery::parse(Some(raw), 10).map_err(|error| error.code().as_str())
    }

    #[test]
    fn defaults_follow_the_configured_page_size() {
        assert_eq!(
            ListQuery::parse(None, 7).ok(),
            Some(ListQuery {
                owner: None,
                offset: 0,
                limit: 7,
                all: false,
                cursor: None,
            })
        );
    }

    #[test]
    fn malformed_values_get_their_own_codes() {
        assert_eq!(parse("offset=-1").unwrap_err(), "invalid-offset");
        assert_eq!(parse("offset=x").unwrap_err(), "invalid-offset");
        assert_eq!(parse("limit=0").unwrap_err(), "invalid-limit");
        assert_eq!(parse("limit=1.5").unwrap_err(), "invalid-limit");
        assert_eq!(parse("all=yes").unwrap_err(), "invalid-all");
        assert_eq!(
            parse("starting_after=x").unwrap_err(),
            "invalid-starting-after"
        );
        assert_eq!(
            parse("ending_before=x").unwrap_err(),
            "invalid-ending-before"
        );
        assert_eq!(
            parse("starting_after=acct_1A&ending_before=acct_1B").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&offset=2").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&all=true").unwrap_err(),
            "invalid-paging"
        );
        assert_eq!(
            parse("starting_after=acct_1A&limit=501").unwrap_err(),
            "invalid-limit"
        );
    }

    #[test]
    fn well_formed_values_are_taken() {
        let query = parse("offset=3&limit=2&all=TRUE&accountid=acct_o").expect("valid");
        assert_eq!(
            query,
            ListQuery {
                owner: OwnerId::parse("acct_o"),
                offset: 3,
                limit: 2,
                all: true,
                cursor: None,
            }
        );
    }

    /// Pieces of query strings that break parsers.
    fn query() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("offset"),
            Just("limit"),
            Just("all"),
            Just("accountid"),
            Just("stripeid"),
            Just("starting_after"),
            Just("ending_before"),
            Just("x")
        ];
        let value = prop_oneof![
            any::<i128>().prop_map(|n| n.to_string()),
            Just("%00".to_owned()),
            Just("%FF".to_owned()),
            Just("%".to_owned()),
            "[ -~]{0,10}",
            "\\PC{0,6}",
        ];
        let pairs = prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        });
        prop_oneof![pairs, "[ -~]{0,40}", "\\PC{0,20}"]
    }

    proptest! {
        #[test]
        fn the_listing_parser_never_panics_and_answers_only_its_codes(raw in query()) {
            match ListQuery::parse(Some(&raw), 10) {
                Ok(query) => {
                    prop_assert!(query.offset >= 0);
                    prop_assert!(query.limit >= 1);
                }
                Err(error) => {
                    prop_assert_eq!(error.status().as_u16(), 400);
                    prop_assert!(matches!(
                        error.code().as_str(),
                        "invalid-query" | "invalid-offset" | "invalid-limit" | "invalid-all"
                            | "invalid-accountid" | "invalid-starting-after" | "invalid-ending-before"
                    ), "{}", error.code());
                }
            }
        }

        #[test]
        fn the_owner_and_stripeid_parsers_never_let_nul_through(raw in query()) {
            match crate::http::query::parse::<OwnerQuery>(Some(&raw)) {
                Ok(OwnerQuery { accountid: Some(owner) }) => prop_assert!(!owner.as_str().contains('\0')),
                Ok(OwnerQuery { accountid: None }) => {}
                Err(error) => prop_assert_eq!(error.code(), Code::MalformedAccountid),
            }
            match crate::http::query::parse::<AccountQuery>(Some(&raw)) {
                Ok(AccountQuery { stripeid }) => prop_assert!(stripeid.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
                Err(error) => prop_assert_eq!(error.code(), Code::MalformedStripeid),
            }
        }

        #[test]
        fn every_i64_offset_and_limit_in_range_is_taken_and_nothing_else(n in any::<i128>()) {
            let offset = parse(&format!("offset={n}"));
            let limit = parse(&format!("limit={n}"));
            let fits = i64::try_from(n).is_ok();
            prop_assert_eq!(offset.is_ok(), fits && n >= 0);
            prop_assert_eq!(limit.is_ok(), fits && n >= 1);
            if let Err(code) = offset { prop_assert_eq!(code, "invalid-offset"); }
            if let Err(code) = limit { prop_assert_eq!(code, "invalid-limit"); }
        }
    }
}
