//! Integration tests of the admin API against a real Postgres.

mod accounts;
mod auth;
mod cli;
mod health;
mod helpers;
mod sync;
mod tenants;
mod webhooks;
