//! The simulated organization: platforms, their connected accounts, accounts directly in
//! the org, and the keys that reach them. Deterministic from the seed.

use std::collections::{BTreeMap, HashMap};

use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::objects::rng_for;
use super::{SimConfig, SimKeys, SimPlatform};

/// The legacy account `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountType {
    Standard,
    Express,
    Custom,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Standard => "standard",
            AccountType::Express => "express",
            AccountType::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "standard" => Some(AccountType::Standard),
            "express" => Some(AccountType::Express),
            "custom" => Some(AccountType::Custom),
            _ => None,
        }
    }
}

/// Where an account sits in the organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// A platform (index into `World::platforms`).
    Platform(usize),
    /// Directly in the organization, no platform above it.
    Org,
    /// Connected to platform `platform`, at `pos` in that platform's oldest-first list.
    Connected { platform: usize, pos: usize },
}

/// One account, compact; rendered to JSON by `objects`.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub created: i64,
    pub kind: AccountType,
    pub country: &'static str,
    pub currency: &'static str,
    pub email: Option<String>,
    pub business_name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub onboarded: bool,
    /// Created through the API: the balance is empty rather than generated.
    pub empty_balance: bool,
    pub home: Home,
    /// The platform lost access (`SimHandle::revoke`).
    pub revoked: bool,
    /// Every request for this account answers this status (`SimHandle::fail_account`).
    pub fail_status: Option<u16>,
    /// How many times money moved (`SimHandle::move_money`): each gives another
    /// deterministic balance.
    pub balance_version: u64,
}

#[derive(Clone, Debug)]
pub struct Platform {
    pub id: String,
    /// The platform's own account (index into `World::accounts`).
    pub account: usize,
    pub key: String,
    /// Connected accounts (indexes into `World::accounts`), oldest first, so new accounts
    /// append and each account's `pos` stays valid. Lists read it backwards.
    pub connected: Vec<usize>,
}

/// Who a secret key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOwner {
    Platform(usize),
    Org,
}

/// A `created` filter, as `created[gt]=…` etc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
}

impl CreatedRange {
    /// The inclusive lower and exclusive upper bound.
    pub fn bounds(&self) -> (i64, i64) {
        let lo = [self.gt.map(|v| v.saturating_add(1)), self.gte]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(i64::MIN);
        let hi = [self.lt, self.lte.map(|v| v.saturating_add(1))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i64::MAX);
        (lo, hi)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    StartingAfter(String),
    EndingBefore(String),
}

/// A page of account indexes, newest first.
#[derive(Debug)]
pub struct Page {
    pub data: Vec<usize>,
    pub has_more: bool,
}

/// The cursor names no account in the listed scope.
#[derive(Debug)]
pub struct UnknownCursor;

/// (country, default currency) pairs; the currencies are those balances use.
const COUNTRIES: [(&str, &str); 6] = [
    ("US", "usd"),
    ("US", "usd"),
    ("GB", "gbp"),
    ("DE", "eur"),
    ("FR", "eur"),
    ("JP", "jpy"),
];

/// 2022-01-01: generated accounts are created from here on, a few seconds apart, so
/// they are always older than anything created through the API.
const EPOCH: i64 = 1_640_995_200;

pub struct World {
    pub seed: u64,
    pub accounts: Vec<Account>,
    pub by_id: HashMap<String, usize>,
    pub platforms: Vec<Platform>,
    pub org_accounts: Vec<usize>,
    pub org_key: String,
    keys: HashMap<String, KeyOwner>,
    /// Restricted keys (`rk_test_…`) and the permissions each holds (`rak_balance_read`, …).
    restricted: HashMap<String, Vec<String>>,
    /// Keys rolled and expired: Stripe answers them 401 "Expired API Key provided".
    expired: std::collections::HashSet<String>,
    /// Keys made after the world was generated (rolled, restricted), numbered.
    extra_keys: u64,
}

impl World {
    pub fn generate(config: &SimConfig) -> World {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut world = World {
            seed: config.seed,
            accounts: Vec::new(),
            by_id: HashMap::new(),
            platforms: Vec::new(),
            org_accounts: Vec::new(),
            org_key: format!("sk_org_test_{}", alnum(&mut rng, 96)),
            keys: HashMap::new(),
            restricted: HashMap::new(),
            expired: std::collections::HashSet::new(),
            extra_keys: 0,
        };
        world.keys.insert(world.org_key.clone(), KeyOwner::Org);
        let mut clock = EPOCH - 86_400 * 30;
        for p in 0..config.platforms {
            let id = world.fresh_id(&mut rng);
            // Stripe secret keys embed the account's id after "51".
            let key = format!("sk_test_51{}{}", &id[6..], alnum(&mut rng, 84));
            world.keys.insert(key.clone(), KeyOwner::Platform(p));
            clock += rng.random_range(1..3_600);
            let platform = random_account(&mut rng, id.clone(), clock, Home::Platform(p), None);
            let account = world.insert(platform);
            world.platforms.push(Platform {
                id,
                account,
                key,
                connected: Vec::new(),
            });
        }
        let mut clock = EPOCH;
        let mut owners = Owners::default();
        for p in 0..config.platforms {
            for _ in 0..config.accounts_per_platform {
                clock += rng.random_range(0..=3);
                world.push_connected(&mut rng, p, clock, &mut owners);
            }
        }
        for _ in 0..config.org_accounts {
            clock += rng.random_range(1..=60);
            let id = world.fresh_id(&mut rng);
            let owner = owners.next(&mut rng);
            let account = random_account(&mut rng, id, clock, Home::Org, owner);
            let idx = world.insert(account);
            world.org_accounts.push(idx);
        }
        world
    }

