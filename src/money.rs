//! Money: integer minor units, summed per currency with overflow checks, never
//! floats. Every sum tally reports is made here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stripe::{Balance, BalanceAmount};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amounts in {0} overflow a 64-bit integer of minor units")]
pub struct MoneyOverflow(pub &'static str);

/// The four balance kinds tally totals, for one currency, in minor units.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    pub available: i64,
    pub pending: i64,
    pub connect_reserved: i64,
    pub instant_available: i64,
}

impl Amounts {
    fn combine(
        self,
        other: Amounts,
        op: fn(i64, i64) -> Option<i64>,
    ) -> Result<Amounts, MoneyOverflow> {
        Ok(Amounts {
            available: op(self.available, other.available).ok_or(MoneyOverflow("available"))?,
            pending: op(self.pending, other.pending).ok_or(MoneyOverflow("pending"))?,
            connect_reserved: op(self.connect_reserved, other.connect_reserved)
                .ok_or(MoneyOverflow("connect_reserved"))?,
            instant_available: op(self.instant_available, other.instant_available)
                .ok_or(MoneyOverflow("instant_available"))?,
        })
    }

    pub fn checked_add(self, other: Amounts) -> Result<Amounts, MoneyOverflow> {
        self.combine(other, i64::checked_add)
    }

    pub fn checked_sub(self, other: Amounts) -> Result<Amounts, MoneyOverflow> {
        self.combine(other, i64::checked_sub)
    }

    pub fn is_zero(&self) -> bool {
        *self == Amounts::default()
    }
}

/// The platform's exposure in one currency: what accounts whose available balance is
/// below zero owe, as a positive amount (`negative`), and how many they are. It is
/// counted beside the net totals, which it never changes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    pub negative: i64,
    pub accounts: i64,
}

impl Exposure {
    /// One account's exposure in a currency, from its net available amount there.
    pub fn of_available(available: i64) -> Result<Exposure, MoneyOverflow> {
        if available >= 0 {
            return Ok(Exposure::default());
        }
        Ok(Exposure {
            negative: available.checked_neg().ok_or(MoneyOverflow("negative"))?,
            accounts: 1,
        })
    }

    fn combine(
        self,
        other: Exposure,
        op: fn(i64, i64) -> Option<i64>,
    ) -> Result<Exposure, MoneyOverflow> {
        Ok(Exposure {
            negative: op(self.negative, other.negative).ok_or(MoneyOverflow("negative"))?,
            accounts: op(self.accounts, other.accounts).ok_or(MoneyOverflow("negative"))?,
        })
    }

    pub fn checked_add(self, other: Exposure) -> Result<Exposure, MoneyOverflow> {
        self.combine(other, i64::checked_add)
    }

    pub fn checked_sub(self, other: Exposure) -> Result<Exposure, MoneyOverflow> {
        self.combine(other, i64::checked_sub)
    }

    pub fn is_zero(&self) -> bool {
        *self == Exposure::default()
    }
}

/// How one currency's kept totals move from one account state to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyDelta {
    pub currency: String,
    pub amounts: Amounts,
    /// Whether the currency appears (+1), disappears (-1) or stays (0).
    pub holders: i64,
    pub exposure: Exposure,
}

/// One currency's row, as stored beside a snapshot and as the API reports totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyAmounts {
    pub currency: String,
    #[serde(flatten)]
    pub amounts: Amounts,
}

/// Picks one of the four kinds out of an [`Amounts`].
type AmountField = fn(&mut Amounts) -> &mut i64;

/// Amounts per lowercase currency code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals(BTreeMap<String, Amounts>);

impl Totals {
    /// One account's balance, per currency. Several entries of one currency (Stripe
    /// splits some by source) are summed.
    pub fn from_balance(balance: &Balance) -> Result<Totals, MoneyOverflow> {
        let mut totals = Totals::default();
        let kinds: [(&[BalanceAmount], AmountField); 4] = [
            (&balance.available, |a| &mut a.available),
            (&balance.pending, |a| &mut a.pending),
            (
                balance.connect_reserved.as_deref().unwrap_or_default(),
                |a| &mut a.connect_reserved,
            ),
            (
                balance.instant_available.as_deref().unwrap_or_default(),
                |a| &mut a.instant_available,
            ),
        ];
        for (entries, field) in kinds {
            for entry in entries {
                let amounts = totals
                    .0
                    .entry(entry.currency.to_ascii_lowercase())
                    .or_default();
                let slot = field(amounts);
                *slot = slot
                    .checked_add(entry.amount)
                    .ok_or(MoneyOverflow("a balance"))?;
            }
        }
        Ok(totals)
    }

