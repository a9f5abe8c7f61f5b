//! Private infrastructure for `opmas dev` and for tests: a `nats-server` with
//! JetStream and a PostgreSQL cluster, each living in a data directory and
//! listening on a free loopback port. Both are stopped when dropped.
//!
//! The binaries come from Debian's `nats-server` and `postgresql` packages;
//! [`find_program`] looks on `PATH` and in `/usr/lib/postgresql/*/bin`.
//! PostgreSQL refuses to run as root, so when we are root the cluster runs as
//! the `postgres` system user (created by the Debian package) via `runuser`.
//!
//! # Layout
//! - [`nats`]: the [`NatsServer`] type.
//! - [`postgres`]: the [`Postgres`] type.
//! - this file: shared helpers ([`free_port`], [`find_program`], [`Error`]).

pub mod nats;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use nats::NatsServer;
pub use postgres::Postgres;

/// What went wrong while starting or stopping private infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program is not installed; the message says which package provides it.
    #[error(
        "`{program}` not found on PATH{extra}: install Debian's `{package}` package (apt-get install {package})"
    )]
    NotInstalled {
        program: String,
        package: &'static str,
        extra: &'static str,
    },
    /// A program ran but failed; its output is included.
    #[error("`{command}` failed: {output}")]
    Failed { command: String, output: String },
    /// The server did not accept connections in time.
    #[error("{what} did not become ready on port {port} within {secs} s (log: {log})")]
    NotReady {
        what: &'static str,
        port: u16,
        secs: u64,
        log: String,
    },
    /// File system or process spawning error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    let port = listener.local_addr().map_err(io("local_addr"))?.port();
    Ok(port)
}

/// Finds `program` on `PATH`, then in `/usr/lib/postgresql/<version>/bin`
/// (newest version first), where Debian installs the PostgreSQL server tools.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(found) = from_path
        .iter()
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .iter()
        .rev()
        .map(|v| v.join("bin").join(program))
        .find(|p| p.is_file())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub(crate) fn tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        })
        .unwrap_or_else(|_| path.display().to_string())
}
