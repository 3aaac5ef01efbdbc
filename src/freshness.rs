//! The one freshness rule (DESIGN §5): when a stored balance may answer a request for
//! data no older than `max_age`, and how that is known. Pure: the store applies the
//! [`Requirement`] this module computes in SQL (`store::freshness`), polls, the
//! refresher and the CLI all ask here, and the answers say per account what
//! [`confirm`] says.
//!
//! The rule in one sentence: an answer to `max_age = m` holds only accounts confirmed
//! within `m` of the moment the request arrived. An account is confirmed when it was
//! fetched, and, for a tenant in `events` mode whose stream refused or lost nothing
//! since that fetch, up to the latest event of the live stream, or up to the first
//! event about the account itself if one arrived since (from then on its stored
//! balance is known to be old, and it waits for a fetch).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a tenant's balances are kept current (`tally tenant update --freshness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FreshnessMode {
    /// Every account is re-read within `refresh.interval_secs`.
    #[default]
    Poll,
    /// Changed accounts are re-read within `refresh.change_delay_ms` of their event;
    /// the rest are vouched for by a live event stream and swept every
    /// `refresh.sweep_interval_secs`.
    Events,
}

impl FreshnessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FreshnessMode::Poll => "poll",
            FreshnessMode::Events => "events",
        }
    }
}

impl std::fmt::Display for FreshnessMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("freshness is `poll` or `events`, not `{0}`")]
pub struct UnknownFreshnessMode(String);

impl FromStr for FreshnessMode {
    type Err = UnknownFreshnessMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "poll" => Ok(FreshnessMode::Poll),
            "events" => Ok(FreshnessMode::Events),
            other => Err(UnknownFreshnessMode(other.to_owned())),
        }
    }
}

/// How an account's freshness is known (`freshnessBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FreshnessBy {
    /// Its balance was read (or a `balance.available` event carried it) at `fetchedAt`.
    Fetch,
    /// Fetched earlier, and the tenant's live event stream says nothing happened to
    /// it between the fetch and `confirmedAt`.
    Events,
}

impl FreshnessBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FreshnessBy::Fetch => "fetch",
            FreshnessBy::Events => "events",
        }
    }
}

/// A tenant's Connect event stream as stored (`event_streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventStream {
    /// Arrival of the latest event stored for the tenant.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Since when the stream refused and lost nothing: only accounts fetched at or
    /// after it can be vouched for.
    pub vouched_since: Option<DateTime<Utc>>,
}

/// What a tenant's freshness depends on besides each account's own fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantFreshness {
    pub mode: FreshnessMode,
    pub stream: EventStream,
    /// `webhooks.max_silence_secs`: a stream quieter than this vouches for nothing.
    pub max_silence: Duration,
}

impl TenantFreshness {
    /// A `poll` tenant: only fetches count.
    pub fn poll() -> TenantFreshness {
        TenantFreshness {
            mode: FreshnessMode::Poll,
            stream: EventStream::default(),
            max_silence: Duration::ZERO,
        }
    }

    /// The stream vouches at `now`: the tenant is in `events` mode and its latest event
    /// is no older than `max_silence`. Returns how far it vouches (the latest event)
    /// and since when (accounts fetched before that cannot be vouched for).
    pub fn live_stream(&self, now: DateTime<Utc>) -> Option<Vouch> {
        if self.mode != FreshnessMode::Events {
            return None;
        }
        let last = self.stream.last_event_at?;
        let since = self.stream.vouched_since?;
        let silence = now.signed_duration_since(last);
        let max = chrono::Duration::from_std(self.max_silence).unwrap_or(chrono::Duration::MAX);
        // An event stamped after `now` (another replica's clock) is as good as now.
        (silence <= max).then_some(Vouch {
            until: last.min(now),
            since,
        })
    }
}

/// A live stream's word: no event was missed between `since` and `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vouch {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// Which stored accounts may answer a request: those fetched at or after
/// `fetched_since`, and, when `vouched_since` is set, those without a pending change
/// fetched at or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub fetched_since: DateTime<Utc>,
    pub vouched_since: Option<DateTime<Utc>>,
}