    pub fn from_rows(rows: Vec<CurrencyAmounts>) -> Result<Totals, MoneyOverflow> {
        let mut totals = Totals::default();
        for row in rows {
            totals.add_currency(&row.currency, row.amounts)?;
        }
        Ok(totals)
    }

    pub fn add_currency(&mut self, currency: &str, amounts: Amounts) -> Result<(), MoneyOverflow> {
        let slot = self.0.entry(currency.to_owned()).or_default();
        *slot = slot.checked_add(amounts)?;
        Ok(())
    }

    pub fn add(&mut self, other: &Totals) -> Result<(), MoneyOverflow> {
        for (currency, amounts) in &other.0 {
            self.add_currency(currency, *amounts)?;
        }
        Ok(())
    }

    /// `new - old` per currency, for moving stored totals (and the exposure) from one
    /// snapshot of an account to the next.
    pub fn delta(new: &Totals, old: &Totals) -> Result<Vec<CurrencyDelta>, MoneyOverflow> {
        let mut currencies: Vec<&String> = new.0.keys().chain(old.0.keys()).collect();
        currencies.sort_unstable();
        currencies.dedup();
        let mut out = Vec::new();
        for currency in currencies {
            let (n, o) = (
                new.0.get(currency).copied().unwrap_or_default(),
                old.0.get(currency).copied().unwrap_or_default(),
            );
            let amounts = n.checked_sub(o)?;
            let holders =
                i64::from(new.0.contains_key(currency)) - i64::from(old.0.contains_key(currency));
            let exposure = Exposure::of_available(n.available)?
                .checked_sub(Exposure::of_available(o.available)?)?;
            if !amounts.is_zero() || holders != 0 || !exposure.is_zero() {
                out.push(CurrencyDelta {
                    currency: currency.clone(),
                    amounts,
                    holders,
                    exposure,
                });
            }
        }
        Ok(out)
    }

    pub fn rows(&self) -> Vec<CurrencyAmounts> {
        self.0
            .iter()
            .map(|(currency, amounts)| CurrencyAmounts {
                currency: currency.clone(),
                amounts: *amounts,
            })
            .collect()
    }

    pub fn get(&self, currency: &str) -> Option<&Amounts> {
        self.0.get(currency)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The exposure of many accounts, per lowercase currency: each account adds what it
/// owes in every currency its available balance is below zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exposures(BTreeMap<String, Exposure>);

impl Exposures {
    /// Adds one account, given its per-currency amounts.
    pub fn add_account(&mut self, account: &Totals) -> Result<(), MoneyOverflow> {
        for (currency, amounts) in &account.0 {
            let exposure = Exposure::of_available(amounts.available)?;
            if !exposure.is_zero() {
                add_into(
                    &mut self.0,
                    currency.clone(),
                    exposure,
                    Exposure::checked_add,
                )?;
            }
        }
        Ok(())
    }

    /// A currency's exposure; zero where no account is below zero.
    pub fn get(&self, currency: &str) -> Exposure {
        self.0.get(currency).copied().unwrap_or_default()
    }
}

/// Digits after the decimal point in a currency's major unit, per Stripe's list of
/// zero-decimal and three-decimal currencies.
pub fn minor_digits(currency: &str) -> u32 {
    const ZERO: [&str; 16] = [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// `123456` usd → `"1234.56"`, jpy → `"123456"`, kwd → `"123.456"`; exact, no floats.
pub fn format_minor(amount: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    if digits == 0 {
        return amount.to_string();
    }
    let sign = if amount < 0 { "-" } else { "" };
    let magnitude = amount.unsigned_abs();
    let scale = 10u64.pow(digits);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale,
        magnitude % scale,
        width = digits as usize
    )
}

/// A balance as a ledger moves it: what is available and what is still pending.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub available: i64,
    pub pending: i64,
}

impl Split {
    pub fn checked_add(self, other: Split) -> Result<Split, MoneyOverflow> {
        Ok(Split {
            available: self
                .available
                .checked_add(other.available)
                .ok_or(MoneyOverflow("available"))?,
            pending: self
                .pending
                .checked_add(other.pending)
                .ok_or(MoneyOverflow("pending"))?,
        })
    }

    pub fn checked_sub(self, other: Split) -> Result<Split, MoneyOverflow> {
        Ok(Split {
            available: self
                .available
                .checked_sub(other.available)
                .ok_or(MoneyOverflow("available"))?,
            pending: self
                .pending
                .checked_sub(other.pending)
                .ok_or(MoneyOverflow("pending"))?,
        })
    }

    pub fn total(self) -> Result<i64, MoneyOverflow> {
        self.available
            .checked_add(self.pending)
            .ok_or(MoneyOverflow("balance"))
    }

    /// `net` that is available (`true`) or pending.
    pub fn of(net: i64, available: bool) -> Split {
        if available {
            Split {
                available: net,
                pending: 0,
            }
        } else {
            Split {
                available: 0,
                pending: net,
            }
        }
    }

    /// `net` that moved from pending to available.
    pub fn released(net: i64) -> Result<Split, MoneyOverflow> {
        Ok(Split {
            available: net,
            pending: net.checked_neg().ok_or(MoneyOverflow("pending"))?,
        })
    }
}

/// Balance transactions of one reporting category summed: how many, gross, fees, net.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub count: i64,
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
}

impl Activity {
    pub fn checked_add(self, other: Activity) -> Result<Activity, MoneyOverflow> {
        let add = |a: i64, b: i64, what| a.checked_add(b).ok_or(MoneyOverflow(what));
        Ok(Activity {
            count: add(self.count, other.count, "count")?,
            amount: add(self.amount, other.amount, "amount")?,
            fee: add(self.fee, other.fee, "fee")?,
            net: add(self.net, other.net, "net")?,
        })
    }

