//! With activity on, every account's balance is derived from a ledger of Stripe balance
//! transactions: charges settle from pending to available at `available_on`, refunds,
//! disputes, fees, account debits and payouts draw available down (possibly below zero).
//! Each account opens with adjustments that reproduce its generated static balance, so
//! the sum of an account's transactions always equals its balance, unless a test injected
//! a difference (`inject_drift`: a balance change with no transaction behind it).
//!
//! The ledger moves in whole simulated seconds: once it is stepped to second `S`, every
//! transaction created at or before `S` exists and none created later does, and everything
//! with `available_on <= S` is available. So the balance read at `S` is exactly what the
//! transactions created by `S` add up to (`AccountLedger::balance_at`).
//!
//! Money is integer minor units with checked arithmetic: an activity that would overflow
//! is dropped, never wrapped or rounded.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::objects::{balance_json, rng_for};
use super::world::{take, Account, CreatedRange, Cursor, Home, World};

/// The balance transaction `type`s the simulator creates on connected accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnType {
    Charge,
    Refund,
    PaymentFailureRefund,
    Adjustment,
    Payout,
    Transfer,
    StripeFee,
}

impl TxnType {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnType::Charge => "charge",
            TxnType::Refund => "refund",
            TxnType::PaymentFailureRefund => "payment_failure_refund",
            TxnType::Adjustment => "adjustment",
            TxnType::Payout => "payout",
            TxnType::Transfer => "transfer",
            TxnType::StripeFee => "stripe_fee",
        }
    }
}

/// Every `type` Stripe documents for the list filter; the simulator creates only some,
/// and a filter on any other valid type answers an empty list, as Stripe would.
pub const STRIPE_TXN_TYPES: [&str; 50] = [
    "adjustment",
    "advance",
    "advance_funding",
    "anticipation_repayment",
    "application_fee",
    "application_fee_refund",
    "charge",
    "climate_order_purchase",
    "climate_order_refund",
    "connect_collection_transfer",
    "contribution",
    "fee_credit_funding",
    "inbound_transfer",
    "inbound_transfer_reversal",
    "issuing_authorization_hold",
    "issuing_authorization_release",
    "issuing_dispute",
    "issuing_transaction",
    "obligation_outbound",
    "obligation_reversal_inbound",
    "payment",
    "payment_failure_refund",
    "payment_network_reserve_hold",
    "payment_network_reserve_release",
    "payment_refund",
    "payment_reversal",
    "payment_unreconciled",
    "payout",
    "payout_cancel",
    "payout_failure",
    "payout_minimum_balance_hold",
    "payout_minimum_balance_release",
    "refund",
    "refund_failure",
    "reserve_hold",
    "reserve_release",
    "reserve_transaction",
    "reserved_funds",
    "stripe_balance_payment_debit",
    "stripe_balance_payment_debit_reversal",
    "stripe_fee",
    "stripe_fx_fee",
    "tax_fee",
    "tax_fund",
    "topup",
    "topup_reversal",
    "transfer",
    "transfer_cancel",
    "transfer_failure",
    "transfer_refund",
];

/// One balance transaction, compact; rendered by `txn_objects`.
#[derive(Clone, Debug)]
pub struct Txn {
    pub id: String,
    pub kind: TxnType,
    pub reporting_category: &'static str,
    /// Gross, negative when money leaves the account.
    pub amount: i64,
    /// Stripe's fee plus the platform's application fee (both in `fee_details`).
    pub fee: i64,
    pub application_fee: i64,
    pub net: i64,
    pub currency: &'static str,
    pub created: i64,
    pub available_on: i64,
    /// Pending until released at `available_on`.
    pub available: bool,
    /// The object that caused it (`ch_…`, `re_…`, `du_…`, `po_…`, `tr_…`).
    pub source: Option<String>,
    pub description: Option<&'static str>,
    /// The charge a refund, failure or dispute is about (position in the same ledger).
    pub charge: Option<usize>,
    /// Charges: how much was refunded, failed or disputed since.
    pub reversed: i64,
    /// The payout that swept this transaction (position of its `payout` transaction).
    pub payout: Option<usize>,
    /// Payouts: when the money arrives at the bank (`payout.paid`).
    pub arrival_date: Option<i64>,
    pub paid: bool,
}

/// One currency of a balance, kept up to date with every transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrencyBalance {
    pub currency: &'static str,
    pub available: i64,
    pub pending: i64,
}

pub struct AccountLedger {
    /// Oldest first (appended as they happen, so ordered by `created`); lists read it
    /// backwards.
    pub txns: Vec<Txn>,
    /// Per currency, in the order the static balance listed them (default currency first):
    /// always the sum of `txns` (available: those already released).
    pub balances: Vec<CurrencyBalance>,
    /// `connect_reserved` is not part of available or pending; it stays as generated.
    pub connect_reserved: Option<Value>,
    /// Injected differences per currency: added to the available balance the account
    /// answers, with no transaction behind them (`Ledger::inject_drift`).
    pub drift: Vec<(&'static str, i64)>,
}

impl AccountLedger {
    fn balance_mut(&mut self, currency: &'static str) -> &mut CurrencyBalance {
        let at = match self.balances.iter().position(|b| b.currency == currency) {
            Some(at) => at,
            None => {
                self.balances.push(CurrencyBalance {
                    currency,
                    available: 0,
                    pending: 0,
                });
                self.balances.len() - 1
            }
        };
        &mut self.balances[at]
    }

