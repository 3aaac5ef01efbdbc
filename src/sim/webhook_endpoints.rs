//! `POST|GET /v1/webhook_endpoints`, `GET|POST|DELETE /v1/webhook_endpoints/{id}`: an
//! endpoint belongs to the account the request acts as (a platform key: the platform; the
//! organization key: the account named by `Stripe-Context`). A `connect` endpoint of a
//! platform receives the events of its connected accounts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};

use super::errors::SimError;
use super::handlers::{check_failing, idempotent_post, Target};
use super::objects::list_json;
use super::params::{self, Pairs};
use super::state::SimState;
use super::world::Cursor;

/// Stripe's limit of webhook endpoints per account (test mode).
const MAX_ENDPOINTS: usize = 16;

pub fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/v1/webhook_endpoints", get(list).post(create))
        .route(
            "/v1/webhook_endpoints/{id}",
            get(retrieve).post(update).delete(delete),
        )
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: String,
    /// The account it belongs to (index into `World::accounts`).
    pub owner: usize,
    pub url: String,
    pub enabled_events: Vec<String>,
    pub connect: bool,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub api_version: Option<String>,
    pub created: i64,
    pub secret: String,
    pub disabled: bool,
}

impl Endpoint {
    fn wants(&self, event_type: &str) -> bool {
        !self.disabled
            && self
                .enabled_events
                .iter()
                .any(|e| e == "*" || e == event_type)
    }

    /// The object, as Stripe shows it after creation (without the secret).
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "webhook_endpoint",
            "api_version": self.api_version,
            "application": null,
            "created": self.created,
            "description": self.description,
            "enabled_events": self.enabled_events,
            "livemode": false,
            "metadata": self.metadata,
            "status": if self.disabled { "disabled" } else { "enabled" },
            "url": self.url,
        })
    }
}

/// Where one event goes.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub endpoint: String,
    pub url: String,
    pub secret: String,
    /// A Connect endpoint: the event carries `account` and `context`.
    pub connect: bool,
    pub api_version: Option<String>,
}

/// Every endpoint, oldest first.
#[derive(Default)]
pub struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    pub fn exists(&self, id: &str) -> bool {
        self.list.iter().any(|e| e.id == id && !e.disabled)
    }

    /// Where an event about `account` goes: the Connect endpoints of its platform
    /// (`platform_account`), and the account's own endpoints.
    pub fn deliveries(
        &self,
        account: usize,
        platform_account: Option<usize>,
        event_type: &str,
    ) -> Vec<Delivery> {
        self.list
            .iter()
            .filter(|e| {
                let connect = e.connect && Some(e.owner) == platform_account;
                let own = !e.connect && e.owner == account;
                (connect || own) && e.wants(event_type)
            })
            .map(|e| Delivery {
                endpoint: e.id.clone(),
                url: e.url.clone(),
                secret: e.secret.clone(),
                connect: e.connect,
                api_version: e.api_version.clone(),
            })
            .collect()
    }

    fn get_mut(&mut self, owner: usize, id: &str) -> Result<&mut Endpoint, SimError> {
        self.list
            .iter_mut()
            .find(|e| e.owner == owner && e.id == id)
            .ok_or_else(|| no_such_endpoint(id, "id"))
    }

    fn page(
        &self,
        owner: usize,
        limit: usize,
        cursor: Option<&Cursor>,
    ) -> Result<(Vec<&Endpoint>, bool), SimError> {
        let own: Vec<&Endpoint> = self.list.iter().filter(|e| e.owner == owner).collect();
        let at = |id: &str, param: &str| {
            own.iter()
                .position(|e| e.id == id)
                .ok_or_else(|| no_such_endpoint(id, param).status(StatusCode::BAD_REQUEST))
        };
        let positions = match cursor {
            None => super::world::take(limit, (0..own.len()).rev()),
            Some(Cursor::StartingAfter(id)) => {
                super::world::take(limit, (0..at(id, "starting_after")?).rev())
            }
            Some(Cursor::EndingBefore(id)) => {
                let (mut newer, more) =
                    super::world::take(limit, at(id, "ending_before")? + 1..own.len());
                newer.reverse();
                (newer, more)
            }
        };
        Ok((
            positions.0.into_iter().map(|p| own[p]).collect(),
            positions.1,
        ))
    }
}