    /// One transaction.
    pub fn one(amount: i64, fee: i64, net: i64) -> Activity {
        Activity {
            count: 1,
            amount,
            fee,
            net,
        }
    }
}

/// Adds `value` into `map[key]` with an overflow check.
pub fn add_into<K: Ord, V: Default + Copy>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    add: fn(V, V) -> Result<V, MoneyOverflow>,
) -> Result<(), MoneyOverflow> {
    let slot = map.entry(key).or_default();
    *slot = add(*slot, value)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(amount: i64, currency: &str) -> BalanceAmount {
        BalanceAmount {
            amount,
            currency: currency.into(),
            source_types: None,
            net_available: None,
        }
    }

    fn balance(available: Vec<BalanceAmount>, pending: Vec<BalanceAmount>) -> Balance {
        Balance {
            object: "balance".into(),
            livemode: false,
            available,
            pending,
            connect_reserved: Some(vec![entry(5, "usd")]),
            instant_available: None,
            issuing: None,
            refund_and_dispute_prefunding: None,
        }
    }

    #[test]
    fn a_balance_sums_per_currency_and_kind_with_negatives() {
        let b = balance(
            vec![entry(100, "usd"), entry(-30, "usd"), entry(7, "jpy")],
            vec![entry(-5, "eur")],
        );
        let totals = Totals::from_balance(&b).expect("no overflow");
        assert_eq!(
            totals.get("usd"),
            Some(&Amounts {
                available: 70,
                pending: 0,
                connect_reserved: 5,
                instant_available: 0
            })
        );
        assert_eq!(totals.get("eur").map(|a| a.pending), Some(-5));
        assert_eq!(totals.get("jpy").map(|a| a.available), Some(7));
    }

    #[test]
    fn ledger_sums_check_overflow() {
        let near = Split {
            available: i64::MAX,
            pending: 0,
        };
        assert!(near.checked_add(Split::of(1, true)).is_err());
        assert_eq!(
            Split::of(5, false).checked_add(Split::released(5).expect("ok")),
            Ok(Split {
                available: 5,
                pending: 0
            })
        );
        assert!(Split::released(i64::MIN).is_err());
        let mut by = BTreeMap::new();
        add_into(
            &mut by,
            "fee",
            Activity::one(-3, 0, -3),
            Activity::checked_add,
        )
        .expect("ok");
        add_into(
            &mut by,
            "fee",
            Activity::one(-4, 0, -4),
            Activity::checked_add,
        )
        .expect("ok");
        assert_eq!(
            by["fee"],
            Activity {
                count: 2,
                amount: -7,
                fee: 0,
                net: -7
            }
        );
        assert!(Activity::one(i64::MAX, 0, 0)
            .checked_add(Activity::one(1, 0, 0))
            .is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let b = balance(vec![entry(i64::MAX, "usd"), entry(1, "usd")], vec![]);
        assert!(Totals::from_balance(&b).is_err());
        let mut t =
            Totals::from_balance(&balance(vec![entry(i64::MAX, "usd")], vec![])).expect("ok");
        assert!(t
            .add(&Totals::from_balance(&balance(vec![entry(1, "usd")], vec![])).expect("ok"))
            .is_err());
    }

    #[test]
    fn delta_moves_totals_between_snapshots() {
        let old = Totals::from_balance(&balance(vec![entry(100, "usd"), entry(9, "gbp")], vec![]))
            .expect("ok");
        let new = Totals::from_balance(&balance(vec![entry(40, "usd"), entry(3, "eur")], vec![]))
            .expect("ok");
        let delta = Totals::delta(&new, &old).expect("ok");
        let find = |c: &str| {
            delta
                .iter()
                .find(|d| d.currency == c)
                .map(|d| (d.amounts.available, d.holders))
        };
        assert_eq!(find("usd"), Some((-60, 0)));
        assert_eq!(find("gbp"), Some((-9, -1)));
        assert_eq!(find("eur"), Some((3, 1)));
    }

    fn exposure(negative: i64, accounts: i64) -> Exposure {
        Exposure { negative, accounts }
    }

    #[test]
    fn exposure_counts_only_accounts_below_zero_as_positive_amounts() {
        assert_eq!(Exposure::of_available(250), Ok(exposure(0, 0)));
        assert_eq!(Exposure::of_available(0), Ok(exposure(0, 0)));
        assert_eq!(Exposure::of_available(-250), Ok(exposure(250, 1)));
        // One account's entries of a currency are netted first: -30 + 10 is -20 owed.
        let mut many = Exposures::default();
        for account in [
            balance(
                vec![entry(-30, "usd"), entry(10, "usd"), entry(5, "eur")],
                vec![],
            ),
            balance(vec![entry(-7, "usd"), entry(-1, "eur")], vec![]),
            balance(vec![entry(100, "usd")], vec![entry(-500, "usd")]),
        ] {
            let totals = Totals::from_balance(&account).expect("no overflow");
            many.add_account(&totals).expect("no overflow");
        }
        assert_eq!(many.get("usd"), exposure(27, 2), "pending never counts");
        assert_eq!(many.get("eur"), exposure(1, 1));
        assert_eq!(many.get("jpy"), exposure(0, 0));
    }

    #[test]
    fn exposure_overflow_is_an_error_not_a_wrap() {
        // i64::MIN has no positive counterpart.
        assert_eq!(
            Exposure::of_available(i64::MIN),
            Err(MoneyOverflow("negative"))
        );
        assert!(exposure(i64::MAX, 1).checked_add(exposure(1, 1)).is_err());
        assert!(exposure(0, i64::MIN).checked_sub(exposure(0, 1)).is_err());
        let mut many = Exposures::default();
        let owes = |amount| {
            Totals::from_balance(&balance(vec![entry(amount, "usd")], vec![])).expect("ok")
        };
        many.add_account(&owes(-i64::MAX)).expect("fits");
        assert_eq!(many.add_account(&owes(-1)), Err(MoneyOverflow("negative")));
        assert_eq!(many.get("usd"), exposure(i64::MAX, 1), "left as it was");
    }

    #[test]
    fn delta_moves_the_exposure_as_an_account_crosses_zero() {
        let at = |usd| Totals::from_balance(&balance(vec![entry(usd, "usd")], vec![])).expect("ok");
        let moved = |new, old| Totals::delta(&at(new), &at(old)).expect("ok")[0].exposure;
        assert_eq!(moved(-40, 100), exposure(40, 1), "goes below zero");
        assert_eq!(moved(-10, -40), exposure(-30, 0), "owes less");
        assert_eq!(moved(60, -10), exposure(-10, -1), "back above zero");
        let gone = Totals::delta(&Totals::default(), &at(-5)).expect("ok");
        assert_eq!(
            gone[0].exposure,
            exposure(-5, -1),
            "removed while below zero"
        );
        assert_eq!(gone[0].holders, -1);
    }

    #[test]
    fn amounts_format_in_each_currencys_decimals() {
        assert_eq!(format_minor(123456, "usd"), "1234.56");
        assert_eq!(format_minor(-5, "usd"), "-0.05");
        assert_eq!(format_minor(123456, "jpy"), "123456");
        assert_eq!(format_minor(123456, "kwd"), "123.456");
        assert_eq!(format_minor(i64::MIN, "usd"), "-92233720368547758.08");
    }
}