    fn available(&self, currency: &str) -> i64 {
        self.balances
            .iter()
            .find(|b| b.currency == currency)
            .map_or(0, |b| b.available)
    }

    /// The difference injected into `currency`'s available balance (0 if none).
    pub fn drift(&self, currency: &str) -> i64 {
        self.drift
            .iter()
            .find(|(c, _)| *c == currency)
            .map_or(0, |(_, d)| *d)
    }

    /// Positions of the transactions created in `lo..hi` (the list is ordered by `created`).
    fn created_range(&self, lo: i64, hi: i64) -> std::ops::Range<usize> {
        let start = self.txns.partition_point(|t| t.created < lo);
        let end = self.txns.partition_point(|t| t.created < hi);
        start..end.max(start)
    }

    /// Per currency (sorted), the balance the transactions alone give at instant `at`:
    /// the `net` of those created at or before `at`, available when `available_on <= at`,
    /// else pending. Injected drift is not part of it. Lists every currency with a
    /// transaction created by `at`; `None` if a sum overflows.
    pub fn balance_at(&self, at: i64) -> Option<Vec<CurrencyBalance>> {
        let mut sums: BTreeMap<&'static str, (i64, i64)> = BTreeMap::new();
        for t in &self.txns[self.created_range(i64::MIN, at.saturating_add(1))] {
            let slot = sums.entry(t.currency).or_default();
            if t.available_on <= at {
                slot.0 = slot.0.checked_add(t.net)?;
            } else {
                slot.1 = slot.1.checked_add(t.net)?;
            }
        }
        Some(
            sums.into_iter()
                .map(|(currency, (available, pending))| CurrencyBalance {
                    currency,
                    available,
                    pending,
                })
                .collect(),
        )
    }
}

/// What a ledger step did, for the stats and for the events it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Happening {
    /// A transaction was added (position in the account's ledger).
    Activity { account: usize, pos: usize },
    /// Pending money of the account became available; `grew` when the available balance
    /// grew (Stripe sends `balance.available` then, and not for a negative transaction).
    Released { account: usize, grew: bool },
    /// A payout arrived at the bank: `payout.paid`, no balance change.
    PayoutPaid { account: usize, pos: usize },
}

impl Happening {
    pub fn account(&self) -> usize {
        match *self {
            Happening::Activity { account, .. }
            | Happening::Released { account, .. }
            | Happening::PayoutPaid { account, .. } => account,
        }
    }

