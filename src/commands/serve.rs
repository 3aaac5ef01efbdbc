//! `tally serve`: migrate, then serve the admin API and run the refresher until
//! SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app::Application;
use crate::config::Settings;
use crate::crypto::MasterKey;

pub async fn run(mut settings: Settings, bind: Option<SocketAddr>) -> anyhow::Result<()> {
    let master = Arc::new(MasterKey::from_env()?);
    if let Some(bind) = bind {
        settings.server.bind = bind;
    }
    let app = Application::build(settings, master).await?;
    tracing::info!(address = %app.address(), "tally is serving");
    app.run_until_stopped(crate::tasks::shutdown_signal()).await
}
