//! The OpenAPI 3.1 document served at `GET /openapi.json`. It is generated from the
//! code: each handler carries a `#[utoipa::path]` annotation, and the routers are
//! built from those annotations (utoipa-axum's `routes!`), so a route is served
//! exactly where the document says. What the annotations cannot say (an error body
//! per status with the codes that endpoint answers, headers every response carries)
//! is added here, once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::error::Code;

/// The name of the bearer security scheme.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        description = "Multi-tenant Stripe Connect balance aggregation. Every endpoint but the \
            health probes, this document and the webhook receiver takes \
            `Authorization: Bearer <token>`. Roles: `owner` (every tenant; names it with \
            `?tenant=<slug>`), `admin` and `reader` (one tenant). A tenant token asking for \
            another tenant's data gets exactly the answer a missing record gets. Every error, \
            including those the framework makes (unknown path 404 `not-found`, another method \
            405 `method-not-allowed` with `Allow`, a body over 1 MiB 413 `body-too-large`, a \
            request it cannot read 400 `invalid-request`, a URI over 64 KiB 414 `uri-too-long`, \
            over 100 headers 431 `headers-too-large`), is \
            `{\"object\": \"error\", \"code\", \"message\"}`; each response documents the codes it \
            can carry. An empty query value counts as absent. 5xx answers come only from faults \
            (the database or Stripe failing, a request over `server.request_timeout_secs`, a \
            stored secret this server cannot open), never from input.",
        license(name = "MIT"),
    ),
    modifiers(&Security),
    components(schemas(super::error::ErrorBody, super::error::UpstreamErrorBody)),
    tags(
        (name = "accounts", description = "Stored accounts, Dashboard Stripe Connect module compatible"),
        (name = "balances", description = "Balances, the per-currency aggregate, refreshes and history"),
        (name = "sync", description = "Importing accounts from Stripe"),
        (name = "tokens", description = "API tokens (owner)"),
        (name = "audit", description = "Who changed what (owner)"),
        (name = "webhooks", description = "Signed Stripe Connect events"),
        (name = "health", description = "Probes and this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`tly_…`) from `tally token create` or \
                         `POST /api/administrator/tokens`.",
                    ))
                    .build(),
            ),
        );
    }
}

pub use crate::schema::{kind, one_of_strings};

/// Who may call an operation; each brings the errors its extractor answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (probes, webhooks, this document).
    Public,
    /// Any token of the tenant, or an owner naming it (`TenantScope`).
    TenantRead,
    /// An admin token of the tenant, or an owner naming it (`TenantAdmin`).
    TenantAdmin,
    /// An owner token (`Owner`).
    Owner,
}

impl Access {
    fn codes(self) -> Vec<Code> {
        let token = [
            Code::Unauthorized,
            Code::TokenRevoked,
            Code::TokenExpired,
            Code::TokenOfRemovedTenant,
            Code::DatabaseUnavailable,
        ];
        let tenant = [
            Code::MissingTenant,
            Code::MalformedTenant,
            Code::UnknownTenant,
            Code::TenantRemoved,
            Code::TenantCredentialUnusable,
        ];
        match self {
            Access::Public => vec![],
            Access::TenantRead => token.into_iter().chain(tenant).collect(),
            Access::TenantAdmin => token
                .into_iter()
                .chain(tenant)
                .chain([Code::Forbidden])
                .collect(),
            Access::Owner => token.into_iter().chain([Code::Forbidden]).collect(),
        }
    }
}

fn status_description(status: u16) -> &'static str {
    match status {
        400 => "Malformed input; nothing was changed.",
        401 => "No valid token; `WWW-Authenticate: Bearer`.",
        403 => "The token's role may not do this.",
        404 => "No such record for this caller (another tenant's record answers the same).",
        405 => "The path does not take the method the request used; `Allow` lists those it takes.",
        413 => "The request body is over 1 MiB.",
        414 => "The request's path and query are over 64 KiB.",
        431 => "The request has over 100 headers, or a head over about 400 KiB.",
        429 => "A cap on concurrent work was reached; retry later.",
        500 => "Never caused by input.",
        502 => "Only under a Stripe fault: Stripe did not return the balance; `failure` says what it answered.",
        503 => "Only under a fault; retry later.",
        _ => "Error.",
    }
}

/// The codes a malformed value of each of `Q`'s query parameters is answered with,
/// and `invalid-query`: what an operation reading its query with `ApiQuery<Q>` answers.
pub fn query_codes<Q: utoipa::IntoParams>() -> Vec<Code> {
    let parameters = Q::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query));
    std::iter::once(Code::InvalidQuery)
        .chain(
            parameters
                .iter()
                .map(|parameter| Code::of_param(&parameter.name).unwrap_or(Code::InvalidQuery)),
        )
        .collect()
}

