//! Tracing setup: `RUST_LOG`-style filter, text or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::cli::{Global, LogFormat};

/// Installs the global subscriber once.
pub fn init(global: &Global) {
    let filter = EnvFilter::try_new(&global.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match global.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