    pub fn keys(&self) -> SimKeys {
        SimKeys {
            organization_key: self.org_key.clone(),
            platforms: self
                .platforms
                .iter()
                .map(|p| SimPlatform {
                    id: p.id.clone(),
                    key: p.key.clone(),
                    accounts: p
                        .connected
                        .iter()
                        .map(|&i| self.accounts[i].id.clone())
                        .collect(),
                })
                .collect(),
            org_accounts: self
                .org_accounts
                .iter()
                .map(|&i| self.accounts[i].id.clone())
                .collect(),
        }
    }

    pub fn key_owner(&self, key: &str) -> Option<KeyOwner> {
        self.keys.get(key).copied()
    }

    /// The permissions of a restricted key; `None` for a secret key (it may do anything).
    pub fn key_permissions(&self, key: &str) -> Option<&[String]> {
        self.restricted.get(key).map(Vec::as_slice)
    }

    pub fn is_expired(&self, key: &str) -> bool {
        self.expired.contains(key)
    }

    /// A new key for platform `p`, beside its others (as Stripe's "roll key" makes one
    /// while the old stays valid until it expires): a secret key, or, with
    /// `permissions`, a restricted key holding just those.
    pub fn new_platform_key(&mut self, p: usize, permissions: Option<&[&str]>) -> String {
        self.extra_keys += 1;
        let mut rng = StdRng::seed_from_u64(self.seed ^ self.extra_keys.rotate_left(32));
        let prefix = if permissions.is_some() {
            "rk_test_51"
        } else {
            "sk_test_51"
        };
        let key = format!(
            "{prefix}{}{}",
            &self.platforms[p].id[6..],
            alnum(&mut rng, 84)
        );
        self.keys.insert(key.clone(), KeyOwner::Platform(p));
        if let Some(permissions) = permissions {
            self.restricted.insert(
                key.clone(),
                permissions.iter().map(|p| (*p).to_owned()).collect(),
            );
        }
        key
    }

    /// The key stops working: 401 "Expired API Key provided".
    pub fn expire_key(&mut self, key: &str) {
        if self.keys.contains_key(key) {
            self.expired.insert(key.to_owned());
        }
    }

    pub fn get(&self, id: &str) -> Option<&Account> {
        self.by_id.get(id).map(|&i| &self.accounts[i])
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Account> {
        let idx = *self.by_id.get(id)?;
        self.accounts.get_mut(idx)
    }

    pub fn platform_index(&self, id: &str) -> Option<usize> {
        match self.get(id)?.home {
            Home::Platform(p) => Some(p),
            _ => None,
        }
    }

    /// The index of `id` if it is a live (not revoked) connected account of platform `p`.
    pub fn connected_index(&self, id: &str, p: usize) -> Option<usize> {
        let idx = *self.by_id.get(id)?;
        let a = &self.accounts[idx];
        let connected = matches!(a.home, Home::Connected { platform, .. } if platform == p);
        (connected && !a.revoked).then_some(idx)
    }

    /// Adds `n` generated connected accounts to platform `p`, newer than all its others.
    pub fn add_connected(&mut self, p: usize, n: usize) -> Vec<String> {
        let start = self.platforms[p].connected.len();
        let mut rng = rng_for(self.seed, &format!("{}/{start}", self.platforms[p].id));
        let mut owners = Owners::default();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let clock = self.next_created(p);
            let idx = self.push_connected(&mut rng, p, clock, &mut owners);
            ids.push(self.accounts[idx].id.clone());
        }
        ids
    }