fn no_such_endpoint(id: &str, param: &str) -> SimError {
    SimError::invalid(
        StatusCode::NOT_FOUND,
        format!("No such webhook endpoint: '{id}'"),
    )
    .code("resource_missing")
    .param(param)
}

/// Parameters of create and update.
#[derive(Debug, Default)]
struct Form {
    url: Option<String>,
    enabled_events: Option<Vec<String>>,
    connect: Option<bool>,
    description: Option<String>,
    metadata: BTreeMap<String, Option<String>>,
    api_version: Option<String>,
    disabled: Option<bool>,
}

fn parse_form(pairs: &Pairs, creating: bool) -> Result<Form, SimError> {
    let mut form = Form::default();
    let mut events: BTreeMap<usize, String> = BTreeMap::new();
    for (name, value) in pairs {
        match name.as_str() {
            "url" => form.url = Some(valid_url(value)?),
            "connect" if creating => form.connect = Some(boolean(name, value)?),
            "api_version" if creating => form.api_version = Some(value.clone()),
            "disabled" if !creating => form.disabled = Some(boolean(name, value)?),
            "description" => form.description = Some(value.clone()),
            "enabled_events[]" => {
                events.insert(events.len(), valid_event(name, value)?);
            }
            _ if name.starts_with("enabled_events[") => {
                let index = name["enabled_events[".len()..]
                    .strip_suffix(']')
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| params::unknown(name))?;
                events.insert(index, valid_event(name, value)?);
            }
            _ if name.starts_with("metadata[") => {
                let key = name["metadata[".len()..]
                    .strip_suffix(']')
                    .ok_or_else(|| params::unknown(name))?;
                // As on Stripe, an empty value unsets the key.
                let value = Some(value.clone()).filter(|v| !v.is_empty());
                form.metadata.insert(key.to_owned(), value);
            }
            other if params::ignorable(other) => {}
            other => return Err(params::unknown(other)),
        }
    }
    if !events.is_empty() {
        form.enabled_events = Some(events.into_values().collect());
    }
    if creating {
        if form.url.is_none() {
            return Err(missing("url"));
        }
        if form.enabled_events.is_none() {
            return Err(missing("enabled_events"));
        }
    }
    Ok(form)
}

fn missing(param: &str) -> SimError {
    SimError::invalid(
        StatusCode::BAD_REQUEST,
        format!("Missing required param: {param}."),
    )
    .code("parameter_missing")
    .param(param)
}

fn valid_url(value: &str) -> Result<String, SimError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(value.to_owned())
        }
        _ => Err(SimError::invalid(
            StatusCode::BAD_REQUEST,
            format!("Invalid URL: {value}. URLs must start with http:// or https://."),
        )
        .code("url_invalid")
        .param("url")),
    }
}

/// `*` or a dotted event name (`charge.succeeded`); Stripe's list has hundreds, so the
/// simulator accepts any name of that shape rather than refuse a real one it lacks.
fn valid_event(name: &str, value: &str) -> Result<String, SimError> {
    let shaped = value.split('.').count() >= 2
        && value.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
    if value == "*" || shaped {
        Ok(value.to_owned())
    } else {
        Err(SimError::invalid(
            StatusCode::BAD_REQUEST,
            format!("Invalid {name}: '{value}' is not a valid event type."),
        )
        .code("parameter_invalid_string")
        .param(name))
    }
}

fn boolean(name: &str, value: &str) -> Result<bool, SimError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(
            SimError::invalid(StatusCode::BAD_REQUEST, format!("Invalid boolean: {value}"))
                .code("parameter_invalid_boolean")
                .param(name),
        ),
    }
}

fn fresh(prefix: &str, len: usize) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

fn acting_ok(state: &SimState, target: &Target) -> Result<(), SimError> {
    check_failing(&state.world().accounts[target.acting.account])
}

