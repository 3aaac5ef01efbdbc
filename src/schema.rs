//! Builders for the OpenAPI schemas of types that implement or annotate their own, at
//! any layer (domain types, use cases' views, HTTP bodies): the `object` of a record,
//! a string of a few values, a string with a pattern. The document itself is made in
//! `http::openapi`.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// A string schema that takes one value: the `object` of a record.
pub fn kind(value: &str) -> Schema {
    one_of_strings(&[value])
}

/// A string schema that takes one of `values`.
pub fn one_of_strings(values: &[&str]) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
        .into()
}

/// A string schema with a pattern and a description.
pub fn text_schema(pattern: Option<&str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(pattern)
        .description(Some(description))
        .build()
        .into()
}
