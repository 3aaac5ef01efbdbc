//! TEMP until the stripe-client branch merges.
#[allow(dead_code)]
pub mod credential;
pub use credential::*;
