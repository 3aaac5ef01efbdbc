//! One process's refresher: a loop per tenant that claims due accounts, fetches
//! them through the tenant's shared budget and stores the snapshots; the schedule
//! of background rounds and account re-syncs; and the shutdown that gives back what
//! the process holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::demand;
use crate::close;
use crate::close::compute::CloseRules;
use crate::config::Settings;
use crate::domain::RefreshTrigger;
use crate::fanout;
use crate::freshness::FreshnessMode;
use crate::store;
use crate::store::refreshes::{ClaimRequest, Refresh, RefreshScope};
use crate::store::sync_runs::Claim;
use crate::store::tenants::Tenant;
use crate::stripe::{Priority, TenantClient};
use crate::sync::{self, SyncOptions};
use crate::tasks::Tasks;
use crate::tenants::StripeTenants;

/// How often a worker proves it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A worker silent this long is not counted as alive.
const ALIVE_WITHIN: Duration = Duration::from_secs(6);
/// A worker silent this long is forgotten (its process was killed).
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// How often the per-tenant gauges are read (a `serve` worker only).
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How often the tenant list is re-read (new tenants start, removed ones stop).
const TENANT_SCAN_EVERY: Duration = Duration::from_secs(2);
/// How often a tenant's row (removed? key rotated? settings changed?) is read again:
/// a newer row rebuilds the tenant's Stripe client, so `tally tenant set-key` and
/// `update` reach this worker within about a second (one primary-key read each).
const TENANT_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often a tenant's sync schedule is looked at again.
const SYNC_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Why a refresh failed when Stripe answered 401 to the tenant's key.
const KEY_REJECTED: &str = "Stripe rejected the tenant's key (401): it was rolled or revoked; \
     give the tenant its current key (tally tenant set-key)";
/// Why a refresh failed when no process could open the tenant's stored key.
const CREDENTIAL_UNUSABLE: &str = "no tally process can open the tenant's stored key (a \
     different TALLY_MASTER_KEY?); give the tenant its key again (tally tenant set-key)";
/// On shutdown, fetches already sent get this long (or half the grace period, if
/// shorter) to land before they are dropped; their leases are given back either way.
const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// A `tally serve` replica: works every tenant.
    Serve,
    /// A CLI run (`tally balances`): works one tenant while it runs.
    Cli,
}

impl WorkerKind {
    fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Serve => "serve",
            WorkerKind::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RefresherOptions {
    /// Background rounds keep every account younger than `interval` (config
    /// `refresh.enabled`); demands are worked on either way.
    pub background: bool,
    pub interval: Duration,
    pub lease: Duration,
    pub tick: Duration,
    /// Re-sync each tenant's accounts this often (`None`: never by itself).
    pub sync_interval: Option<Duration>,
    pub sync: SyncOptions,
    /// How long fetches in flight may finish after cancellation, leaving the rest of
    /// the shutdown grace for giving back leases.
    pub drain: Duration,
    /// A changed account is fetched this long after its first event.
    pub change_delay: Duration,
    /// The background interval of a tenant in `events` mode (the safety-net sweep).
    pub sweep_interval: Duration,
    /// `webhooks.max_silence_secs`, for the freshness rule.
    pub max_silence: Duration,
    /// After each balance fetch, read the account's new balance transactions
    /// (`close.read_ledger`; serving workers only).
    pub read_ledger: bool,
    /// The closer's rules and how often it runs per tenant (serving workers only).
    pub close: CloseRules,
    pub close_every: Duration,
}

impl RefresherOptions {
    pub fn from_settings(settings: &Settings) -> RefresherOptions {
        RefresherOptions {
            background: settings.refresh.enabled,
            interval: Duration::from_secs(settings.refresh.interval_secs),
            lease: Duration::from_secs(settings.refresh.lease_secs),
            tick: Duration::from_millis(settings.refresh.tick_ms),
            sync_interval: (settings.sync.interval_secs > 0)
                .then(|| Duration::from_secs(settings.sync.interval_secs)),
            sync: SyncOptions::from_settings(settings),
            drain: DRAIN_ON_SHUTDOWN.min(settings.shutdown_grace() / 2),
            change_delay: Duration::from_millis(settings.refresh.change_delay_ms),
            sweep_interval: Duration::from_secs(settings.refresh.sweep_interval_secs),
            max_silence: settings.max_silence(),
            read_ledger: settings.close.read_ledger,
            close: CloseRules::from_settings(settings),
            close_every: Duration::from_secs(settings.close.tick_secs),
        }
    }

