//! The daily close: each connected account's end-of-day balance per currency, built
//! from Stripe's balance transactions and tied out to the balances Stripe answered.
//!
//! - `ingest`: reading an account's new balance transactions after each refresher
//!   fetch, and `tally close backfill`.
//! - `ledger`: the arithmetic, pure: moving a balance through a day's transactions,
//!   rolling a balance Stripe answered back to an instant, tying out.
//! - `compute`: the closer, which every server runs: computes each local day once
//!   Stripe's clock has passed its end, closes it `close.settle_secs` later, and
//!   reopens it when a late transaction arrives.
//! - `report`: the answers (the tenant's day, one account's days, CSV).
//!
//! Times are Stripe's clock throughout: transactions' `created` and `available_on`,
//! and the `Date` of the balance answers (`balance_snapshots.stripe_at`).

pub mod compute;
pub mod ingest;
pub mod ledger;
pub mod report;

use crate::money::MoneyOverflow;
use crate::stripe::StripeError;

#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Overflow(#[from] MoneyOverflow),
    #[error("a stored balance is not a Stripe balance: {0}")]
    Balance(String),
}
