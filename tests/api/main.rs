//! Integration tests of the admin API against a real Postgres.

mod accounts;
mod auth;
mod balances;
mod cli;
mod doctor;
mod health;
mod helpers;
mod metrics;
mod refresh;
mod sync;
mod tenants;
mod webhooks;
