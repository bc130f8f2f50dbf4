//! Logging setup, for binaries and test helpers only (libraries just emit
//! `tracing` events).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr (stdout is for command output), filtered by `RUST_LOG`,
/// else at `default_level` (e.g. `info` for `serve`, `warn` for commands).
/// Does nothing if a subscriber is already installed.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