    /// How often background rounds re-read every account of a tenant in `mode`:
    /// the poll interval, or, when events say what changed, the slower sweep.
    fn background_interval(&self, mode: FreshnessMode) -> Duration {
        match mode {
            FreshnessMode::Poll => self.interval,
            FreshnessMode::Events => self.sweep_interval,
        }
    }
}

/// How long before an account reaches `interval` a background round takes it:
/// rounds start when the oldest account is this close, and take every account that
/// gets this close within the next lead, so a round is a batch, not a trickle.
fn lead(interval: Duration) -> Duration {
    interval / 20
}

/// The process's refresher. Cheap to clone.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    stripe: Arc<StripeTenants>,
    options: RefresherOptions,
    id: Uuid,
    kind: WorkerKind,
    host: String,
    pid: i32,
    /// Rung when this process makes a demand, so its own worker starts at once.
    wake: Notify,
    /// Rung when this worker ends a refresh, so a request in this process waiting on
    /// it answers at once rather than at its next look.
    ended: Notify,
    /// Set with `wake`: the demand may be for a tenant this worker has not seen yet.
    rescan: AtomicBool,
    /// Live workers, this one included, as of the last heartbeat: they queue for one
    /// shared Stripe budget, which bounds how much each may claim (`claim_cap`).
    live_workers: AtomicUsize,
    tasks: Tasks,
}

impl Refresher {
    pub fn new(
        pool: PgPool,
        stripe: Arc<StripeTenants>,
        options: RefresherOptions,
        kind: WorkerKind,
        tasks: Tasks,
    ) -> Refresher {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Refresher {
            inner: Arc::new(Inner {
                pool,
                stripe,
                options,
                id: Uuid::new_v4(),
                kind,
                host,
                pid: i32::try_from(std::process::id()).unwrap_or(0),
                wake: Notify::new(),
                ended: Notify::new(),
                rescan: AtomicBool::new(false),
                live_workers: AtomicUsize::new(1),
                tasks,
            }),
        }
    }

    /// This worker's id (its leases carry it).
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// A demand was just made in this process: look for work now, not at the next tick.
    pub fn wake(&self) {
        self.inner.rescan.store(true, Ordering::Relaxed);
        self.inner.wake.notify_waiters();
    }

    /// Resolves when this process's worker next ends a refresh (of any tenant); made
    /// before a look at the store, it cannot miss one ended during the look.
    pub fn ended(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.ended.notified()
    }

    /// Starts working every tenant (or only `only_tenant`) in the background until
    /// the tasks' cancellation token fires; then gives back leases, marks what it
    /// leaves unfinished, and deregisters.
    pub fn spawn(&self, only_tenant: Option<i64>) {
        let inner = self.inner.clone();
        self.inner.tasks.tracker.spawn(async move {
            inner.run(only_tenant).await;
        });
    }
}

