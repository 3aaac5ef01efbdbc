//! Tracing set-up: pretty for people, JSON for log shippers (DESIGN §2, STYLE).
//! Servers (`serve`, `stripe-sim`) log by `log.level` / `log.format`; one-shot commands
//! speak to people in plain words and show their log only when asked (`--verbose`, or
//! `RUST_LOG`).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stderr so stdout stays for results.
/// `RUST_LOG`, when set, overrides the configured level.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, demo) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    // Colour codes only for a person's terminal, never into a file or pipe.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

/// A one-shot command's log: installed only when asked for, with `--verbose` (at
/// `log.level`) or `RUST_LOG`; otherwise its retries and internals stay quiet and the
/// command says what matters itself.
pub fn init_one_shot(format: LogFormat, level: &str, verbose: bool) {
    if verbose || std::env::var_os("RUST_LOG").is_some() {
        init(format, level);
    }
}

/// Installs the subscriber writing to `path` (appending, no colours): the demo's
/// console is for its story, and the logs stay where an operator can read them.
pub fn init_to_file(level: &str, path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file)),
        )
        .try_init();
    Ok(())
}