/// The error responses of one operation: the codes its access brings, the codes
/// given, and the faults every operation can meet (`internal-error`,
/// `request-timeout`), by status; and 405 `method-not-allowed` with `Allow`, which
/// the operation's path answers to any method it does not take.
pub fn error_responses(access: Access, codes: &[Code]) -> BTreeMap<String, RefOr<ApiResponse>> {
    let mut by_status: BTreeMap<u16, Vec<Code>> = BTreeMap::new();
    // Faults, and what the HTTP layer refuses before any route is chosen: a request
    // line or header it cannot read, a URI over 64 KiB, too many or too large headers,
    // a method the path does not take.
    let always = [
        Code::InvalidRequest,
        Code::MethodNotAllowed,
        Code::UriTooLong,
        Code::HeadersTooLarge,
        Code::InternalError,
        Code::RequestTimeout,
    ];
    for code in access
        .codes()
        .into_iter()
        .chain(codes.iter().copied())
        .chain(always)
    {
        let codes = by_status.entry(code.status().as_u16()).or_default();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), error_response(status, &codes).into()))
        .collect()
}

fn error_response(status: u16, codes: &[Code]) -> ApiResponse {
    let names: Vec<&str> = codes.iter().map(|code| code.as_str()).collect();
    let schema: RefOr<Schema> = if codes == [Code::StripeRequestFailed] {
        // Its own schema: `failure` is declared once, required.
        Ref::from_schema_name("UpstreamError").into()
    } else {
        let narrowed = ObjectBuilder::new().property("code", one_of_strings(&names));
        Schema::AllOf(
            AllOfBuilder::new()
                .item(Ref::from_schema_name("Error"))
                .item(narrowed)
                .build(),
        )
        .into()
    };
    let described = format!(
        "{} Codes:\n{}",
        status_description(status),
        codes
            .iter()
            .map(|code| format!("- `{code}`: {}", code.meaning()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut response = ResponseBuilder::new().description(described).content(
        "application/json",
        ContentBuilder::new().schema(Some(schema)).build(),
    );
    if status == 401 {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(kind("Bearer"))
                .description(Some("`Bearer`"))
                .build(),
        );
    }
    if status == 405 {
        response = response.header(
            "Allow",
            HeaderBuilder::new()
                .schema(String::schema())
                .description(Some(
                    "The methods the path takes, comma-separated (`GET, HEAD`); `HEAD` with \
                     every `GET`.",
                ))
                .build(),
        );
    }
    response.build()
}

/// Declares a type listing an operation's error responses, for `responses(...)` in
/// its `#[utoipa::path]`: its access, the query type it reads with `ApiQuery` (whose
/// parameters bring their codes), and the codes of its own causes:
/// `api_errors!(ListErrors, Access::TenantRead, query: ListQuery, [Code::InvalidPaging]);`
macro_rules! api_errors {
    ($name:ident, $access:expr, $(query: $query:ty,)* [$($code:expr),* $(,)?]) => {
        pub struct $name;
        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                #[allow(unused_imports)]
                use $crate::http::error::Code;
                let mut codes: Vec<Code> = Vec::new();
                $(codes.extend($crate::http::openapi::query_codes::<$query>());)*
                codes.extend::<[Code; _]>([$($code),*]);
                $crate::http::openapi::error_responses($access, &codes)
            }
        }
    };
}
pub(crate) use api_errors;

/// Headers that are always present where the document names them.
const REQUIRED_HEADERS: &[&str] = &[
    "Allow",
    "X-Total-Count",
    "Retry-After",
    "Location",
    "WWW-Authenticate",
];