impl Inner {
    async fn run(self: Arc<Self>, only_tenant: Option<i64>) {
        let cancel = self.tasks.cancel.clone();
        let mut loops: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut next_heartbeat = Instant::now();
        let mut next_scan = Instant::now();
        let mut next_gauges = Instant::now();
        loop {
            let now = Instant::now();
            if self.kind == WorkerKind::Serve && now >= next_gauges {
                if let Err(error) = super::gauges::update(&self.pool, &self.options).await {
                    tracing::warn!(error = %error, "reading the refresher gauges failed");
                }
                next_gauges = now + GAUGES_EVERY;
            }
            if now >= next_heartbeat {
                if let Err(error) = store::refreshes::worker_heartbeat(
                    &self.pool,
                    self.id,
                    self.kind.as_str(),
                    &self.host,
                    self.pid,
                    FORGET_AFTER.as_secs_f64(),
                )
                .await
                {
                    tracing::warn!(error = %error, "refresher heartbeat failed");
                }
                // A live worker's claims never expire under it: a claim that waits its
                // turn in the shared budget longer than the lease would otherwise be
                // taken over, and fetched twice. A killed worker stops renewing.
                if let Err(error) = store::refreshes::renew_worker_leases(
                    &self.pool,
                    self.id,
                    self.options.lease.as_secs_f64(),
                )
                .await
                {
                    tracing::warn!(error = %error, "renewing the refresher's leases failed");
                }
                if let Ok(others) = store::refreshes::other_live_workers(
                    &self.pool,
                    self.id,
                    ALIVE_WITHIN.as_secs_f64(),
                )
                .await
                {
                    let live = usize::try_from(others).unwrap_or(0).saturating_add(1);
                    self.live_workers.store(live, Ordering::Relaxed);
                }
                next_heartbeat = now + HEARTBEAT_EVERY;
            }
            if now >= next_scan || self.rescan.swap(false, Ordering::Relaxed) {
                loops.retain(|_, handle| !handle.is_finished());
                match self.tenant_ids(only_tenant).await {
                    Ok(ids) => {
                        for id in ids {
                            loops.entry(id).or_insert_with(|| {
                                let inner = self.clone();
                                self.tasks.tracker.spawn(async move {
                                    inner.tenant_loop(id).await;
                                })
                            });
                        }
                    }
                    Err(error) => tracing::warn!(error = %error, "refresher cannot list tenants"),
                }
                next_scan = now + TENANT_SCAN_EVERY;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.options.tick.min(HEARTBEAT_EVERY)) => {}
            }
        }
        for (_, handle) in loops {
            let _ = handle.await;
        }
        self.give_back().await;
    }

    async fn tenant_ids(&self, only_tenant: Option<i64>) -> Result<Vec<i64>, sqlx::Error> {
        Ok(store::tenants::ids(&self.pool)
            .await?
            .into_iter()
            .filter(|id| only_tenant.is_none_or(|only| only == *id))
            .collect())
    }

    /// Stopping: leases back, unfinished refreshes marked interrupted when no other
    /// worker is left to finish them, this worker forgotten.
    async fn give_back(&self) {
        match store::refreshes::release_worker_leases(&self.pool, self.id).await {
            Ok(n) if n > 0 => tracing::info!(leases = n, "refresher gave back its leases"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "giving back leases failed; they expire"),
        }
        // Forgotten before counting the others: of two workers stopping together,
        // the one counting last sees nobody and marks what is left.
        let _ = store::refreshes::deregister_worker(&self.pool, self.id).await;
        let others =
            store::refreshes::other_live_workers(&self.pool, self.id, ALIVE_WITHIN.as_secs_f64())
                .await;
        if let Ok(0) = others {
            if let Ok(n) = store::refreshes::interrupt_running(
                &self.pool,
                "interrupted: the last worker stopped before it finished",
            )
            .await
            {
                if n > 0 {
                    tracing::info!(refreshes = n, "marked unfinished refreshes interrupted");
                }
            }
        }
    }

    /// Works one tenant until the process stops or the tenant is removed.
    async fn tenant_loop(self: Arc<Self>, tenant_id: i64) {
        let cancel = self.tasks.cancel.clone();
        let mut state = TenantState::default();
        // Each fetch runs as its own task: a fetch holding a database transaction must
        // make progress while this loop waits for a connection of its own.
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut last_topup = Instant::now() - self.options.tick;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            // Listening before the round: a demand made while the round claims (the
            // first request of a fan-out, usually) wakes the wait below instead of
            // being missed until the next tick.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let Some((tenant, client)) = (match self.tenant_and_client(tenant_id, &mut state).await
            {
                Ok(found) => found,
                Err(()) => {
                    // This process cannot open the credential: skip the tenant, look again later.
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(TENANT_RELOAD_EVERY) => continue,
                    }
                }
            }) else {
                break; // the tenant is gone
            };
            let cap = self.claim_cap(&client);
            // Topped up while a quarter of the cap is still free, not half: the fetches
            // in flight are mostly requests on the wire (rate × latency of them), and
            // only the rest wait in the shared budget. Once none waits there, its next
            // slot falls behind and the time until the next claim is lost (at half, a
            // fan-out at 95/s with 100 ms answers lost 2.5 % of its time that way).
            let should_top_up =
                inflight.len() <= cap * 3 / 4 || last_topup.elapsed() >= self.options.tick;
            if should_top_up {
                last_topup = Instant::now();
                if let Err(error) = self
                    .top_up(&tenant, &client, &mut state, &mut inflight, cap)
                    .await
                {
                    tracing::warn!(tenant = %tenant.slug, error = %error, "refresher round failed");
                }
                self.maybe_close(&tenant, &mut state, &mut inflight);
            }
            if inflight.is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = woken => {}
                    () = tokio::time::sleep(self.options.tick) => {}
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    Some(_) = inflight.join_next() => {}
                    () = woken => {}
                    () = tokio::time::sleep(self.options.tick) => {}
                }
            }
        }
        // Fetches already sent get a moment to land; the rest are dropped and their
        // leases given back by `give_back`.
        let _ = tokio::time::timeout(self.options.drain, async {
            while inflight.join_next().await.is_some() {}
        })
        .await;
        inflight.shutdown().await;
    }

    /// The tenant row and its client, reloaded every few seconds. `Ok(None)`: the
    /// tenant is gone. `Err`: this process cannot use its credential.
    async fn tenant_and_client(
        &self,
        tenant_id: i64,
        state: &mut TenantState,
    ) -> Result<Option<(Tenant, TenantClient)>, ()> {
        let stale = state
            .loaded_at
            .is_none_or(|at| at.elapsed() >= TENANT_RELOAD_EVERY);
        if stale {
            match store::tenants::find_by_id(&self.pool, tenant_id).await {
                // A removed tenant is skipped like a deleted one.
                Ok(Some(tenant)) if tenant.disabled_at.is_none() => state.tenant = Some(tenant),
                Ok(_) => return Ok(None),
                Err(error) => {
                    tracing::warn!(tenant_id, error = %error, "refresher cannot read the tenant");
                    if state.tenant.is_none() {
                        return Err(());
                    }
                }
            }
            state.loaded_at = Some(Instant::now());
        }
        let Some(tenant) = state.tenant.clone() else {
            return Ok(None);
        };
        match self.stripe.client_for(&tenant) {
            Ok(client) => Ok(Some((tenant, client))),
            Err(error) => {
                // This process cannot open the key (another replica may): it skips
                // the tenant and says so once; requests answer the reason themselves.
                if !state.credential_warned {
                    tracing::error!(tenant = %tenant.slug, error = %error, "the refresher cannot use this tenant's credential; skipping it");
                    state.credential_warned = true;
                }
                // When no replica has tried any of its accounts for a whole lease, none
                // can: its refreshes fail, so nobody waits on them for ever.
                match store::refreshes::fail_running(
                    &self.pool,
                    tenant.id,
                    CREDENTIAL_UNUSABLE,
                    Some(self.options.lease.as_secs_f64()),
                )
                .await
                {
                    Ok(0) => {}
                    Ok(ended) => tracing::warn!(tenant = %tenant.slug, ended,
                        "balance refreshes failed: no replica can use the tenant's credential"),
                    Err(error) => tracing::warn!(tenant = %tenant.slug, error = %error,
                        "could not end the tenant's stalled refreshes"),
                }
                Err(())
            }
        }
    }

    /// How many of a tenant's accounts this worker may hold at once: the in-flight
    /// cap, but never more than the shared budget can serve within half a lease. A
    /// claimed account waits its turn in the budget behind every worker's claims; if
    /// that wait outlasted the lease, another worker would take the account over and
    /// both would fetch it.
    fn claim_cap(&self, client: &TenantClient) -> usize {
        let live = self.live_workers.load(Ordering::Relaxed).max(1) as f64;
        // A claimed account costs one balance request, plus one ledger read when the
        // close reads transactions; each endpoint has its own limit below the tenant's.
        let per_account = if self.reads_ledger() { 2 } else { 1 };
        let accounts_per_sec = (client.rate() / per_account)
            .min(self.stripe.endpoint_rate())
            .max(1);
        let servable = f64::from(accounts_per_sec) * self.options.lease.as_secs_f64() / 2.0 / live;
        lease_bounded_cap(self.stripe.max_in_flight(), servable)
    }

    /// One round for a tenant: schedule background work and re-syncs, then claim
    /// accounts up to the free in-flight slots — for the demands a person or a poll
    /// waits on, then changed accounts, then background rounds — and close demands
    /// that nothing is left to do for.
    async fn top_up(
        self: &Arc<Self>,
        tenant: &Tenant,
        client: &TenantClient,
        state: &mut TenantState,
        inflight: &mut JoinSet<()>,
        cap: usize,
    ) -> Result<(), sqlx::Error> {
        let mut demands = store::refreshes::running(&self.pool, tenant.id).await?;
        if self.options.background && self.kind == WorkerKind::Serve {
            if let Some(round) = self.schedule_round(tenant, &demands).await? {
                demands.push(round);
            }
        }
        if self.kind == WorkerKind::Serve {
            self.maybe_sync(tenant, client, state).await;
        }
        // Whom the free slots go to, in order: the demands a person or a poll waits on,
        // then the accounts events named (what changed), then background rounds.
        let (asked, background): (Vec<Refresh>, Vec<Refresh>) = demands
            .into_iter()
            .partition(|d| d.trigger != RefreshTrigger::Schedule);
        self.work_demands(tenant, client, &asked, inflight, cap)
            .await?;
        self.work_changes(tenant, client, inflight, cap).await?;
        self.work_demands(tenant, client, &background, inflight, cap)
            .await
    }

    /// Claims changed accounts whose first event is `refresh.change_delay_ms` old, up
    /// to the free slots, and fetches them.
    async fn work_changes(
        self: &Arc<Self>,
        tenant: &Tenant,
        client: &TenantClient,
        inflight: &mut JoinSet<()>,
        cap: usize,
    ) -> Result<(), sqlx::Error> {
        let free = cap.saturating_sub(inflight.len());
        if free == 0 {
            return Ok(());
        }
        let due = demand::cutoff(self.options.change_delay);
        let changed = store::changes::claim_changed(
            &self.pool,
            tenant.id,
            due,
            i64::try_from(free).unwrap_or(i64::MAX),
            self.id,
            self.options.lease.as_secs_f64(),
        )
        .await?;
        // Ahead of background work in the budget: these are what changed.
        let client = client.with_priority(Priority::Interactive);
        for change in changed {
            inflight.spawn(self.fetch(
                tenant.clone(),
                client.clone(),
                change.account,
                Some(change.first_event_at),
            ));
        }
        Ok(())
    }

    /// Claims due accounts of each demand, up to the free slots, and fetches them;
    /// closes a demand nothing is left to do for.
    async fn work_demands(
        self: &Arc<Self>,
        tenant: &Tenant,
        client: &TenantClient,
        demands: &[Refresh],
        inflight: &mut JoinSet<()>,
        cap: usize,
    ) -> Result<(), sqlx::Error> {
        for demand in demands {
            let free = cap.saturating_sub(inflight.len());
            let claimed = if free == 0 {
                None
            } else {
                Some(self.claim(tenant, demand, free).await?)
            };
            match claimed {
                Some(claimed) if !claimed.is_empty() => {
                    let priority = if demand.trigger == RefreshTrigger::Schedule {
                        Priority::Background
                    } else {
                        Priority::Interactive
                    };
                    let client = client.with_priority(priority);
                    for account in claimed {
                        inflight.spawn(self.fetch(tenant.clone(), client.clone(), account, None));
                    }
                }
                Some(_) => self.close_if_done(tenant, demand).await?,
                None => {}
            }
        }
        Ok(())
    }

    async fn claim(
        &self,
        tenant: &Tenant,
        demand: &Refresh,
        limit: usize,
    ) -> Result<Vec<store::refreshes::Claimed>, sqlx::Error> {
        // Accounts a live stream vouches for are not fetched for a poll; the changed
        // ones among them are the change pass's.
        let requirement =
            demand::refresh_requirement(&self.pool, demand, self.options.max_silence).await?;
        let include_never_fetched = match demand.scope {
            RefreshScope::Tenant => {
                let freshness = store::snapshots::tenant_freshness(&self.pool, tenant.id).await?;
                freshness.ok + freshness.failed < freshness.listed
            }
            _ => true,
        };
        store::refreshes::claim_due(
            &self.pool,
            &ClaimRequest {
                tenant_id: tenant.id,
                scope: &demand.scope,
                cutoff: requirement.refetch_before(),
                include_never_fetched,
                limit: i64::try_from(limit).unwrap_or(i64::MAX),
                worker: self.id,
                lease_secs: self.options.lease.as_secs_f64(),
            },
        )
        .await
    }

    fn fetch(
        self: &Arc<Self>,
        tenant: Tenant,
        client: TenantClient,
        account: store::refreshes::Claimed,
        changed_since: Option<DateTime<Utc>>,
    ) -> BoxFuture<'static, ()> {
        let inner = self.clone();
        async move {
            let stored = fanout::fetch_and_record(
                &inner.pool,
                &client,
                &tenant,
                &account.stripeid,
                account.platform_id.as_ref(),
                Some(inner.id),
            )
            .await;
            if let Ok(fetched) = &stored {
                if fetched.balance && inner.reads_ledger() {
                    inner.read_ledger(&tenant, &client, &account, fetched.stripe_at).await;
                }
                if fetched.key_rejected {
                    inner.fail_refreshes(&tenant, KEY_REJECTED).await;
                }
            }
            if let (Ok(_), Some(first_event_at)) = (&stored, changed_since) {
                let latency = (Utc::now() - first_event_at).num_milliseconds().max(0) as f64;
                metrics::histogram!("tally_event_to_fetch_seconds").record(latency / 1000.0);
                metrics::counter!("tally_changed_account_fetches_total", "tenant" => tenant.slug.clone())
                    .increment(1);
            }
            if let Err(error) = stored {
                // Counted as not tried: the lease goes back so the next round retries.
                tracing::error!(tenant = %tenant.slug, stripeid = %account.stripeid, error = %error,
                    "storing a balance snapshot failed");
                let _ = store::refreshes::release_lease(
                    &inner.pool,
                    tenant.id,
                    &account.stripeid,
                    inner.id,
                )
                .await;
            }
        }
        .boxed()
    }

    /// Ends the tenant's running refreshes as failed: they can no longer finish, and
    /// a client waiting on one stops at its `error`.
    async fn fail_refreshes(&self, tenant: &Tenant, reason: &str) {
        match store::refreshes::fail_running(&self.pool, tenant.id, reason, None).await {
            Ok(0) => {}
            Ok(ended) => {
                tracing::warn!(tenant = %tenant.slug, ended, reason, "balance refreshes failed")
            }
            Err(error) => tracing::warn!(tenant = %tenant.slug, error = %error,
                "could not end the tenant's refreshes as failed"),
        }
    }

    fn reads_ledger(&self) -> bool {
        self.options.read_ledger && self.kind == WorkerKind::Serve
    }

    /// Reads the account's new balance transactions after its balance (for the
    /// daily close). A failure is logged; the next fetch reads from where this stopped.
    async fn read_ledger(
        &self,
        tenant: &Tenant,
        client: &TenantClient,
        account: &store::refreshes::Claimed,
        stripe_at: Option<DateTime<Utc>>,
    ) {
        match close::ingest::read_new(
            &self.pool,
            client,
            tenant,
            account,
            stripe_at,
            self.options.close.settlement_days,
        )
        .await
        {
            Ok(read) => {
                metrics::counter!("tally_ledger_requests_total", "tenant" => tenant.slug.clone())
                    .increment(u64::from(read.requests));
                metrics::counter!("tally_ledger_transactions_total", "tenant" => tenant.slug.clone())
                    .increment(read.stored);
            }
            Err(error) => {
                tracing::warn!(tenant = %tenant.slug, stripeid = %account.stripeid, error = %error,
                    "reading balance transactions failed");
            }
        }
    }

    /// Runs the closer for the tenant unless its last run is still going.
    fn maybe_close(
        self: &Arc<Self>,
        tenant: &Tenant,
        state: &mut TenantState,
        inflight: &mut JoinSet<()>,
    ) {
        if self.kind != WorkerKind::Serve
            || state.closing.load(Ordering::Acquire)
            || state
                .closed_at
                .is_some_and(|at| at.elapsed() < self.options.close_every)
        {
            return;
        }
        state.closed_at = Some(Instant::now());
        state.closing.store(true, Ordering::Release);
        let (inner, tenant, running) = (self.clone(), tenant.clone(), state.closing.clone());
        inflight.spawn(async move {
            match close::compute::bring_up_to_date(&inner.pool, &tenant, inner.options.close).await {
                Ok(pass) if !pass.computed.is_empty() => tracing::info!(tenant = %tenant.slug,
                    computed = pass.computed.len(), closed = ?pass.closed, reopened = ?pass.reopened,
                    "daily close brought up to date"),
                Ok(_) => {}
                Err(error) => tracing::warn!(tenant = %tenant.slug, error = %error, "the daily close failed"),
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Ends a demand whose every listed account was tried since its cutoff.
    async fn close_if_done(&self, tenant: &Tenant, demand: &Refresh) -> Result<(), sqlx::Error> {
        let requirement =
            demand::refresh_requirement(&self.pool, demand, self.options.max_silence).await?;
        let progress =
            store::refreshes::progress(&self.pool, tenant.id, &demand.scope, &requirement).await?;
        if progress.pending() == 0
            && store::refreshes::succeed(&self.pool, demand.id, &progress).await?
        {
            tracing::info!(tenant = %tenant.slug, refresh = %demand.id, trigger = %demand.trigger,
                tried = progress.tried(), failed = progress.failed, "balance refresh finished");
            self.ended.notify_waiters();
        }
        Ok(())
    }

    /// Starts a background round when the tenant's oldest account is within the lead
    /// of the interval and nothing covers the whole tenant already. The round's cutoff
    /// reaches one lead further, so it takes the accounts about to be due too.
    async fn schedule_round(
        &self,
        tenant: &Tenant,
        demands: &[Refresh],
    ) -> Result<Option<Refresh>, sqlx::Error> {
        if demands.iter().any(|d| d.scope == RefreshScope::Tenant) {
            return Ok(None);
        }
        let interval = self.options.background_interval(tenant.freshness);
        let lead = lead(interval);
        let due = demand::cutoff(interval.saturating_sub(lead));
        let freshness = store::snapshots::tenant_freshness(&self.pool, tenant.id).await?;
        if freshness.listed == 0 {
            return Ok(None);
        }
        let all_tried = freshness.ok + freshness.failed >= freshness.listed;
        if all_tried && freshness.oldest.is_none_or(|oldest| oldest >= due) {
            return Ok(None);
        }
        let cutoff = demand::cutoff(interval.saturating_sub(lead * 2));
        // `None`: the tenant was removed since this worker read it.
        let round = store::refreshes::start_or_join(
            &self.pool,
            tenant.id,
            &RefreshScope::Tenant,
            cutoff,
            RefreshTrigger::Schedule,
            freshness.listed,
        )
        .await?;
        Ok(round.map(|(round, _)| round))
    }

    /// Re-syncs the tenant's accounts when its last sync started longer ago than
    /// `sync.interval_secs`. One sync per tenant runs across all replicas (the
    /// sync-run claim); it is interrupted, not abandoned, on shutdown.
    async fn maybe_sync(&self, tenant: &Tenant, client: &TenantClient, state: &mut TenantState) {
        let Some(every) = self.options.sync_interval else {
            return;
        };
        if state
            .sync_checked_at
            .is_some_and(|at| at.elapsed() < SYNC_CHECK_EVERY)
        {
            return;
        }
        state.sync_checked_at = Some(Instant::now());
        let last = match store::sync_runs::last_started(&self.pool, tenant.id).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(tenant = %tenant.slug, error = %error, "cannot read the sync schedule");
                return;
            }
        };
        let due = demand::cutoff(every);
        if last.is_some_and(|at| at >= due) {
            return;
        }
        let claim = match sync::claim(&self.pool, tenant.id, &self.options.sync).await {
            Ok(Claim::Started(run)) => run,
            Ok(Claim::Running(_)) => return,
            Err(error) => {
                tracing::warn!(tenant = %tenant.slug, error = %error, "cannot start a scheduled sync");
                return;
            }
        };
        tracing::info!(tenant = %tenant.slug, run = %claim.id, "scheduled account sync started");
        sync::spawn_claimed(
            self.pool.clone(),
            client.with_priority(Priority::Background),
            tenant.clone(),
            claim,
            self.options.sync.clone(),
            self.tasks.clone(),
        );
    }
}

#[derive(Default)]
struct TenantState {
    tenant: Option<Tenant>,
    loaded_at: Option<Instant>,
    sync_checked_at: Option<Instant>,
    credential_warned: bool,
    /// The closer's last start for this tenant, and whether it is still running.
    closed_at: Option<Instant>,
    closing: Arc<AtomicBool>,
}

/// `in_flight` capped at `servable` (requests the budget serves to one worker within
/// half a lease), never below one.
fn lease_bounded_cap(in_flight: usize, servable: f64) -> usize {
    let servable = if servable.is_finite() {
        servable.floor().max(1.0) as usize
    } else {
        1
    };
    in_flight.min(servable).max(1)
}

#[cfg(test)]
mod cap_tests {
    use super::lease_bounded_cap;

    #[test]
    fn the_cap_keeps_a_claim_servable_within_half_a_lease() {
        // Defaults: 20/s, a 60 s lease, three replicas: the in-flight cap rules.
        assert_eq!(lease_bounded_cap(16, 20.0 * 60.0 / 2.0 / 3.0), 16);
        // 15/s, a 3 s lease, three replicas: at most 7 each, 21 queued = 1.4 s.
        assert_eq!(lease_bounded_cap(16, 15.0 * 3.0 / 2.0 / 3.0), 7);
        // Never nothing at all.
        assert_eq!(lease_bounded_cap(16, 0.2), 1);
        assert_eq!(lease_bounded_cap(16, f64::NAN), 1);
    }
}
