//! The value types of query parameters that are not domain types: each says how it is
//! read, what a malformed one is told (`domain::FromText`), and its schema in the
//! document (`utoipa::PartialSchema`; fields of this type take `#[param(inline)]`).
//! The code a malformed one gets is its parameter's (`Code::of_param`).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::deserialize_from_text;
use crate::domain::FromText;
use crate::schema::text_schema;

/// A schema of `schema_type` in `format`.
fn formatted(schema_type: Type, format: KnownFormat) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(schema_type)
        .format(Some(SchemaFormat::KnownFormat(format)))
}

/// A whole number of seconds from 0 to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds<const MAX: u64>(pub Duration);

impl<const MAX: u64> FromText for Seconds<MAX> {
    fn from_text(text: &str) -> Option<Self> {
        text.parse::<u64>()
            .ok()
            .filter(|secs| *secs <= MAX)
            .map(|secs| Seconds(Duration::from_secs(secs)))
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number of seconds from 0 to {MAX}")
    }
}

impl<const MAX: u64> PartialSchema for Seconds<MAX> {
    fn schema() -> RefOr<Schema> {
        formatted(Type::Integer, KnownFormat::Int64)
            .minimum(Some(0))
            .maximum(Some(MAX))
            .build()
            .into()
    }
}
impl<const MAX: u64> ToSchema for Seconds<MAX> {}

impl<'de, const MAX: u64> serde::Deserialize<'de> for Seconds<MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::domain::deserialize_text(deserializer)
    }
}

/// An integer from `MIN` to `MAX` (a `limit`, an `offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> FromText for Int<MIN, MAX> {
    fn from_text(text: &str) -> Option<Self> {
        text.parse::<i64>()
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
            .map(Int)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer from {MIN} to {MAX}")
    }
}

impl<const MIN: i64, const MAX: i64> PartialSchema for Int<MIN, MAX> {
    fn schema() -> RefOr<Schema> {
        formatted(Type::Integer, KnownFormat::Int64)
            .minimum(Some(MIN))
            .maximum(Some(MAX))
            .build()
            .into()
    }
}
impl<const MIN: i64, const MAX: i64> ToSchema for Int<MIN, MAX> {}

impl<'de, const MIN: i64, const MAX: i64> serde::Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::domain::deserialize_text(deserializer)
    }
}

/// `limit` of the operator lists (tokens, the audit log, refreshes), as Stripe pages.
pub type PageLimit = Int<1, { super::paging::MAX_LIMIT }>;

/// An integer id of a record (a token, an audit event): what `starting_after` names
/// in the lists of such records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId(pub i64);

impl FromText for RecordId {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok().map(RecordId)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id from this list")
    }
}

impl PartialSchema for RecordId {
    fn schema() -> RefOr<Schema> {
        formatted(Type::Integer, KnownFormat::Int64).build().into()
    }
}
impl ToSchema for RecordId {}

/// `true` or `false` in any case, or `1` or `0`, as the Dashboard module reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl FromText for Flag {
    fn from_text(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Flag(true)),
            "false" | "0" => Some(Flag(false)),
            _ => None,
        }
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("true or false")
    }
}

impl PartialSchema for Flag {
    fn schema() -> RefOr<Schema> {
        text_schema(
            Some("^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$"),
            "`true` or `false` (any case), or `1` or `0`.",
        )
    }
}
impl ToSchema for Flag {}

/// An RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl FromText for Timestamp {
    fn from_text(text: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp(t.with_timezone(&Utc)))
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        formatted(Type::String, KnownFormat::DateTime)
            .build()
            .into()
    }
}
impl ToSchema for Timestamp {}

/// A calendar date, `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub NaiveDate);

impl FromText for Day {
    fn from_text(text: &str) -> Option<Self> {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(Day)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a date such as 2026-11-30")
    }
}

impl PartialSchema for Day {
    fn schema() -> RefOr<Schema> {
        formatted(Type::String, KnownFormat::Date)
            .pattern(Some("^\\d{4}-\\d{2}-\\d{2}$"))
            .build()
            .into()
    }
}
impl ToSchema for Day {}

/// A balance refresh's id (a UUID), as `refresh` names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRef(pub Uuid);

impl FromText for RefreshRef {
    fn from_text(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(RefreshRef)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a balance refresh id (a UUID)")
    }
}

impl PartialSchema for RefreshRef {
    fn schema() -> RefOr<Schema> {
        formatted(Type::String, KnownFormat::Uuid).build().into()
    }
}
impl ToSchema for RefreshRef {}

/// A refresh id as a cursor of the refreshes' list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshCursor(pub Uuid);

impl FromText for RefreshCursor {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok().map(RefreshCursor)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a refresh id from this list")
    }
}

impl PartialSchema for RefreshCursor {
    fn schema() -> RefOr<Schema> {
        RefreshRef::schema()
    }
}
impl ToSchema for RefreshCursor {}

deserialize_from_text!(RecordId, Flag, Timestamp, Day, RefreshRef, RefreshCursor);
