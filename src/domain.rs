//! Newtypes parsed at the edge (STYLE: parse, don't validate), so the core never
//! re-checks strings.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::schema::text_schema;
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// How every timestamp leaves tally (API bodies, CSV): RFC 3339 in UTC with
/// milliseconds, as the Dashboard module writes `createdAt`.
pub fn api_timestamp(at: &DateTime<Utc>) -> String {
    ApiTimestamp(*at).to_string()
}

/// A timestamp written as [`api_timestamp`] writes it, straight into what is being
/// written (a listing page writes two per record, a stream millions) rather than
/// through a `String`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTimestamp(pub DateTime<Utc>);

impl ApiTimestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the digits written in place; `None` for what that
    /// shape cannot hold (a year outside 0..=9999, a leap second), which chrono writes.
    fn fixed_width(&self) -> Option<[u8; 24]> {
        let (date, time) = (self.0.date_naive(), self.0.time());
        let year = u32::try_from(date.year())
            .ok()
            .filter(|year| *year <= 9999)?;
        let millis = time.nanosecond() / 1_000_000;
        if millis >= 1000 {
            return None;
        }
        let mut text = *b"0000-00-00T00:00:00.000Z";
        for (at, width, value) in [
            (0, 4, year),
            (5, 2, date.month()),
            (8, 2, date.day()),
            (11, 2, time.hour()),
            (14, 2, time.minute()),
            (17, 2, time.second()),
            (20, 3, millis),
        ] {
            let mut value = value;
            for digit in text[at..at + width].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(text)
    }
}

impl fmt::Display for ApiTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fixed_width() {
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            None => f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true)),
        }
    }
}

impl Serialize for ApiTimestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.fixed_width() {
            Some(text) => serializer
                .serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?),
            None => serializer.collect_str(self),
        }
    }
}

/// A value read from text at the edge (a query parameter, a JSON string): how it is
/// parsed, and what a well-formed one is. Its `Deserialize` goes through
/// [`deserialize_text`], so a refusal says what was expected ("`stripeid` must be an
/// acct_ id"), and its schema (`utoipa::PartialSchema`) says the same to a client.
pub trait FromText: Sized {
    fn from_text(text: &str) -> Option<Self>;
    /// What a well-formed value is, completing "… must be ": "an acct_ id".
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Deserializes a [`FromText`] value from a string; a malformed one is serde's
/// `invalid_value`, whose expectation is [`FromText::expected`].
pub fn deserialize_text<'de, T: FromText, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    struct Text<T>(PhantomData<T>);
    impl<T: FromText> Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            T::expected(f)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            T::from_text(text).ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
        }
    }
    deserializer.deserialize_str(Text(PhantomData))
}

/// `Deserialize` through [`deserialize_text`] for [`FromText`] types.
#[macro_export]
macro_rules! deserialize_from_text {
    ($($name:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::domain::deserialize_text(deserializer)
            }
        }
    )*};
}

/// A Stripe account id: `acct_` followed by letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct StripeAccountId(String);