/// The oldest time still within `max_age` of `asked_at`.
pub fn cutoff(asked_at: DateTime<Utc>, max_age: Duration) -> DateTime<Utc> {
    let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    asked_at
        .checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The rule for a request that arrived at `asked_at` asking for data no older than
/// `max_age`.
pub fn requirement(
    tenant: &TenantFreshness,
    asked_at: DateTime<Utc>,
    max_age: Duration,
) -> Requirement {
    requirement_since(tenant, asked_at, cutoff(asked_at, max_age))
}

/// The rule for data confirmed at or after `cutoff`, judged at `now` (a refresh
/// keeps its cutoff while the stream's state moves on). The stream vouches only when
/// it is live and its word reaches the cutoff: a stream whose latest event is older
/// confirms nothing recent enough.
pub fn requirement_since(
    tenant: &TenantFreshness,
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
) -> Requirement {
    let vouched_since = tenant
        .live_stream(now)
        .filter(|vouch| vouch.until >= cutoff)
        .map(|vouch| vouch.since);
    Requirement {
        fetched_since: cutoff,
        vouched_since,
    }
}

/// One account's stored state, as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    /// When its latest snapshot was taken (`None`: never).
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the first event about it since that fetch arrived (`None`: none; it is
    /// waiting to be fetched again).
    pub changed_at: Option<DateTime<Utc>>,
}

/// How current an account's balance is known to be, at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub confirmed_at: DateTime<Utc>,
    pub by: FreshnessBy,
}

/// How current `account` is known to be at `now`: its fetch, or, when the live
/// stream vouches for it, the stream's latest event. `None`: never fetched.
pub fn confirm(
    tenant: &TenantFreshness,
    account: AccountState,
    now: DateTime<Utc>,
) -> Option<Confirmation> {
    let fetched_at = account.fetched_at?;
    let by_fetch = Confirmation {
        confirmed_at: fetched_at,
        by: FreshnessBy::Fetch,
    };
    let Some(vouch) = tenant.live_stream(now) else {
        return Some(by_fetch);
    };
    // Vouched for until the stream's latest word, or until the account's own change.
    let until = account
        .changed_at
        .map_or(vouch.until, |changed| changed.min(vouch.until));
    if fetched_at >= vouch.since && until > fetched_at {
        Some(Confirmation {
            confirmed_at: until,
            by: FreshnessBy::Events,
        })
    } else {
        Some(by_fetch)
    }
}

impl Requirement {
    /// Only fetches at or after `cutoff` count (the poll rule; a sweep's).
    pub fn fetched_since(cutoff: DateTime<Utc>) -> Requirement {
        Requirement {
            fetched_since: cutoff,
            vouched_since: None,
        }
    }

    /// Accounts fetched before this must be fetched again to meet the requirement, and
    /// so must those changed before the cutoff (the change pass's, `store::changes`).
    pub fn refetch_before(&self) -> DateTime<Utc> {
        self.vouched_since
            .map_or(self.fetched_since, |since| since.min(self.fetched_since))
    }