/// The document as served: what the annotations gave, plus `X-Request-Id` on every
/// response, `required` on the headers that are always sent, `allowEmptyValue` on
/// optional query parameters (an empty value counts as absent), and a `HEAD`
/// operation beside every `GET` (axum answers it as the `GET`, without the body).
pub fn finish(openapi: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(&openapi).expect("the OpenAPI document serializes");
    let request_id = json!({
        "description": "The request's id: yours if you sent `X-Request-Id`, else a new UUID.",
        "required": true,
        "schema": {"type": "string"},
    });
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut().filter_map(Value::as_object_mut) {
                // An empty query value counts as absent, as the Dashboard module has it.
                if let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                {
                    for parameter in parameters.iter_mut().filter_map(Value::as_object_mut) {
                        if parameter.get("in") == Some(&json!("query"))
                            && parameter.get("required") != Some(&json!(true))
                        {
                            parameter.insert("allowEmptyValue".into(), json!(true));
                        }
                    }
                }
                let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                for response in responses.values_mut().filter_map(Value::as_object_mut) {
                    let headers = response
                        .entry("headers")
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("headers is an object");
                    for (name, header) in headers.iter_mut() {
                        if REQUIRED_HEADERS.contains(&name.as_str()) {
                            header["required"] = json!(true);
                        }
                    }
                    headers.insert("X-Request-Id".into(), request_id.clone());
                }
            }
            if let Some(head) = item.get("get").map(head_of) {
                item.insert("head".into(), head);
            }
        }
    }
    doc
}

/// The `HEAD` of a `GET` operation: the same parameters, statuses and headers, and
/// no body.
fn head_of(get: &Value) -> Value {
    let mut head = get.clone();
    if let Some(id) = get["operationId"].as_str() {
        head["operationId"] = json!(format!("{id}Head"));
    }
    head["description"] = json!(format!(
        "As `GET` (below), with the same status and headers and no body. {}",
        get["description"].as_str().unwrap_or_default()
    ));
    if let Some(responses) = head["responses"].as_object_mut() {
        for response in responses.values_mut().filter_map(Value::as_object_mut) {
            response.remove("content");
        }
    }
    head
}

/// The served document, built once from [`super::api_routes`].
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| finish(super::api_routes().into_openapi()))
}

fn rendered() -> &'static [u8] {
    static RENDERED: OnceLock<Vec<u8>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        serde_json::to_vec_pretty(document()).expect("the OpenAPI document serializes")
    })
}

/// The document itself, as an OpenAPI 3.1 object.
#[allow(dead_code)]
#[derive(ToSchema)]

pub struct OpenApiObject {
    /// `3.1.0`
    openapi: String,
    #[schema(value_type = Object)]
    info: Value,
    #[schema(value_type = Object)]
    paths: Value,
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    description = "This document (OpenAPI 3.1), generated from the code. No token needed.",
    responses(
        (status = 200, description = "The OpenAPI document.", body = OpenApiObject),
        OpenApiErrors,
    )
)]
pub async fn serve_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        rendered(),
    )
        .into_response()
}

api_errors!(OpenApiErrors, Access::Public, []);

/// The schema of a CSV answer (`text/csv; charset=utf-8`): a string, a header row
/// naming `columns` and one row per `row`; amounts are integers in minor units, text
/// cells neutralised against spreadsheet formulas (`csv_out`).
pub fn csv_schema(row: &str, columns: &[&str], more: &str) -> RefOr<Schema> {
    let header = columns.join(",");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("text/csv")
        .description(Some(format!(
            "CSV: a header row, then one row per {row}. Columns: {}.{more}",
            columns
                .iter()
                .map(|column| format!("`{column}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .examples([json!(format!("{header}\r\n"))])
        .build()
        .into()
}

/// Declares the schema type of a CSV answer, for `content((X = "text/csv"))`:
/// `csv_body!(BalancesCsv, "account and currency", &CSV_COLUMNS, "");`
macro_rules! csv_body {
    ($(#[doc = $doc:literal])* $name:ident, $row:expr, $columns:expr, $more:expr) => {
        $(#[doc = $doc])*
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::http::openapi::csv_schema($row, $columns, $more)
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use csv_body;

/// `tenant`, on every tenant-scoped operation: read by the `TenantScope` extractor.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// The tenant's slug: required with an owner token (400 `missing-tenant`), optional
    /// with a tenant token (another tenant's slug is 404 `invalid-tenant`, as an
    /// unknown one is).
    #[param(inline)]
    pub tenant: Option<crate::domain::TenantSlug>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every query parameter of every operation is read by `ApiQuery` (or the tenant
    /// scope) and answered with a code of its own when malformed, and that code is in
    /// the operation's 400.
    #[test]
    fn every_query_parameter_has_its_own_code_documented() {
        let doc = document();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                if method == "head" {
                    continue;
                }
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] != "query" {
                        continue;
                    }
                    let name = parameter["name"].as_str().expect("a name");
                    let code = Code::of_param(name)
                        .unwrap_or_else(|| panic!("{method} {path}: {name} has no code"));
                    let bad_request = operation["responses"]["400"].to_string();
                    assert!(
                        bad_request.contains(&format!("\"{code}\"")),
                        "{method} {path}: {code} not documented"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 30, "{seen} parameters");
    }
}
