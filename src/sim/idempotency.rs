//! `Idempotency-Key` on `POST /v1/accounts`: the same key with the same parameters replays
//! the first response; with other parameters it is an `idempotency_error`.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::Value;

use super::errors::{ErrorType, SimError};

/// A stored first response.
struct Stored {
    params: Vec<(String, String)>,
    body: Value,
}

/// Responses by (key label, acting account, idempotency key): Stripe scopes keys to the
/// account they were used on.
#[derive(Default)]
pub struct Replays {
    stored: HashMap<(String, usize, String), Stored>,
}

/// What a lookup found.
pub enum Lookup {
    /// First use of the key.
    New,
    /// Same key, same parameters: send this body again.
    Replay(Value),
}

impl Replays {
    pub fn lookup(
        &self,
        scope: &(String, usize, String),
        params: &[(String, String)],
    ) -> Result<Lookup, SimError> {
        match self.stored.get(scope) {
            None => Ok(Lookup::New),
            Some(stored) if stored.params == params => Ok(Lookup::Replay(stored.body.clone())),
            Some(_) => Err(SimError::new(
                StatusCode::BAD_REQUEST,
                ErrorType::Idempotency,
                format!(
                    "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with. Try using a key other than '{}' if you meant \
                     to execute a different request.",
                    scope.2
                ),
            )),
        }
    }

    pub fn store(
        &mut self,
        scope: (String, usize, String),
        params: Vec<(String, String)>,
        body: Value,
    ) {
        self.stored.insert(scope, Stored { params, body });
    }
}
