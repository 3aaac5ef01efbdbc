//! tally: multi-tenant Stripe Connect balance aggregation.
//!
//! Layout follows the architecture (DESIGN §2): `http` serves the admin API,
//! `stripe` talks to Stripe, `store` is the only place that speaks SQL, `sim` stands
//! in for Stripe offline, `commands` implements the CLI.

pub mod app;
pub mod audit;
pub mod balances;
pub mod close;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod csv_out;
pub mod dashboard;
pub mod db;
pub mod domain;
pub mod fanout;
pub mod freshness;
pub mod http;
pub mod money;
pub mod refresh;
pub mod retention;
pub mod schema;
pub mod shared_budget;
pub mod sim;
pub mod store;
pub mod stripe;
pub mod sync;
pub mod tasks;
pub mod telemetry;
pub mod tenants;
pub mod tokens;
pub mod totals;