impl StripeAccountId {
    pub fn parse(value: &str) -> Option<StripeAccountId> {
        let rest = value.strip_prefix("acct_")?;
        let well_formed = !rest.is_empty()
            && rest.len() <= 255
            && rest.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then(|| StripeAccountId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromText for StripeAccountId {
    fn from_text(text: &str) -> Option<Self> {
        StripeAccountId::parse(text)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an acct_ id")
    }
}

impl PartialSchema for StripeAccountId {
    fn schema() -> RefOr<Schema> {
        text_schema(
            Some("^acct_[A-Za-z0-9]{1,255}$"),
            "A Stripe account id (`acct_…`).",
        )
    }
}
impl ToSchema for StripeAccountId {}

impl PartialEq<str> for StripeAccountId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StripeAccountId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<StripeAccountId> for String {
    fn from(id: StripeAccountId) -> String {
        id.0
    }
}

/// A tenant's slug: lowercase letters, digits, `-` and `_`, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(value: &str) -> Option<TenantSlug> {
        let mut bytes = value.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        (first_ok && rest_ok && value.len() <= 63).then(|| TenantSlug(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromText for TenantSlug {
    fn from_text(text: &str) -> Option<Self> {
        TenantSlug::parse(text)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tenant slug (lowercase letters, digits, - and _)")
    }
}

impl PartialSchema for TenantSlug {
    fn schema() -> RefOr<Schema> {
        text_schema(Some("^[a-z0-9][a-z0-9_-]{0,62}$"), "A tenant's slug.")
    }
}
impl ToSchema for TenantSlug {}

/// An owner id (`accountid`): the platform's own id for the user owning connected
/// accounts, taken from Stripe metadata. Any text a metadata value can hold: 1 to 500
/// characters, and no NUL (Postgres text cannot hold one, so no stored owner has it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct OwnerId(String);

impl OwnerId {
    /// Stripe's limit on a metadata value.
    pub const MAX_CHARS: usize = 500;

    pub fn parse(value: &str) -> Option<OwnerId> {
        let well_formed =
            !value.is_empty() && !value.contains('\0') && value.chars().count() <= Self::MAX_CHARS;
        well_formed.then(|| OwnerId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromText for OwnerId {
    fn from_text(text: &str) -> Option<Self> {
        OwnerId::parse(text)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an owner id: at most 500 characters, no NUL")
    }
}

impl PartialSchema for OwnerId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(OwnerId::MAX_CHARS))
            .pattern(Some("^[^\\x00]+$"))
            .description(Some(
                "An owner id: the platform's own id for the user owning accounts, from \
                 the Stripe account's metadata.",
            ))
            .build()
            .into()
    }
}
impl ToSchema for OwnerId {}

/// A lowercase 3-letter ISO currency code, as Stripe writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Currency(String);

impl Currency {
    /// Any 3 ASCII letters, in either case (Stripe's codes are lowercase).
    pub fn parse(value: &str) -> Option<Currency> {
        (value.len() == 3 && value.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| Currency(value.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromText for Currency {
    fn from_text(text: &str) -> Option<Self> {
        Currency::parse(text)
    }
    fn expected(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a 3-letter ISO code")
    }
}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        text_schema(
            Some("^[A-Za-z]{3}$"),
            "A 3-letter ISO currency code, any case.",
        )
    }
}
impl ToSchema for Currency {}

deserialize_from_text!(StripeAccountId, TenantSlug, OwnerId, Currency);

/// What every text newtype is besides its parsing: shown as its text, and stored as
/// Postgres `text`. Decoding does not parse again: only values parsed at the edge are
/// ever written, so what the database holds is well formed.
macro_rules! text_newtype {
    ($($name:ident),* $(,)?) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.0.as_str(), buf)
            }
        }
        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok($name(<String as sqlx::Decode<sqlx::Postgres>>::decode(value)?))
            }
        }
        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
text_newtype!(StripeAccountId, TenantSlug, OwnerId, Currency);

/// An enum stored as one of a fixed set of words in a `text` column (with a CHECK
/// constraint naming the same words) and sent in API bodies as that word.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $word:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            pub fn parse(value: &str) -> Option<$name> {
                match value { $($word => Some($name::$variant),)+ _ => None }
            }

            /// Every word, for the schema.
            pub fn words() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                crate::schema::one_of_strings(&Self::words()).into()
            }
        }
        impl ToSchema for $name {}

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }
        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl sqlx::Decode<'_, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                $name::parse(word).ok_or_else(|| {
                    format!(concat!("unknown ", stringify!($name), " {:?}"), word).into()
                })
            }
        }
    };
}

text_enum! {
    /// Where a balance refresh stands.
    pub enum RefreshStatus {
        Running => "running",
        /// Every account of its scope was tried since its cutoff.
        Succeeded => "succeeded",
        /// It can no longer finish (the tenant was removed, or its key is unusable).
        Failed => "failed",
        /// Every worker stopped before it finished.
        Interrupted => "interrupted",
    }
}

text_enum! {
    /// What started a balance refresh, which says who waits on it.
    pub enum RefreshTrigger {
        /// A request with `max_age`.
        Poll => "poll",
        /// A person's `POST …/balances/refresh`.
        Person => "person",
        /// The background schedule: nobody waits.
        Schedule => "schedule",
        /// `tally balances`.
        Cli => "cli",
    }
}

