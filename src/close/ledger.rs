//! The close's arithmetic, pure. A balance at an instant `t` holds every transaction
//! created before `t`; the part whose `available_on` is before `t` too is available,
//! the rest pending. A balance Stripe answered at second `d` is the balance at `d + 1s`
//! (it holds what was created within that second).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::money::{add_into, Activity, MoneyOverflow, Split, Totals};
use crate::store::closes::TieOut;
use crate::store::ledger::Movement;
use crate::stripe::Balance;

/// Balances per currency.
pub type Balances = BTreeMap<String, Split>;

/// What a day did to one account: per currency, the change and the activity by
/// reporting category.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DayMoves {
    pub change: Balances,
    pub activity: BTreeMap<String, BTreeMap<String, Activity>>,
    pub transactions: BTreeMap<String, i32>,
}

/// The moment a transaction's money is available (`available_on`, never before it exists).
fn available_at(m: &Movement) -> DateTime<Utc> {
    m.created.max(m.available_on)
}

/// Applies the movements of one account within `[start, end)`: transactions created
/// then count as activity and land available or pending by `end`; older ones that
/// became available then move from pending to available.
pub fn day_moves<'a>(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    movements: impl IntoIterator<Item = &'a Movement>,
) -> Result<DayMoves, MoneyOverflow> {
    let mut moves = DayMoves::default();
    for m in movements {
        let currency = m.currency.clone();
        if m.created >= start && m.created < end {
            let change = Split::of(m.net, available_at(m) < end);
            add_into(
                &mut moves.change,
                currency.clone(),
                change,
                Split::checked_add,
            )?;
            let activity = moves.activity.entry(currency.clone()).or_default();
            add_into(
                activity,
                m.reporting_category.clone(),
                Activity::one(m.amount, m.fee, m.net),
                Activity::checked_add,
            )?;
            *moves.transactions.entry(currency).or_default() += 1;
        } else if m.created < start && available_at(m) >= start && available_at(m) < end {
            add_into(
                &mut moves.change,
                currency,
                Split::released(m.net)?,
                Split::checked_add,
            )?;
        }
    }
    Ok(moves)
}

/// The balance Stripe answered at `stripe_at`, per currency (available and pending).
pub fn answered(balance: &Value) -> Result<Balances, String> {
    let balance: Balance = serde_json::from_value(balance.clone()).map_err(|e| e.to_string())?;
    let totals = Totals::from_balance(&balance).map_err(|e| e.to_string())?;
    Ok(totals
        .rows()
        .into_iter()
        .map(|row| {
            (
                row.currency,
                Split {
                    available: row.amounts.available,
                    pending: row.amounts.pending,
                },
            )
        })
        .collect())
}

/// The balance at instant `to`, from the balance Stripe answered at `stripe_at` (at or
/// after `to`) and the account's movements between the two: transactions created in
/// `[to, stripe_at]` are taken out, and money that became available then goes back to
/// pending.
pub fn rolled_back<'a>(
    mut balance: Balances,
    stripe_at: DateTime<Utc>,
    to: DateTime<Utc>,
    movements: impl IntoIterator<Item = &'a Movement>,
) -> Result<Balances, MoneyOverflow> {
    let answered_before = stripe_at + TimeDelta::seconds(1);
    for m in movements {
        let available = available_at(m);
        let undo = if m.created >= to && m.created < answered_before {
            Split::of(m.net, available < answered_before)
        } else if m.created < to && available >= to && available < answered_before {
            Split::released(m.net)?
        } else {
            continue;
        };
        let slot = balance.entry(m.currency.clone()).or_default();
        *slot = slot.checked_sub(undo)?;
    }
    Ok(balance)
}