    /// Creates a connected account of platform `p` from API parameters.
    pub fn create_connected(&mut self, p: usize, new: NewAccount) -> usize {
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let id = self.fresh_id(&mut rng);
        let created = self.next_created(p);
        let (country, currency) = new.country.unwrap_or(("US", "usd"));
        let account = Account {
            id,
            created,
            kind: new.kind,
            country,
            currency,
            email: new.email,
            business_name: None,
            metadata: new.metadata,
            onboarded: false,
            empty_balance: true,
            home: Home::Connected {
                platform: p,
                pos: self.platforms[p].connected.len(),
            },
            revoked: false,
            fail_status: None,
            balance_version: 0,
        };
        let idx = self.insert(account);
        self.platforms[p].connected.push(idx);
        idx
    }

    /// One page of platform `p`'s connected accounts, newest first, as Stripe pages
    /// `GET /v1/accounts`. Revoked accounts are no longer listed.
    pub fn list_connected(
        &self,
        p: usize,
        limit: usize,
        cursor: Option<&Cursor>,
        created: &CreatedRange,
    ) -> Result<Page, UnknownCursor> {
        let list = &self.platforms[p].connected;
        let (lo_created, hi_created) = created.bounds();
        // `list` is sorted by `created`, so the filter is a range of positions.
        let lo = list.partition_point(|&i| self.accounts[i].created < lo_created);
        let hi = list.partition_point(|&i| self.accounts[i].created < hi_created);
        let visible = |pos: &usize| !self.accounts[list[*pos]].revoked;
        let (positions, has_more) = match cursor {
            None => take(limit, (lo..hi.max(lo)).rev().filter(visible)),
            Some(Cursor::StartingAfter(id)) => {
                let at = self.cursor_pos(p, id)?;
                take(limit, (lo..hi.min(at).max(lo)).rev().filter(visible))
            }
            Some(Cursor::EndingBefore(id)) => {
                let at = self.cursor_pos(p, id)?;
                let (mut newer, more) = take(limit, (lo.max(at + 1)..hi).filter(visible));
                newer.reverse();
                (newer, more)
            }
        };
        Ok(Page {
            data: positions.into_iter().map(|pos| list[pos]).collect(),
            has_more,
        })
    }

    fn cursor_pos(&self, p: usize, id: &str) -> Result<usize, UnknownCursor> {
        match self.get(id) {
            Some(Account {
                home: Home::Connected { platform, pos },
                revoked: false,
                ..
            }) if *platform == p => Ok(*pos),
            _ => Err(UnknownCursor),
        }
    }

    /// The `created` of the next account of platform `p`: now, but never older than its
    /// newest account, so the list stays sorted.
    fn next_created(&self, p: usize) -> i64 {
        let newest = self.platforms[p]
            .connected
            .last()
            .map_or(i64::MIN, |&i| self.accounts[i].created);
        chrono::Utc::now().timestamp().max(newest)
    }

    fn push_connected(
        &mut self,
        rng: &mut StdRng,
        p: usize,
        created: i64,
        owners: &mut Owners,
    ) -> usize {
        let id = self.fresh_id(rng);
        let owner = owners.next(rng);
        let pos = self.platforms[p].connected.len();
        let home = Home::Connected { platform: p, pos };
        let account = random_account(rng, id, created, home, owner);
        let idx = self.insert(account);
        self.platforms[p].connected.push(idx);
        idx
    }

    fn insert(&mut self, account: Account) -> usize {
        let idx = self.accounts.len();
        self.by_id.insert(account.id.clone(), idx);
        self.accounts.push(account);
        idx
    }