/// `value` with every U+0000 in its strings and keys replaced by U+FFFD. Postgres
/// JSONB refuses `\u0000`, and Stripe strings (a business name, metadata) may carry
/// it; borrowed when there is none, which is nearly always.
pub fn without_nul(value: &Value) -> Cow<'_, Value> {
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    fn replace(value: &mut Value) {
        match value {
            Value::String(s) => {
                if s.contains('\0') {
                    *s = s.replace('\0', "\u{fffd}");
                }
            }
            Value::Array(items) => items.iter_mut().for_each(replace),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut item) in entries {
                    replace(&mut item);
                    map.insert(key.replace('\0', "\u{fffd}"), item);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    if !has_nul(value) {
        return Cow::Borrowed(value);
    }
    let mut owned = value.clone();
    replace(&mut owned);
    Cow::Owned(owned)
}

/// Why one account's balance could not be read: what Stripe said (or tally, for a
/// failure of its own, `type: "tally_error"`), and a hint. Stored as a snapshot's
/// `error` and read back as this type, so the aggregate's `failures[]`, its CSV, one
/// account's balance and its history all show the same fields.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", default)]
pub struct FetchFailure {
    /// Stripe's HTTP status; `None` when no answer came (timeout, unreachable).
    pub status: Option<u16>,
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub param: Option<String>,
    pub doc_url: Option<String>,
    pub request_id: Option<String>,
    pub hint: Option<String>,
}

impl FetchFailure {
    /// A balance tally cannot sum in 64-bit minor units (alone, or into the tenant's
    /// totals): stored as a failed try with code `amount-overflow`, however it came
    /// (a fetch, a `balance.available` event).
    pub fn amount_overflow(message: impl Into<String>, request_id: Option<String>) -> FetchFailure {
        FetchFailure {
            error_type: Some("tally_error".into()),
            code: Some("amount-overflow".into()),
            message: Some(message.into()),
            request_id,
            hint: Some(
                "This balance cannot be summed in 64-bit minor units; the totals keep the \
                 account's last good balance. Report it."
                    .into(),
            ),
            ..FetchFailure::default()
        }
    }

    /// The most specific word for what went wrong: Stripe's code, else its type.
    pub fn code_or_type(&self) -> Option<&str> {
        self.code.as_deref().or(self.error_type.as_deref())
    }
}

/// What an API token may do (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every tenant; manages tenants and tokens.
    Owner,
    /// One tenant: read, trigger sync and refresh.
    Admin,
    /// One tenant: read.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_account_ids_are_parsed_strictly() {
        assert!(StripeAccountId::parse("acct_1LEBrTDFE7gToZYy").is_some());
        for bad in ["", "acct_", "acct_12 3", "cus_123", "acct_1;drop", "ACCT_1"] {
            assert!(StripeAccountId::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn api_timestamps_are_rfc3339_in_utc_with_milliseconds() {
        use chrono::{SecondsFormat, TimeZone};
        let instants = [
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(1_600_000_000, 123_456_789).unwrap(),
            Utc.timestamp_opt(1_600_000_000, 999_999_999).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(9999, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 12, 31, 0, 0, 0).unwrap(),
            // A leap second (nanoseconds past one second), as chrono represents it.
            Utc.from_utc_datetime(
                &chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                    .unwrap()
                    .and_hms_milli_opt(23, 59, 59, 1_500)
                    .unwrap(),
            ),
        ];
        for at in instants {
            assert_eq!(
                api_timestamp(&at),
                at.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
            assert_eq!(
                serde_json::to_string(&ApiTimestamp(at)).unwrap(),
                format!("\"{}\"", at.to_rfc3339_opts(SecondsFormat::Millis, true))
            );
        }
        assert_eq!(
            api_timestamp(&instants[1]),
            "2020-09-13T12:26:40.123Z",
            "milliseconds are truncated, as chrono's own formatting does"
        );
    }

    #[test]
    fn owner_ids_are_metadata_values_without_nul() {
        assert!(OwnerId::parse("acct_03e7768574aa6c3d").is_some());
        assert!(OwnerId::parse("user 42 / ü").is_some());
        assert!(OwnerId::parse(&"é".repeat(500)).is_some());
        for bad in ["", "a\0b", &"x".repeat(501)] {
            assert!(OwnerId::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nul_is_replaced_in_strings_and_keys_and_nothing_else_changes() {
        let clean = serde_json::json!({"a": ["b", 1, null, {"c": true}]});
        assert!(matches!(without_nul(&clean), Cow::Borrowed(_)));
        let dirty = serde_json::json!({"k\u{0}": ["x\u{0}y", {"n": "\u{0}"}], "n": 2});
        assert_eq!(
            without_nul(&dirty).into_owned(),
            serde_json::json!({"k\u{fffd}": ["x\u{fffd}y", {"n": "\u{fffd}"}], "n": 2})
        );
    }

    #[test]
    fn tenant_slugs_are_lowercase_words() {
        assert!(TenantSlug::parse("acme-eu_1").is_some());
        for bad in ["", "-acme", "Acme", "a b", &"a".repeat(64)] {
            assert!(TenantSlug::parse(bad).is_none(), "{bad:?} accepted");
        }
    }
}