/// Ties a closing out against the balance Stripe answered, rolled back to the day's end.
pub fn tie_out(closing: Split, expected: Option<(Split, i64, DateTime<Utc>)>) -> TieOut {
    match expected {
        None => TieOut::Unverified,
        Some((expected, snapshot_id, stripe_at)) => {
            match expected.checked_sub(closing) {
                Ok(difference) if difference == Split::default() => TieOut::Matched {
                    snapshot_id,
                    stripe_at,
                },
                Ok(difference) => TieOut::Difference {
                    snapshot_id,
                    stripe_at,
                    difference,
                },
                // A gap beyond 64 bits is still a difference; saturate to say so.
                Err(_) => TieOut::Difference {
                    snapshot_id,
                    stripe_at,
                    difference: Split {
                        available: expected.available.saturating_sub(closing.available),
                        pending: expected.pending.saturating_sub(closing.pending),
                    },
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).expect("a time")
    }

    fn mv(category: &str, net: i64, created: i64, available_on: i64) -> Movement {
        Movement {
            stripeid: "acct_1".into(),
            currency: "usd".into(),
            reporting_category: category.into(),
            amount: net + 10,
            fee: 10,
            net,
            created: at(created),
            available_on: at(available_on),
        }
    }

    #[test]
    fn a_day_counts_its_transactions_and_what_became_available() {
        // Day [100, 200): a charge settling after the day, a payout, an older charge
        // settling within the day, and one created after the day (ignored).
        let ms = [
            mv("charge", 1_000, 150, 300),
            mv("payout", -400, 160, 160),
            mv("charge", 700, 50, 120),
            mv("charge", 5, 200, 200),
        ];
        let moves = day_moves(at(100), at(200), &ms).expect("no overflow");
        assert_eq!(
            moves.change["usd"],
            Split {
                available: -400 + 700,
                pending: 1_000 - 700
            }
        );
        assert_eq!(moves.activity["usd"]["charge"].net, 1_000);
        assert_eq!(moves.activity["usd"]["charge"].fee, 10);
        assert_eq!(moves.activity["usd"]["payout"].count, 1);
        assert_eq!(moves.transactions["usd"], 2);
    }

    #[test]
    fn rolling_back_undoes_exactly_what_happened_after_the_instant() {
        // Answered at second 250: holds the charge created at 250 (same second).
        let answered = Balances::from([(
            "usd".into(),
            Split {
                available: 1_000,
                pending: 500,
            },
        )]);
        let ms = [
            mv("charge", 500, 250, 900), // created after 200, pending at 250
            mv("charge", 300, 100, 220), // released after 200
            mv("charge", 9, 251, 251),   // after the answer: not in it
        ];
        let back = rolled_back(answered, at(250), at(200), &ms).expect("no overflow");
        assert_eq!(
            back["usd"],
            Split {
                available: 700,
                pending: 300
            }
        );
    }

    #[test]
    fn forward_and_back_agree() {
        // A day moved forward from its opening equals the end-of-day answer rolled back.
        let opening = Split {
            available: 100,
            pending: 50,
        };
        let ms = [
            mv("charge", 1_000, 150, 260),
            mv("refund", -30, 170, 170),
            mv("charge", 50, 20, 180),
            mv("fee", -7, 210, 210),
        ];
        let day = day_moves(at(100), at(200), &ms).expect("ok");
        let closing = opening.checked_add(day.change["usd"]).expect("ok");
        // Stripe answers at 270: everything so far.
        let at_270 = Split {
            available: 100 + 50 - 30 + 1_000 - 7,
            pending: 0,
        };
        let back = rolled_back(
            Balances::from([("usd".into(), at_270)]),
            at(270),
            at(200),
            &ms,
        )
        .expect("ok");
        assert_eq!(back["usd"], closing);
        assert!(matches!(
            tie_out(closing, Some((back["usd"], 1, at(270)))),
            TieOut::Matched { .. }
        ));
        let drifted = Split {
            available: back["usd"].available - 25,
            ..back["usd"]
        };
        assert_eq!(
            tie_out(closing, Some((drifted, 1, at(270)))),
            TieOut::Difference {
                snapshot_id: 1,
                stripe_at: at(270),
                difference: Split {
                    available: -25,
                    pending: 0
                }
            }
        );
        assert_eq!(tie_out(closing, None), TieOut::Unverified);
    }
}