    /// Whether `account` may answer. Agrees with [`confirm`]: an account meets the
    /// requirement made at `asked_at` exactly when its confirmation at that moment is
    /// no older than the cutoff (the unit tests hold the two to that).
    pub fn met_by(&self, account: AccountState) -> bool {
        let Some(fetched_at) = account.fetched_at else {
            return false;
        };
        fetched_at >= self.fetched_since
            || self.vouched_since.is_some_and(|since| {
                fetched_at >= since
                    && account
                        .changed_at
                        .is_none_or(|changed| changed >= self.fetched_since)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn events(last_event: i64, vouched_since: i64) -> TenantFreshness {
        TenantFreshness {
            mode: FreshnessMode::Events,
            stream: EventStream {
                last_event_at: Some(at(last_event)),
                vouched_since: Some(at(vouched_since)),
            },
            max_silence: Duration::from_secs(300),
        }
    }

    fn fetched(secs: i64) -> AccountState {
        AccountState {
            fetched_at: Some(at(secs)),
            changed_at: None,
        }
    }

    #[test]
    fn poll_mode_counts_only_fetches() {
        let rule = requirement(&TenantFreshness::poll(), at(100), Duration::from_secs(10));
        assert_eq!(rule.fetched_since, at(90));
        assert_eq!(rule.vouched_since, None);
        assert!(rule.met_by(fetched(90)));
        assert!(!rule.met_by(fetched(89)));
        assert!(!rule.met_by(AccountState {
            fetched_at: None,
            changed_at: None
        }));
        let confirmed = confirm(&TenantFreshness::poll(), fetched(50), at(100)).unwrap();
        assert_eq!(confirmed.by, FreshnessBy::Fetch);
        assert_eq!(confirmed.confirmed_at, at(50));
    }

    #[test]
    fn max_age_zero_needs_a_fetch_at_or_after_the_request() {
        let tenant = events(100, 0);
        let rule = requirement(&tenant, at(100), Duration::ZERO);
        // The stream's latest event is at the request: it vouches up to now.
        assert_eq!(rule.vouched_since, Some(at(0)));
        let rule = requirement(&tenant, at(101), Duration::ZERO);
        assert_eq!(
            rule.vouched_since, None,
            "the stream says nothing about 101"
        );
        assert!(!rule.met_by(fetched(100)));
    }

    #[test]
    fn a_live_stream_vouches_for_unchanged_accounts_fetched_since_it_was_whole() {
        let tenant = events(995, 500);
        let rule = requirement(&tenant, at(1000), Duration::from_secs(60));
        assert_eq!(rule.vouched_since, Some(at(500)));
        assert!(rule.met_by(fetched(600)), "unchanged, fetched after 500");
        assert!(
            !rule.met_by(fetched(400)),
            "fetched before the stream was whole"
        );
        assert!(!rule.met_by(AccountState {
            fetched_at: Some(at(600)),
            changed_at: Some(at(700))
        }));
        // A change does not unmake a fetch within max_age.
        assert!(rule.met_by(AccountState {
            fetched_at: Some(at(950)),
            changed_at: Some(at(960))
        }));
        // A change after the cutoff: vouched for until it, which is within max_age.
        let changed_late = AccountState {
            fetched_at: Some(at(600)),
            changed_at: Some(at(990)),
        };
        assert!(rule.met_by(changed_late));
        let confirmed = confirm(&tenant, changed_late, at(1000)).unwrap();
        assert_eq!(
            (confirmed.by, confirmed.confirmed_at),
            (FreshnessBy::Events, at(990))
        );
        let confirmed = confirm(&tenant, fetched(600), at(1000)).unwrap();
        assert_eq!(confirmed.by, FreshnessBy::Events);
        assert_eq!(confirmed.confirmed_at, at(995));
    }

    #[test]
    fn a_silent_stream_or_poll_mode_vouches_for_nothing() {
        let silent = events(600, 0);
        assert_eq!(silent.live_stream(at(901)), None);
        assert!(silent.live_stream(at(900)).is_some());
        let rule = requirement(&silent, at(1000), Duration::from_secs(3600));
        assert_eq!(rule.vouched_since, None);
        assert_eq!(
            confirm(&silent, fetched(650), at(1000)).unwrap().by,
            FreshnessBy::Fetch
        );
        let poll = TenantFreshness {
            mode: FreshnessMode::Poll,
            ..events(1000, 0)
        };
        assert_eq!(poll.live_stream(at(1000)), None);
    }

    #[test]
    fn requirement_and_confirmation_agree() {
        // Every combination of stream, account and max_age on a small grid: an account
        // meets the requirement exactly when its confirmation is within max_age.
        let now = 1000;
        for last_event in [None, Some(400), Some(800), Some(990), Some(1000)] {
            for vouched_since in [0, 500, 900] {
                for mode in [FreshnessMode::Poll, FreshnessMode::Events] {
                    let tenant = TenantFreshness {
                        mode,
                        stream: EventStream {
                            last_event_at: last_event.map(at),
                            vouched_since: Some(at(vouched_since)),
                        },
                        max_silence: Duration::from_secs(300),
                    };
                    for fetched_at in [None, Some(100), Some(600), Some(950), Some(1000)] {
                        for changed_at in [None, Some(50), Some(700), Some(960), Some(999)] {
                            let account = AccountState {
                                fetched_at: fetched_at.map(at),
                                changed_at: changed_at.map(at),
                            };
                            for max_age in [0, 10, 100, 1000] {
                                let rule =
                                    requirement(&tenant, at(now), Duration::from_secs(max_age));
                                let confirmed = confirm(&tenant, account, at(now));
                                let within =
                                    confirmed.is_some_and(|c| c.confirmed_at >= rule.fetched_since);
                                assert_eq!(
                                    rule.met_by(account),
                                    within,
                                    "{tenant:?} {account:?} max_age {max_age}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
