//! The ticker that makes money move: every tick it brings the ledger up to the simulated
//! now (a Poisson number of activities on accounts picked by weight, settlements that
//! fell due) and turns what happened into events for the registered endpoints. The ledger
//! moves in whole simulated seconds, and every request that reads it first brings it up to
//! the clock's current second the same way (`SimState::ledger_now`), so what it answers is
//! the ledger at exactly that second.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::delivery::{self, Job};
use super::events::for_happening;
use super::knobs::{chance, Knobs};
use super::ledger::{Happening, Ledger};
use super::state::{SimState, API_VERSION};
use super::webhook::envelope;
use super::webhook_endpoints::Delivery;
use super::world::{Home, World};

/// Real time between two steps.
pub const TICK: Duration = Duration::from_millis(100);

pub async fn run(state: Arc<SimState>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        step(&state);
    }
}

/// Brings the ledger up to the simulated now and sends the events of what happened.
pub fn step(state: &Arc<SimState>) {
    let prepared = {
        let world = state.world();
        let Some(mut ledger) = state.ledger_synced(&world) else {
            return;
        };
        catch_up(state, &world, &mut ledger)
    };
    send(state, prepared);
}

/// Brings `ledger` (locked, after `world`) up to the clock's current second, read once
/// under the lock so no other step can have gone further; returns the events to send.
/// Afterwards `ledger.stepped_to` is the second the ledger shows.
pub fn catch_up(state: &SimState, world: &World, ledger: &mut Ledger) -> Vec<Prepared> {
    let now = state.clock.now();
    if now <= ledger.stepped_to {
        return Vec::new();
    }
    let knobs = state.knobs();
    let from = ledger.stepped_to;
    let happened = advance(ledger, world, &knobs, from, now);
    ledger.stepped_to = now;
    prepare(state, world, ledger, &knobs, &happened)
}

/// Activity created in the seconds `from + 1 ..= to` at the knob's rate, with settlements
/// applied in time order: at each second what falls due settles before that second's
/// activity, and everything due by `to` has settled at the end.
fn advance(
    ledger: &mut Ledger,
    world: &World,
    knobs: &Knobs,
    from: i64,
    to: i64,
) -> Vec<Happening> {
    let per_second = knobs.activity_per_hour.max(0.0) / 3_600.0 * ledger.total_weight();
    let count = ledger.activity_count(per_second * to.saturating_sub(from) as f64);
    let mut times: Vec<i64> = (0..count).map(|_| ledger.second_in(from, to)).collect();
    times.sort_unstable();
    let mut out = Vec::new();
    for at in times {
        ledger.release_due(at, &mut out);
        if let Some(account) = ledger.pick_account() {
            out.extend(ledger.activity(world, account, at));
        }
    }
    ledger.release_due(to, &mut out);
    out
}

/// An event ready to go, with where it goes.
pub struct Prepared {
    event: Value,
    deliveries: Vec<Delivery>,
}

/// Counts what happened and builds the events Stripe would send for it (under the world
/// and ledger locks, so each object shows the state right after the change).
pub fn prepare(
    state: &SimState,
    world: &World,
    ledger: &Ledger,
    knobs: &Knobs,
    happened: &[Happening],
) -> Vec<Prepared> {
    let activities = happened
        .iter()
        .filter(|h| matches!(h, Happening::Activity { .. }))
        .count() as u64;
    let settlements = happened
        .iter()
        .filter(|h| matches!(h, Happening::Released { .. }))
        .count() as u64;
    state.stats.changed(
        activities,
        settlements,
        happened
            .iter()
            .filter(|h| h.changes_balance())
            .map(Happening::account),
    );
    // Settlements and payouts arriving are stamped with the second the ledger reached.
    let now = ledger.stepped_to;
    let endpoints = state.endpoints();
    let mut out = Vec::new();
    for &h in happened {
        if h.changes_balance() && chance(&mut rand::rng(), knobs.silent_change_rate) {
            state.stats.webhooks(|w| w.silent += 1);
            continue;
        }
        let Some((event_type, object)) = for_happening(world, ledger, h) else {
            continue;
        };
        state.stats.webhooks(|w| w.events += 1);
        let account = h.account();
        let a = &world.accounts[account];
        // A platform that lost access no longer hears about the account.
        let platform_account = match a.home {
            Home::Connected { platform, .. } if !a.revoked => {
                Some(world.platforms[platform].account)
            }
            _ => None,
        };
        let deliveries = endpoints.deliveries(account, platform_account, event_type);
        if deliveries.is_empty() {
            continue;
        }
        let created = match h {
            Happening::Activity { pos, .. } => {
                ledger.account(account).map_or(now, |l| l.txns[pos].created)
            }
            _ => now,
        };
        let event = envelope(event_type, Some(&a.id), created, object, deliveries.len());
        out.push(Prepared { event, deliveries });
    }
    out
}

/// Hands every prepared event to the deliverer, shaped for each endpoint.
pub fn send(state: &Arc<SimState>, prepared: Vec<Prepared>) {
    for p in prepared {
        for delivery in p.deliveries {
            let mut event = p.event.clone();
            event["api_version"] = json!(delivery.api_version.as_deref().unwrap_or(API_VERSION));
            if !delivery.connect {
                if let Some(map) = event.as_object_mut() {
                    map.remove("account");
                    map.remove("context");
                }
            }
            let payload: Arc<str> = event.to_string().into();
            delivery::dispatch(state, Job { delivery, payload });
        }
    }
}