async fn create(
    State(state): State<Arc<SimState>>,
    target: Target,
    headers: HeaderMap,
    body: String,
) -> Result<Response, SimError> {
    acting_ok(&state, &target)?;
    let pairs = params::decode(&body)?;
    let form = parse_form(&pairs, true)?;
    let owner = target.acting.account;
    idempotent_post(&state, &target, &headers, pairs, || {
        let mut endpoints = state.endpoints();
        if endpoints.list.iter().filter(|e| e.owner == owner).count() >= MAX_ENDPOINTS {
            return Err(SimError::invalid(
                StatusCode::BAD_REQUEST,
                format!("You have reached the maximum of {MAX_ENDPOINTS} test webhook endpoints."),
            ));
        }
        let endpoint = Endpoint {
            id: fresh("we_", 24),
            owner,
            url: form.url.unwrap_or_default(),
            enabled_events: form.enabled_events.unwrap_or_default(),
            connect: form.connect.unwrap_or(false),
            description: form.description,
            metadata: form
                .metadata
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
            api_version: form.api_version,
            created: state.clock.now(),
            secret: fresh("whsec_", 32),
            disabled: false,
        };
        // The secret is shown once, in the answer to the create request.
        let mut body = endpoint.json();
        body["secret"] = json!(endpoint.secret);
        tracing::debug!(id = %endpoint.id, url = %endpoint.url, connect = endpoint.connect, "webhook endpoint created");
        endpoints.list.push(endpoint);
        Ok(body)
    })
}

async fn list(
    State(state): State<Arc<SimState>>,
    target: Target,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, SimError> {
    acting_ok(&state, &target)?;
    let pairs = params::decode(query.as_deref().unwrap_or_default())?;
    let params = params::list_params(&pairs)?;
    let endpoints = state.endpoints();
    let (page, has_more) =
        endpoints.page(target.acting.account, params.limit, params.cursor.as_ref())?;
    let data: Vec<Value> = page.into_iter().map(Endpoint::json).collect();
    Ok(Json(list_json(data, has_more, "/v1/webhook_endpoints")))
}

async fn retrieve(
    State(state): State<Arc<SimState>>,
    target: Target,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    acting_ok(&state, &target)?;
    let mut endpoints = state.endpoints();
    Ok(Json(endpoints.get_mut(target.acting.account, &id)?.json()))
}

async fn update(
    State(state): State<Arc<SimState>>,
    target: Target,
    Path(id): Path<String>,
    body: String,
) -> Result<Json<Value>, SimError> {
    acting_ok(&state, &target)?;
    let form = parse_form(&params::decode(&body)?, false)?;
    let mut endpoints = state.endpoints();
    let e = endpoints.get_mut(target.acting.account, &id)?;
    if let Some(url) = form.url {
        e.url = url;
    }
    if let Some(events) = form.enabled_events {
        e.enabled_events = events;
    }
    if let Some(description) = form.description {
        e.description = Some(description).filter(|d| !d.is_empty());
    }
    if let Some(disabled) = form.disabled {
        e.disabled = disabled;
    }
    for (k, v) in form.metadata {
        match v {
            Some(v) => e.metadata.insert(k, v),
            None => e.metadata.remove(&k),
        };
    }
    Ok(Json(e.json()))
}

async fn delete(
    State(state): State<Arc<SimState>>,
    target: Target,
    Path(id): Path<String>,
) -> Result<Json<Value>, SimError> {
    acting_ok(&state, &target)?;
    let mut endpoints = state.endpoints();
    endpoints.get_mut(target.acting.account, &id)?;
    endpoints.list.retain(|e| e.id != id);
    Ok(Json(
        json!({ "id": id, "object": "webhook_endpoint", "deleted": true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(raw: &str, creating: bool) -> Result<Form, SimError> {
        parse_form(&params::decode(raw).expect("valid form"), creating)
    }

    #[test]
    fn create_form_reads_both_array_spellings() {
        let f = form(
            "url=https://example.com/h&enabled_events[0]=charge.succeeded&enabled_events[1]=*&connect=true",
            true,
        )
        .expect("valid");
        assert_eq!(
            f.enabled_events,
            Some(vec!["charge.succeeded".to_owned(), "*".to_owned()])
        );
        assert_eq!(f.connect, Some(true));
        let f = form(
            "url=http://127.0.0.1:9/x&enabled_events[]=balance.available",
            true,
        )
        .expect("valid");
        assert_eq!(f.enabled_events, Some(vec!["balance.available".to_owned()]));
    }

    #[test]
    fn create_form_refuses_what_stripe_refuses() {
        for bad in [
            "enabled_events[]=*",
            "url=https://example.com",
            "url=ftp://example.com&enabled_events[]=*",
            "url=https://example.com&enabled_events[]=Charge",
            "url=https://example.com&enabled_events[]=*&connect=yes",
            "url=https://example.com&enabled_events[]=*&bogus=1",
        ] {
            assert!(form(bad, true).is_err(), "{bad}");
        }
        assert!(form("disabled=true", false).is_ok());
        assert!(form("disabled=true", true).is_err());
    }
}