    /// A Stripe-shaped account id (`acct_1` + 15 alphanumerics) not yet in use.
    fn fresh_id(&self, rng: &mut StdRng) -> String {
        loop {
            let id = format!("acct_1{}", alnum(rng, 15));
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Parameters of `POST /v1/accounts` the simulator keeps.
#[derive(Debug)]
pub struct NewAccount {
    pub kind: AccountType,
    /// (country, default currency).
    pub country: Option<(&'static str, &'static str)>,
    pub email: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Countries `POST /v1/accounts` accepts, with their default currency.
const CREATABLE: [(&str, &str); 20] = [
    ("AT", "eur"),
    ("AU", "aud"),
    ("BE", "eur"),
    ("CA", "cad"),
    ("CH", "chf"),
    ("DE", "eur"),
    ("DK", "dkk"),
    ("ES", "eur"),
    ("FI", "eur"),
    ("FR", "eur"),
    ("GB", "gbp"),
    ("IE", "eur"),
    ("IT", "eur"),
    ("JP", "jpy"),
    ("NL", "eur"),
    ("NO", "nok"),
    ("NZ", "nzd"),
    ("SE", "sek"),
    ("SG", "sgd"),
    ("US", "usd"),
];

/// Maps a requested country onto the simulator's set, with its default currency.
pub fn known_country(country: &str) -> Option<(&'static str, &'static str)> {
    CREATABLE
        .iter()
        .copied()
        .find(|(c, _)| c.eq_ignore_ascii_case(country))
}

/// Takes up to `limit` items and says whether any are left.
pub fn take(limit: usize, mut iter: impl Iterator<Item = usize>) -> (Vec<usize>, bool) {
    let items: Vec<usize> = iter.by_ref().take(limit).collect();
    let has_more = iter.next().is_some();
    (items, has_more)
}

/// Hands out owner ids (`metadata.accountid`): most owners hold one account, some two or
/// three, and a few accounts have none.
#[derive(Default)]
struct Owners {
    current: Option<String>,
    held: usize,
}

impl Owners {
    fn next(&mut self, rng: &mut StdRng) -> Option<String> {
        if rng.random_bool(0.05) {
            return None;
        }
        match &self.current {
            Some(owner) if self.held < 3 && rng.random_bool(0.3) => {
                self.held += 1;
                Some(owner.clone())
            }
            _ => {
                let owner = format!("acct_{:016x}", rng.random::<u64>());
                self.current = Some(owner.clone());
                self.held = 1;
                Some(owner)
            }
        }
    }
}

fn random_account(
    rng: &mut StdRng,
    id: String,
    created: i64,
    home: Home,
    owner: Option<String>,
) -> Account {
    let (country, currency) = COUNTRIES[rng.random_range(0..COUNTRIES.len())];
    let kind = match rng.random_range(0..10) {
        0..=5 => AccountType::Express,
        6..=7 => AccountType::Custom,
        _ => AccountType::Standard,
    };
    let n = rng.random_range(0..1_000_000u32);
    let mut metadata = BTreeMap::new();
    if let Some(owner) = owner {
        metadata.insert("accountid".to_string(), owner);
    }
    Account {
        id,
        created,
        kind,
        country,
        currency,
        email: Some(format!("owner{n}@example.com")),
        business_name: Some(format!("Business {n}")),
        metadata,
        onboarded: rng.random_bool(0.8),
        empty_balance: false,
        home,
        revoked: false,
        fail_status: None,
        balance_version: 0,
    }
}

fn alnum(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(per_platform: usize) -> World {
        World::generate(&SimConfig {
            accounts_per_platform: per_platform,
            ..SimConfig::default()
        })
    }

    #[test]
    fn same_seed_same_world() {
        let (a, b) = (world(20), world(20));
        assert_eq!(a.org_key, b.org_key);
        let ids = |w: &World| w.accounts.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
    }

    #[test]
    fn pages_walk_every_account_once() {
        let w = world(57);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = w
                .list_connected(0, 10, cursor.as_ref(), &CreatedRange::default())
                .expect("cursor comes from the previous page");
            seen.extend(page.data.iter().copied());
            match (page.has_more, page.data.last()) {
                (true, Some(&last)) => {
                    cursor = Some(Cursor::StartingAfter(w.accounts[last].id.clone()))
                }
                _ => break,
            }
        }
        let mut expected = w.platforms[0].connected.clone();
        expected.reverse();
        assert_eq!(seen, expected);
    }

    #[test]
    fn created_filter_bounds() {
        let w = world(30);
        let list = &w.platforms[0].connected;
        let t = w.accounts[list[10]].created;
        let range = CreatedRange {
            gte: Some(t),
            ..CreatedRange::default()
        };
        let page = w.list_connected(0, 100, None, &range).expect("no cursor");
        assert!(page.data.iter().all(|&i| w.accounts[i].created >= t));
        let expected = list.iter().filter(|&&i| w.accounts[i].created >= t).count();
        assert_eq!(page.data.len(), expected);
    }
}
