//! Integration tests of the admin API against a real Postgres.

mod accounts;
mod admin;
mod auth;
mod bad_input;
mod balances;
mod browser;
mod changes;
mod cli;
mod cursor;
mod doctor;
mod errors;
mod event_order;
mod health;
mod helpers;
mod last_good;
mod metrics;
mod openapi;
mod refresh;
mod streams;
mod sync;
mod tenant_lifecycle;
mod tenants;
mod tokens;
mod totals;
mod webhook_registration;
mod webhooks;
