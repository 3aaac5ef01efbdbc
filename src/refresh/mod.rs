//! Freshness as the server's job (DESIGN §5): a background refresher in every
//! `tally serve`, demands (`balanceRefresh`) that polls on any replica join, and one
//! Stripe budget per credential shared by every process.
//!
//! How replicas share the work: all of it goes through Postgres, never through the
//! processes talking to each other. Every worker (each `serve`, a `tally balances`
//! run) loops over the tenants; for each it reads the running refreshes (demands: a
//! scope and a cutoff), claims due accounts with a lease (`refresh_leases`, taken
//! with `FOR UPDATE SKIP LOCKED` and an `ON CONFLICT … WHERE expired` guard, given
//! back in the transaction that stores the snapshot), fetches them through the
//! tenant's shared budget, and marks a demand done when nothing in its scope is
//! older than its cutoff. A worker killed with SIGKILL leaves leases that expire
//! after `refresh.lease_secs`; the others then take those accounts.
//!
//! Why not a job-queue crate (graphile_worker and the like): their unit is a durable
//! job row per task, run once, at most N at a time. Our unit is "whatever is older
//! than the cutoff", derived from the snapshot table that already exists: keeping
//! 10,000 accounts fresh would mean enqueueing and deleting 10,000 job rows per
//! interval and teaching the queue a per-credential, cross-process request rate it
//! has no notion of. Due-ness computed from `latest_balances` plus a lease table is
//! less machinery (one claim statement, one release), and the rate budget stays
//! where the rate is decided. Durable scheduling is not needed either: a demand is
//! a row, and the periodic work is recomputed from snapshot ages on every tick.

pub mod demand;
pub mod gauges;
mod worker;

pub use crate::store::refreshes::{Progress, Refresh, RefreshScope};
pub use demand::{cutoff, freshen, Freshness, PendingRefresh};
pub use worker::{Refresher, RefresherOptions, WorkerKind};
