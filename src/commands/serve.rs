//! `tally serve`: migrate, then serve the admin API until SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Settings;
use crate::http::{self, AppState};

pub async fn run(settings: Settings, bind: Option<SocketAddr>) -> anyhow::Result<()> {
    let (pool, stripe) = super::stripe_context(&settings).await?;
    let bind = bind.unwrap_or(settings.server.bind);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    tracing::info!(address = %listener.local_addr()?, "tally is serving");
    let state = AppState::new(pool.clone(), Arc::new(settings), stripe);
    http::serve(listener, state, http::shutdown_signal())
        .await
        .context("serving HTTP")?;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
