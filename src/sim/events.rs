//! Which event Stripe sends for each ledger happening, with its `data.object`.

use serde_json::Value;

use super::ledger::{Happening, Ledger, TxnType};
use super::txn_objects::{
    charge_json, dispute_json, ledger_balance_json, payout_json, transfer_json,
};
use super::world::{Home, World};

/// The platform that controls `account`, if it is a connected account.
pub fn platform_of(world: &World, account: usize) -> Option<&str> {
    match world.accounts.get(account)?.home {
        Home::Connected { platform, .. } => Some(world.platforms[platform].id.as_str()),
        _ => None,
    }
}

/// The event type and object for `h`, or `None` when Stripe sends nothing (a Stripe fee,
/// pending money settling without the available balance growing).
pub fn for_happening(
    world: &World,
    ledger: &Ledger,
    h: Happening,
) -> Option<(&'static str, Value)> {
    let account = h.account();
    let l = ledger.account(account)?;
    let platform = platform_of(world, account);
    match h {
        Happening::Released { grew: true, .. } => {
            Some(("balance.available", ledger_balance_json(l)))
        }
        Happening::Released { grew: false, .. } => None,
        Happening::PayoutPaid { pos, .. } => Some((
            "payout.paid",
            payout_json(&l.txns[pos], &world.accounts[account].id),
        )),
        Happening::Activity { pos, .. } => {
            let t = &l.txns[pos];
            let charge = t.charge.map(|c| &l.txns[c]);
            match (t.kind, charge) {
                (TxnType::Charge, _) => Some(("charge.succeeded", charge_json(t, platform, false))),
                (TxnType::Refund, Some(c)) => {
                    Some(("charge.refunded", charge_json(c, platform, false)))
                }
                (TxnType::PaymentFailureRefund, Some(c)) => {
                    Some(("charge.failed", charge_json(c, platform, true)))
                }
                (TxnType::Adjustment, Some(c)) => {
                    Some(("charge.dispute.created", dispute_json(t, c, platform)))
                }
                (TxnType::Adjustment, None) if t.net > 0 && t.available => {
                    Some(("balance.available", ledger_balance_json(l)))
                }
                (TxnType::Payout, _) => Some((
                    "payout.created",
                    payout_json(t, &world.accounts[account].id),
                )),
                (TxnType::Transfer, _) => Some(("transfer.created", transfer_json(t, platform))),
                _ => None,
            }
        }
    }
}