    /// Whether the account's balance changed.
    pub fn changes_balance(&self) -> bool {
        !matches!(self, Happening::PayoutPaid { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DueKind {
    Release,
    PayoutPaid,
}

/// Something scheduled: (simulated time, sequence, kind, account, position).
type Due = Reverse<(i64, u64, DueKind, usize, usize)>;

/// Balance transaction list filters (`GET /v1/balance_transactions`).
#[derive(Debug, Default)]
pub struct TxnFilter {
    pub created: CreatedRange,
    pub kind: Option<String>,
    pub currency: Option<String>,
    pub source: Option<String>,
    /// Position of the payout's own transaction in the account's ledger.
    pub payout: Option<usize>,
}

/// The ids named by a list request that the account does not have.
#[derive(Debug, PartialEq, Eq)]
pub enum ListError {
    UnknownCursor,
}

/// Why a difference could not be injected.
#[derive(Debug, PartialEq, Eq)]
pub enum DriftError {
    UnknownAccount,
    /// The available balance it answers would overflow.
    Overflow,
}

/// Heavy-tailed activity: log-normal weights (sigma 2: the busiest 10 % of accounts do
/// about three quarters of everything, the median account a seventh of the mean).
const WEIGHT_SIGMA: f64 = 2.0;

pub struct Ledger {
    seed: u64,
    accounts: Vec<Option<AccountLedger>>,
    /// Transaction and payout ids → (account, position).
    by_id: HashMap<String, (usize, usize)>,
    due: BinaryHeap<Due>,
    seq: u64,
    rng: StdRng,
    /// Simulated seconds from a charge to its `available_on`.
    settlement_secs: i64,
    /// Per-account activity weight (0 for platforms and org accounts), and the running
    /// sum for picking an account by weight with a binary search.
    weights: Vec<f64>,
    cumulative: Vec<f64>,
    /// Normalises weights so their mean over the connected accounts is 1.
    weight_scale: f64,
    /// The simulated second the ledger has been brought up to: every transaction created
    /// at or before it exists, none created after it does.
    pub stepped_to: i64,
}

impl Ledger {
    /// Opens every account of `world` at simulated time `now`.
    pub fn new(world: &World, now: i64, settlement_secs: i64) -> Ledger {
        let mut ledger = Ledger {
            seed: world.seed,
            accounts: Vec::new(),
            by_id: HashMap::new(),
            due: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(world.seed ^ 0x6c65_6467_6572),
            settlement_secs: settlement_secs.max(1),
            weights: Vec::new(),
            cumulative: Vec::new(),
            weight_scale: 1.0,
            stepped_to: now,
        };
        let raw: Vec<f64> = world
            .accounts
            .iter()
            .filter(|a| matches!(a.home, Home::Connected { .. }))
            .map(|a| raw_weight(world.seed, &a.id))
            .collect();
        if !raw.is_empty() {
            let mean = raw.iter().sum::<f64>() / raw.len() as f64;
            if mean > 0.0 {
                ledger.weight_scale = 1.0 / mean;
            }
        }
        for idx in 0..world.accounts.len() {
            ledger.open(world, idx, now, true);
        }
        ledger
    }

    /// Opens the ledgers of accounts added to the world since the last call, at `now`
    /// (the second the ledger has reached): their history starts there, so no closed
    /// past changes.
    pub fn sync_accounts(&mut self, world: &World, now: i64) {
        for idx in self.accounts.len()..world.accounts.len() {
            self.open(world, idx, now, false);
        }
    }

    /// The sum of all activity weights (per-account rate = `F × weight`).
    pub fn total_weight(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    #[cfg(test)]
    pub fn weight(&self, account: usize) -> f64 {
        self.weights.get(account).copied().unwrap_or(0.0)
    }

    pub fn account(&self, idx: usize) -> Option<&AccountLedger> {
        self.accounts.get(idx).and_then(Option::as_ref)
    }

    /// Where a transaction or payout id lives: (account, position).
    pub fn locate(&self, id: &str) -> Option<(usize, usize)> {
        self.by_id.get(id).copied()
    }

    fn open(&mut self, world: &World, idx: usize, now: i64, backdate: bool) {
        let a = &world.accounts[idx];
        let weight = match a.home {
            Home::Connected { .. } => raw_weight(self.seed, &a.id) * self.weight_scale,
            _ => 0.0,
        };
        self.weights.push(weight);
        self.cumulative.push(self.total_weight() + weight);
        let opened = self.opening(world.seed, a, idx, now, backdate);
        self.accounts.push(Some(opened));
    }

    /// Adjustments that reproduce the generated balance: one available per currency, and
    /// one pending per currency that settles within the settlement delay. Created before
    /// `now` (1 hour to 7 days) with `backdate` (the accounts of the start), else at `now`.
    fn opening(
        &mut self,
        seed: u64,
        a: &Account,
        idx: usize,
        now: i64,
        backdate: bool,
    ) -> AccountLedger {
        let balance = balance_json(seed, a);
        let mut ledger = AccountLedger {
            txns: Vec::new(),
            balances: Vec::new(),
            connect_reserved: balance.get("connect_reserved").cloned(),
            drift: Vec::new(),
        };
        let mut rng = rng_for(seed, &format!("{}/opening", a.id));
        for (part, pending) in [("available", false), ("pending", true)] {
            for entry in balance[part].as_array().into_iter().flatten() {
                let currency = intern(entry["currency"].as_str().unwrap_or("usd"));
                let amount = entry["amount"].as_i64().unwrap_or(0);
                ledger.balance_mut(currency);
                if amount == 0 {
                    continue;
                }
                let age = rng.random_range(3_600..=7 * 86_400);
                let created = if backdate { now - age } else { now };
                let available_on = if pending {
                    now + rng.random_range(1..=self.settlement_secs)
                } else {
                    created
                };
                let txn = Txn {
                    id: self.fresh_id("txn_"),
                    kind: TxnType::Adjustment,
                    reporting_category: "other_adjustment",
                    amount,
                    fee: 0,
                    application_fee: 0,
                    net: amount,
                    currency,
                    created,
                    available_on,
                    available: !pending,
                    source: None,
                    description: Some("Opening balance (simulator)"),
                    charge: None,
                    reversed: 0,
                    payout: None,
                    arrival_date: None,
                    paid: false,
                };
                Self::push_txn(&mut ledger, txn);
            }
        }
        // Openings were created at different instants; the list is ordered by `created`.
        ledger.txns.sort_by_key(|t| t.created);
        for (pos, t) in ledger.txns.iter().enumerate() {
            self.by_id.insert(t.id.clone(), (idx, pos));
            if !t.available {
                self.seq += 1;
                self.due.push(Reverse((
                    t.available_on,
                    self.seq,
                    DueKind::Release,
                    idx,
                    pos,
                )));
            }
        }
        ledger
    }

    /// Applies a transaction to the balance and appends it (the caller indexes it);
    /// `None` if the balance would overflow.
    fn push_txn(ledger: &mut AccountLedger, txn: Txn) -> Option<usize> {
        let b = ledger.balance_mut(txn.currency);
        if txn.available {
            b.available = b.available.checked_add(txn.net)?;
        } else {
            b.pending = b.pending.checked_add(txn.net)?;
        }
        ledger.txns.push(txn);
        Some(ledger.txns.len() - 1)
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        let suffix: String = (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        format!("{prefix}{suffix}")
    }

    /// Moves everything due by `now` from pending to available and marks arrived payouts
    /// paid.
    pub fn release_due(&mut self, now: i64, out: &mut Vec<Happening>) {
        let mut grew: Vec<(usize, bool)> = Vec::new();
        while let Some(Reverse((at, _, kind, account, pos))) = self.due.peek().copied() {
            if at > now {
                break;
            }
            self.due.pop();
            let Some(Some(ledger)) = self.accounts.get_mut(account) else {
                continue;
            };
            match kind {
                DueKind::Release => {
                    let txn = &ledger.txns[pos];
                    if txn.available {
                        continue;
                    }
                    let (currency, net) = (txn.currency, txn.net);
                    let b = ledger.balance_mut(currency);
                    let (Some(pending), Some(available)) =
                        (b.pending.checked_sub(net), b.available.checked_add(net))
                    else {
                        tracing::warn!(account, pos, "release would overflow; left pending");
                        continue;
                    };
                    b.pending = pending;
                    b.available = available;
                    ledger.txns[pos].available = true;
                    match grew.iter_mut().find(|(a, _)| *a == account) {
                        Some((_, g)) => *g |= net > 0,
                        None => grew.push((account, net > 0)),
                    }
                }
                DueKind::PayoutPaid => {
                    ledger.txns[pos].paid = true;
                    out.push(Happening::PayoutPaid { account, pos });
                }
            }
        }
        // One balance change per account per step, as Stripe sends one balance.available
        // for all that settled together.
        out.extend(
            grew.into_iter()
                .map(|(account, grew)| Happening::Released { account, grew }),
        );
    }

    /// Picks an account by weight.
    pub fn pick_account(&mut self) -> Option<usize> {
        let total = self.total_weight();
        if total <= 0.0 {
            return None;
        }
        let x = self.rng.random::<f64>() * total;
        let at = self.cumulative.partition_point(|&c| c <= x);
        (at < self.cumulative.len()).then_some(at)
    }

    /// How many activities happen in a step whose expected number is `lambda`.
    pub fn activity_count(&mut self, lambda: f64) -> u64 {
        poisson(&mut self.rng, lambda)
    }

    /// A second drawn uniformly from `from + 1 ..= to` (`to` when the range is empty).
    pub fn second_in(&mut self, from: i64, to: i64) -> i64 {
        if to > from {
            self.rng.random_range(from + 1..=to)
        } else {
            to
        }
    }

    /// Changes `account`'s available balance in `currency` by `amount` without a
    /// transaction (nothing is announced either): the balance no longer ties out to its
    /// ledger. Returns the account's balance in that currency as it now answers it.
    pub fn inject_drift(
        &mut self,
        account: usize,
        currency: &'static str,
        amount: i64,
    ) -> Result<CurrencyBalance, DriftError> {
        let ledger = self
            .accounts
            .get_mut(account)
            .and_then(Option::as_mut)
            .ok_or(DriftError::UnknownAccount)?;
        let drift = ledger
            .drift(currency)
            .checked_add(amount)
            .ok_or(DriftError::Overflow)?;
        let b = ledger.balance_mut(currency).clone();
        let available = b.available.checked_add(drift).ok_or(DriftError::Overflow)?;
        match ledger.drift.iter_mut().find(|(c, _)| *c == currency) {
            Some(slot) => slot.1 = drift,
            None => ledger.drift.push((currency, drift)),
        }
        Ok(CurrencyBalance { available, ..b })
    }

    /// One random activity on `account` at simulated time `at`.
    pub fn activity(&mut self, world: &World, account: usize, at: i64) -> Option<Happening> {
        let default_currency = intern(world.accounts.get(account)?.currency);
        let roll = self.rng.random_range(0..100u32);
        let ledger = self.accounts.get(account)?.as_ref()?;
        let currency = if self.rng.random_bool(0.8) || ledger.balances.is_empty() {
            default_currency
        } else {
            ledger.balances[self.rng.random_range(0..ledger.balances.len())].currency
        };
        let planned = match roll {
            0..=63 => None,
            64..=71 => self.plan_reversal(account, currency, TxnType::Refund),
            72..=73 => self.plan_reversal(account, currency, TxnType::PaymentFailureRefund),
            74..=75 => self.plan_reversal(account, currency, TxnType::Adjustment),
            76..=89 => self.plan_payout(account, currency, at),
            90..=95 => self.plan_debit(account, currency),
            _ => Some(self.plan_stripe_fee(currency)),
        };
        // Whatever cannot happen (nothing to refund, nothing to pay out) is a charge.
        let txn = match planned {
            Some(txn) => txn,
            None => self.plan_charge(currency),
        };
        self.record(account, at, txn)
    }

    /// A positive adjustment, available at once (`SimHandle::move_money`).
    pub fn adjust(&mut self, world: &World, account: usize, at: i64) -> Option<Happening> {
        let currency = intern(world.accounts.get(account)?.currency);
        let amount = self.rng.random_range(100..=50_000i64);
        let txn = Planned {
            kind: TxnType::Adjustment,
            reporting_category: "other_adjustment",
            amount,
            fee: 0,
            application_fee: 0,
            currency,
            pending: false,
            source_prefix: None,
            description: Some("Adjustment (simulator)"),
            charge: None,
            sweep: false,
        };
        self.record(account, at, txn)
    }

    fn plan_charge(&mut self, currency: &'static str) -> Planned {
        // Log-normal amounts around 30.00 (median), rarely above 1,000.00.
        let amount = (8.0 + normal(&mut self.rng)).exp().clamp(50.0, 1_000_000.0) as i64;
        let stripe_fee = amount * 29 / 1000 + 30;
        let application_fee = amount / 20;
        Planned {
            kind: TxnType::Charge,
            reporting_category: "charge",
            amount,
            fee: stripe_fee + application_fee,
            application_fee,
            currency,
            pending: true,
            source_prefix: Some("ch_"),
            description: None,
            charge: None,
            sweep: false,
        }
    }

    /// A refund, a failed payment or a dispute of the account's latest charge in
    /// `currency` that still has money to take back.
    fn plan_reversal(
        &mut self,
        account: usize,
        currency: &'static str,
        kind: TxnType,
    ) -> Option<Planned> {
        let ledger = self.account(account)?;
        let (pos, left) = ledger
            .txns
            .iter()
            .enumerate()
            .rev()
            .take(200)
            .find(|(_, t)| {
                t.kind == TxnType::Charge && t.currency == currency && t.reversed < t.amount
            })
            .map(|(pos, t)| (pos, t.amount - t.reversed))?;
        let (amount, fee, category, prefix, description) = match kind {
            TxnType::Refund => {
                let amount = if self.rng.random_bool(0.7) {
                    left
                } else {
                    self.rng.random_range(1..=left)
                };
                (amount, 0, "refund", "re_", Some("REFUND FOR CHARGE"))
            }
            TxnType::PaymentFailureRefund => (
                left,
                0,
                "charge_failure",
                "pyr_",
                Some("Payment failure refund"),
            ),
            _ => (left, 1_500, "dispute", "du_", Some("Chargeback withdrawal")),
        };
        Some(Planned {
            kind,
            reporting_category: category,
            amount: -amount,
            fee,
            application_fee: 0,
            currency,
            pending: false,
            source_prefix: Some(prefix),
            description,
            charge: Some(pos),
            sweep: false,
        })
    }

    /// An automatic payout of everything available in `currency` (Stripe pays out no more
    /// than is available; a balance goes negative through refunds, disputes and fees).
    fn plan_payout(&mut self, account: usize, currency: &'static str, _at: i64) -> Option<Planned> {
        let available = self.account(account)?.available(currency);
        (available > 0).then_some(Planned {
            kind: TxnType::Payout,
            reporting_category: "payout",
            amount: -available,
            fee: 0,
            application_fee: 0,
            currency,
            pending: false,
            source_prefix: Some("po_"),
            description: Some("STRIPE PAYOUT"),
            charge: None,
            sweep: true,
        })
    }

    /// An account debit: the platform takes money back with a transfer from the account.
    fn plan_debit(&mut self, account: usize, currency: &'static str) -> Option<Planned> {
        let available = self.account(account)?.available(currency);
        if available < 100 {
            return None;
        }
        let amount = self.rng.random_range(1..=available / 2);
        Some(Planned {
            kind: TxnType::Transfer,
            reporting_category: "transfer",
            amount: -amount,
            fee: 0,
            application_fee: 0,
            currency,
            pending: false,
            source_prefix: Some("tr_"),
            description: Some("Account debit"),
            charge: None,
            sweep: false,
        })
    }

    fn plan_stripe_fee(&mut self, currency: &'static str) -> Planned {
        Planned {
            kind: TxnType::StripeFee,
            reporting_category: "fee",
            amount: -self.rng.random_range(100..=2_500i64),
            fee: 0,
            application_fee: 0,
            currency,
            pending: false,
            source_prefix: None,
            description: Some("Billing - Usage Fee"),
            charge: None,
            sweep: false,
        }
    }

    /// The moment a charge created at `at` becomes available: after the settlement delay,
    /// at the next midnight UTC when the delay is a day or more (as Stripe settles).
    fn settles_at(&self, at: i64) -> i64 {
        let t = at + self.settlement_secs;
        if self.settlement_secs >= 86_400 {
            (t + 86_399).div_euclid(86_400) * 86_400
        } else {
            t
        }
    }

    fn record(&mut self, account: usize, at: i64, p: Planned) -> Option<Happening> {
        let net = p.amount.checked_sub(p.fee)?;
        let available_on = if p.pending { self.settles_at(at) } else { at };
        let id = self.fresh_id("txn_");
        let source = p.source_prefix.map(|prefix| self.fresh_id(prefix));
        let arrival_date = (p.kind == TxnType::Payout).then(|| self.settles_at(at).max(at + 1));
        let txn = Txn {
            id: id.clone(),
            kind: p.kind,
            reporting_category: p.reporting_category,
            amount: p.amount,
            fee: p.fee,
            application_fee: p.application_fee,
            net,
            currency: p.currency,
            created: at,
            available_on,
            available: !p.pending,
            source: source.clone(),
            description: p.description,
            charge: p.charge,
            reversed: 0,
            payout: None,
            arrival_date,
            paid: false,
        };
        let ledger = self.accounts.get_mut(account)?.as_mut()?;
        debug_assert!(
            ledger.txns.last().is_none_or(|last| last.created <= at),
            "transactions are appended in the order they are created"
        );
        let pos = Self::push_txn(ledger, txn)?;
        if let Some(charge) = p.charge {
            let c = &mut ledger.txns[charge];
            c.reversed = c.reversed.saturating_add(p.amount.saturating_neg());
        }
        if p.sweep {
            for t in ledger.txns.iter_mut() {
                if t.available && t.payout.is_none() && t.currency == p.currency {
                    t.payout = Some(pos);
                }
            }
        }
        self.by_id.insert(id, (account, pos));
        if let Some(source) = source {
            self.by_id.insert(source, (account, pos));
        }
        if p.pending {
            self.seq += 1;
            self.due.push(Reverse((
                available_on,
                self.seq,
                DueKind::Release,
                account,
                pos,
            )));
        }
        if let Some(arrival) = arrival_date {
            self.seq += 1;
            self.due.push(Reverse((
                arrival,
                self.seq,
                DueKind::PayoutPaid,
                account,
                pos,
            )));
        }
        Some(Happening::Activity { account, pos })
    }

    /// One page of `account`'s transactions, newest first, as Stripe pages lists.
    pub fn list(
        &self,
        account: usize,
        limit: usize,
        cursor: Option<&Cursor>,
        filter: &TxnFilter,
    ) -> Result<(Vec<usize>, bool), ListError> {
        let Some(ledger) = self.account(account) else {
            return Ok((Vec::new(), false));
        };
        let (lo, hi) = filter.created.bounds();
        let range = ledger.created_range(lo, hi);
        let matches = |pos: &usize| {
            let t = &ledger.txns[*pos];
            filter.kind.as_deref().is_none_or(|k| k == t.kind.as_str())
                && filter.currency.as_deref().is_none_or(|c| c == t.currency)
                && filter
                    .source
                    .as_deref()
                    .is_none_or(|s| t.source.as_deref() == Some(s))
                && filter.payout.is_none_or(|p| t.payout == Some(p))
        };
        let cursor_pos = |id: &str| match self.locate(id) {
            Some((a, pos)) if a == account && ledger.txns[pos].id == id => Ok(pos),
            _ => Err(ListError::UnknownCursor),
        };
        let taken = match cursor {
            None => take(limit, range.rev().filter(matches)),
            Some(Cursor::StartingAfter(id)) => {
                let at = cursor_pos(id)?;
                take(
                    limit,
                    (range.start..range.end.min(at)).rev().filter(matches),
                )
            }
            Some(Cursor::EndingBefore(id)) => {
                let at = cursor_pos(id)?;
                let from = range.start.max(at + 1);
                let (mut newer, more) = take(limit, (from..range.end.max(from)).filter(matches));
                newer.reverse();
                (newer, more)
            }
        };
        Ok(taken)
    }
}

/// What an activity will add, before it gets ids and times.
struct Planned {
    kind: TxnType,
    reporting_category: &'static str,
    amount: i64,
    fee: i64,
    application_fee: i64,
    currency: &'static str,
    pending: bool,
    source_prefix: Option<&'static str>,
    description: Option<&'static str>,
    charge: Option<usize>,
    /// A payout sweeps every available transaction not yet paid out.
    sweep: bool,
}

/// An account's activity weight before normalisation: log-normal, from the seed.
fn raw_weight(seed: u64, id: &str) -> f64 {
    let mut rng = rng_for(seed, &format!("{id}/activity"));
    (WEIGHT_SIGMA * normal(&mut rng)).exp()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A Poisson draw by Knuth's method, in chunks of at most 50 so `exp(-lambda)` never
/// underflows (a sum of Poisson draws is Poisson with the summed rate).
pub fn poisson(rng: &mut impl Rng, lambda: f64) -> u64 {
    if lambda.is_nan() || lambda <= 0.0 || lambda.is_infinite() {
        return 0;
    }
    let mut left = lambda;
    let mut count = 0;
    while left > 0.0 {
        let chunk = left.min(50.0);
        left -= chunk;
        let limit = (-chunk).exp();
        let mut p = rng.random::<f64>();
        while p > limit {
            count += 1;
            p *= rng.random::<f64>();
        }
    }
    count
}

/// The currencies the simulator's balances use.
const KNOWN_CURRENCIES: [&str; 14] = [
    "usd", "eur", "gbp", "jpy", "kwd", "aud", "cad", "chf", "dkk", "nok", "nzd", "sek", "sgd",
    "mxn",
];

/// `currency` (any case) as one of the simulator's currencies, or `None`.
pub fn known_currency(currency: &str) -> Option<&'static str> {
    KNOWN_CURRENCIES
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(currency))
}

/// Currencies as `&'static str`: they all come from the simulator's fixed lists.
fn intern(currency: &str) -> &'static str {
    known_currency(currency).unwrap_or("usd")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimConfig;

    fn world() -> World {
        World::generate(&SimConfig {
            accounts_per_platform: 30,
            ..SimConfig::default()
        })
    }

    fn sums(ledger: &AccountLedger) -> Vec<CurrencyBalance> {
        let mut out: Vec<CurrencyBalance> = ledger
            .balances
            .iter()
            .map(|b| CurrencyBalance {
                currency: b.currency,
                available: 0,
                pending: 0,
            })
            .collect();
        for t in &ledger.txns {
            let b = out
                .iter_mut()
                .find(|b| b.currency == t.currency)
                .expect("every transaction's currency has a balance");
            if t.available {
                b.available += t.net;
            } else {
                b.pending += t.net;
            }
        }
        out
    }

    #[test]
    fn openings_reproduce_the_static_balance() {
        let w = world();
        let ledger = Ledger::new(&w, 1_700_000_000, 172_800);
        for (idx, a) in w.accounts.iter().enumerate() {
            let l = ledger.account(idx).expect("opened");
            let b = balance_json(w.seed, a);
            for (part, pick) in [
                (
                    "available",
                    (|c: &CurrencyBalance| c.available) as fn(&_) -> i64,
                ),
                ("pending", |c: &CurrencyBalance| c.pending),
            ] {
                for entry in b[part].as_array().expect("array") {
                    let c = entry["currency"].as_str().expect("currency");
                    let have = l
                        .balances
                        .iter()
                        .find(|x| x.currency == c)
                        .map(pick)
                        .expect("currency kept");
                    assert_eq!(Some(have), entry["amount"].as_i64(), "{} {part} {c}", a.id);
                }
            }
            assert_eq!(sums(l), l.balances, "{}", a.id);
        }
    }

    #[test]
    fn activity_keeps_balances_equal_to_the_sum_of_transactions() {
        let w = world();
        let mut now = 1_700_000_000;
        let mut ledger = Ledger::new(&w, now, 3_600);
        let mut out = Vec::new();
        for _ in 0..5_000 {
            now += 7;
            let account = ledger
                .pick_account()
                .expect("connected accounts have weight");
            ledger.activity(&w, account, now);
            ledger.release_due(now, &mut out);
        }
        let kinds: std::collections::HashSet<&str> = ledger
            .accounts
            .iter()
            .flatten()
            .flat_map(|l| l.txns.iter().map(|t| t.kind.as_str()))
            .collect();
        for kind in [
            "charge",
            "refund",
            "payment_failure_refund",
            "adjustment",
            "payout",
            "transfer",
            "stripe_fee",
        ] {
            assert!(kinds.contains(kind), "{kind} never happened");
        }
        for l in ledger.accounts.iter().flatten() {
            assert_eq!(sums(l), l.balances);
            for t in &l.txns {
                assert_eq!(t.net, t.amount - t.fee);
                assert!(t.available || t.available_on > now - 3_600 - 7);
                if t.kind == TxnType::Payout {
                    assert!(t.amount < 0);
                }
            }
        }
        assert!(out
            .iter()
            .any(|h| matches!(h, Happening::Released { grew: true, .. })));
        assert!(out
            .iter()
            .any(|h| matches!(h, Happening::PayoutPaid { .. })));
    }

    #[test]
    fn settling_only_negative_amounts_is_no_growth() {
        let w = World::generate(&SimConfig {
            accounts_per_platform: 200,
            ..SimConfig::default()
        });
        let now = 1_700_000_000;
        let mut ledger = Ledger::new(&w, now, 600);
        let pending_sign = |l: &AccountLedger| {
            let nets: Vec<i64> = l
                .txns
                .iter()
                .filter(|t| !t.available)
                .map(|t| t.net)
                .collect();
            (nets.iter().any(|n| *n > 0), nets.iter().any(|n| *n < 0))
        };
        let expected: Vec<(usize, bool)> = (0..w.accounts.len())
            .filter_map(|i| {
                let (positive, negative) = pending_sign(ledger.account(i)?);
                (positive || negative).then_some((i, positive))
            })
            .collect();
        assert!(
            expected.iter().any(|(_, positive)| !positive),
            "some account settles only negative amounts"
        );
        let mut out = Vec::new();
        ledger.release_due(now + 600, &mut out);
        let mut got: Vec<(usize, bool)> = out
            .iter()
            .map(|h| match *h {
                Happening::Released { account, grew } => (account, grew),
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, expected);
        assert!(ledger
            .accounts
            .iter()
            .flatten()
            .all(|l| l.txns.iter().all(|t| t.available)));
    }

    #[test]
    fn weights_are_skewed_and_average_one() {
        let w = World::generate(&SimConfig {
            platforms: 1,
            accounts_per_platform: 2_000,
            ..SimConfig::default()
        });
        let ledger = Ledger::new(&w, 0, 60);
        let mut weights: Vec<f64> = w.platforms[0]
            .connected
            .iter()
            .map(|&i| ledger.weight(i))
            .collect();
        let mean = weights.iter().sum::<f64>() / weights.len() as f64;
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        weights.sort_by(f64::total_cmp);
        let top: f64 = weights[weights.len() * 9 / 10..].iter().sum();
        assert!(
            top / weights.iter().sum::<f64>() > 0.5,
            "the busiest tenth dominates"
        );
        assert!(
            weights[weights.len() / 2] < 0.3,
            "the median account is quiet"
        );
    }

    /// A ledger with a few thousand activities over about a simulated day, stepped to the
    /// returned second as the ticker steps it.
    fn busy_ledger(w: &World) -> (Ledger, i64) {
        let mut now = 1_700_000_000;
        let mut ledger = Ledger::new(w, now, 3_600);
        let mut out = Vec::new();
        for _ in 0..3_000 {
            now += 29;
            ledger.release_due(now, &mut out);
            let account = ledger.pick_account().expect("weights");
            ledger.activity(w, account, now);
        }
        ledger.release_due(now, &mut out);
        ledger.stepped_to = now;
        (ledger, now)
    }

    fn sorted(mut b: Vec<CurrencyBalance>) -> Vec<CurrencyBalance> {
        b.sort_by_key(|c| c.currency);
        b
    }

    #[test]
    fn balance_at_now_is_the_balance_and_in_the_past_the_replayed_one() {
        let w = world();
        let (ledger, now) = busy_ledger(&w);
        let mut checked_past = 0;
        for l in ledger.accounts.iter().flatten() {
            assert!(l.txns.windows(2).all(|p| p[0].created <= p[1].created));
            let at_now = l.balance_at(now).expect("no overflow");
            // Currencies without any transaction show as 0 in the balance only.
            let live: Vec<CurrencyBalance> = l
                .balances
                .iter()
                .filter(|b| l.txns.iter().any(|t| t.currency == b.currency))
                .cloned()
                .collect();
            assert_eq!(at_now, sorted(live));
            for t in &l.txns {
                if t.kind == TxnType::Payout {
                    assert_eq!(t.available_on, t.created, "payouts take available at once");
                }
            }
            // In the past: only what was created by then, available by available_on.
            if let Some(mid) = l.txns.get(l.txns.len() / 2).map(|t| t.created) {
                let mut expected: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
                for t in l.txns.iter().filter(|t| t.created <= mid) {
                    let slot = expected.entry(t.currency).or_default();
                    if t.available_on <= mid {
                        slot.0 += t.net;
                    } else {
                        slot.1 += t.net;
                    }
                }
                let got: BTreeMap<&str, (i64, i64)> = l
                    .balance_at(mid)
                    .expect("no overflow")
                    .into_iter()
                    .map(|b| (b.currency, (b.available, b.pending)))
                    .collect();
                assert_eq!(got, expected);
                checked_past += 1;
            }
            let first = l.txns.first().map_or(now, |t| t.created);
            assert_eq!(l.balance_at(first - 1), Some(Vec::new()));
        }
        assert!(checked_past > 10);
    }

    #[test]
    fn drift_moves_the_answered_balance_but_not_the_ledger() {
        let w = world();
        let (mut ledger, now) = busy_ledger(&w);
        let idx = w.platforms[0].connected[3];
        let currency = intern(w.accounts[idx].currency);
        let before = ledger.account(idx).expect("opened").balances.clone();
        let truth = ledger.account(idx).expect("opened").balance_at(now);
        let txns = ledger.account(idx).expect("opened").txns.len();
        let b = ledger.inject_drift(idx, currency, -1_234).expect("applied");
        ledger.inject_drift(idx, currency, 34).expect("applied");
        let l = ledger.account(idx).expect("opened");
        assert_eq!(l.drift(currency), -1_200);
        let was = before
            .iter()
            .find(|c| c.currency == currency)
            .expect("kept");
        assert_eq!(b.available, was.available - 1_234);
        assert_eq!(l.balances, before, "the ledger's own sums are untouched");
        assert_eq!(l.txns.len(), txns, "no transaction");
        assert_eq!(l.balance_at(now), truth, "the ground truth ignores drift");
        let answered = crate::sim::txn_objects::ledger_balance_json(l);
        let shown = answered["available"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["currency"] == currency)
            .and_then(|e| e["amount"].as_i64());
        assert_eq!(shown, Some(was.available - 1_200));
        assert_eq!(
            ledger.inject_drift(idx, currency, i64::MAX),
            Err(DriftError::Overflow)
        );
        assert_eq!(
            ledger.inject_drift(usize::MAX, currency, 1),
            Err(DriftError::UnknownAccount)
        );
    }

    #[test]
    fn created_ranges_page_newest_first() {
        let w = world();
        let (ledger, _) = busy_ledger(&w);
        let (idx, l) = ledger
            .accounts
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.as_ref()?)))
            .max_by_key(|(_, l)| l.txns.len())
            .expect("accounts");
        let lo = l.txns[l.txns.len() / 4].created;
        let hi = l.txns[l.txns.len() * 3 / 4].created;
        for created in [
            CreatedRange {
                gte: Some(lo),
                lte: Some(hi),
                ..CreatedRange::default()
            },
            CreatedRange {
                gt: Some(lo),
                lt: Some(hi),
                ..CreatedRange::default()
            },
        ] {
            let (from, to) = created.bounds();
            let expected: Vec<usize> = (0..l.txns.len())
                .rev()
                .filter(|&p| l.txns[p].created >= from && l.txns[p].created < to)
                .collect();
            assert!(expected.len() > 6);
            let filter = TxnFilter {
                created,
                ..TxnFilter::default()
            };
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let (page, more) = ledger
                    .list(idx, 4, cursor.as_ref(), &filter)
                    .expect("known cursor");
                got.extend(page.iter().copied());
                match (more, page.last()) {
                    (true, Some(&last)) => {
                        cursor = Some(Cursor::StartingAfter(l.txns[last].id.clone()))
                    }
                    _ => break,
                }
            }
            assert_eq!(got, expected);
            let (back, _) = ledger
                .list(
                    idx,
                    3,
                    Some(&Cursor::EndingBefore(l.txns[expected[4]].id.clone())),
                    &filter,
                )
                .expect("known cursor");
            assert_eq!(back, expected[1..4].to_vec());
        }
    }

    #[test]
    fn poisson_mean_matches_lambda() {
        let mut rng = StdRng::seed_from_u64(7);
        for lambda in [0.05, 3.0, 240.0] {
            let n = 4_000;
            let total: u64 = (0..n).map(|_| poisson(&mut rng, lambda)).sum();
            let mean = total as f64 / n as f64;
            assert!(
                (mean - lambda).abs() < 0.1 * lambda + 0.02,
                "{lambda}: {mean}"
            );
        }
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(poisson(&mut rng, f64::NAN), 0);
    }
}
