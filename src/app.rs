//! The composition root: one place that builds the running service from settings —
//! the pool, Stripe access with the shared budget, the refresher, the HTTP app — and
//! runs it until told to stop. `tally serve`, the demo, the tests and the benchmarks
//! all start tally through it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Settings;
use crate::crypto::MasterKey;
use crate::http::{self, AppState};
use crate::tasks::Tasks;
use crate::tenants::StripeTenants;

pub struct Application {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Application {
    /// Connects (migrating the database), opens Stripe access, binds
    /// `settings.server.bind` (port 0 picks a free one).
    pub async fn build(settings: Settings, master: Arc<MasterKey>) -> anyhow::Result<Application> {
        let pool = crate::db::connect_and_migrate(&settings).await?;
        let stripe = Arc::new(
            StripeTenants::new(&settings.stripe, master)?.with_shared_budget(pool.clone()),
        );
        Self::with_parts(settings, pool, stripe).await
    }

    /// As [`Application::build`], with a pool and Stripe access made by the caller.
    pub async fn with_parts(
        settings: Settings,
        pool: PgPool,
        stripe: Arc<StripeTenants>,
    ) -> anyhow::Result<Application> {
        let bind = settings.server.bind;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let state = AppState::new(pool, Arc::new(settings), stripe, Tasks::new());
        Ok(Application { listener, state })
    }

    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves and refreshes until `shutdown` resolves; then stops accepting, gives
    /// in-flight requests, fetches and syncs `server.shutdown_grace_secs` to finish,
    /// has the refresher give back its leases and mark what it leaves unfinished, and
    /// closes the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application { listener, state } = self;
        let tasks = state.tasks.clone();
        let grace = state.settings.shutdown_grace();
        let pool = state.pool.clone();
        let stripe = state.stripe.clone();
        http::metrics::start(&state.settings.server, &tasks).await?;
        if state.settings.refresh.worker {
            state.refresher.spawn(None);
        }
        spawn_token_use_flusher(&state);
        crate::retention::spawn(state.pool.clone(), &state.settings, &tasks);
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        };
        let server = http::serve(listener, state, signal);
        tokio::pin!(server);
        // Graceful, with a deadline: once the signal came, in-flight requests get
        // the grace period, then the server stops regardless.
        tokio::select! {
            result = &mut server => result.context("serving HTTP")?,
            () = async {
                let _ = stopping_rx.await;
                tasks.cancel.cancel();
                tokio::time::sleep(grace).await;
            } => tracing::warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; stopping anyway"),
        }
        if !tasks.shutdown(grace).await {
            tracing::warn!("background work did not finish within the grace period");
        }
        stripe.finish_reports(grace).await;
        pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How often the last uses of tokens are written.
const TOKEN_USES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes tokens' last uses every few seconds, and once more when stopping.
fn spawn_token_use_flusher(state: &AppState) {
    let (uses, pool, cancel) = (
        state.token_uses.clone(),
        state.pool.clone(),
        state.tasks.cancel.clone(),
    );
    state.tasks.tracker.spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = cancel.cancelled() => true,
                () = tokio::time::sleep(TOKEN_USES_EVERY) => false,
            };
            if let Err(error) = uses.flush(&pool).await {
                tracing::warn!(error = %error, "recording token uses failed; kept for the next try");
            }
            if stopping {
                break;
            }
        }
    });
}
