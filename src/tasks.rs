//! The process's lifecycle, for every part of it: one cancellation token and one
//! task tracker that the HTTP server, the refresher, the closer, sync runs, streams and
//! fetches all run on, and the signal that stops them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The process's background work: one cancellation token and one task tracker for
/// the HTTP server, the refresher, sync runs and fetches, so SIGTERM stops them all
/// and waits for them to give back what they hold.
#[derive(Clone, Default)]
pub struct Tasks {
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Asks everything to stop, then waits for it, at most `grace`. True when all
    /// finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
