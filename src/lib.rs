//! tally: multi-tenant Stripe Connect balance aggregation.
pub mod sim;
pub mod stripe;
