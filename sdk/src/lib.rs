//! The OPMAS agent SDK: what a Rust agent needs to be a good citizen under
//! the OPMAS supervisor.
//!
//! - reads the environment the supervisor sets ([`Settings`]);
//! - connects to NATS and sends a [`Heartbeat`]
//!   every `HEARTBEAT_INTERVAL` on the subject the supervisor watches;
//! - answers control requests (`ping`, `reload`, `stop`, `restart`) on
//!   `opmas.control.<agent_id>`;
//! - holds the agent's configuration and applies a new one on `reload`
//!   (through the callback given to [`Agent::on_reload`]), without a restart;
//! - stops gracefully on a `stop` request, `SIGTERM` or `SIGINT`;
//! - publishes custom metrics ([`Handle::metric`]) and writes structured log
//!   lines ([`Handle::log`]) as JSON on stdout, which the supervisor ships to
//!   `OPMAS_LOGS` with their level.
//!
//! Agents that do not use the SDK still run under OPMAS: they are watched by
//! process liveness (set `heartbeat.enabled = false`), see `docs/sdk.md`.
//!
//! # Example
//!
//! ```no_run
//! use opmas_sdk::{Agent, Level};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), opmas_sdk::Error> {
//!     let agent = Agent::from_env().await?.on_reload(|config| {
//!         // Validate the new configuration; an `Err` refuses it.
//!         match config.get("every_secs").map(|v| v.as_u64()) {
//!             Some(None) => Err("every_secs must be a whole number".into()),
//!             _ => Ok(()),
//!         }
//!     });
//!     let outcome = agent
//!         .run(|handle| async move {
//!             let mut done = 0_u64;
//!             while !handle.is_stopped() {
//!                 let every = handle.config()["every_secs"].as_u64().unwrap_or(10);
//!                 done += 1;
//!                 handle.log(Level::Info, "did some work", serde_json::json!({"done": done}));
//!                 handle.metric("work_done", done as f64, &[]).await?;
//!                 tokio::select! {
//!                     () = handle.stopped() => {}
//!                     () = tokio::time::sleep(std::time::Duration::from_secs(every)) => {}
//!                 }
//!             }
//!             Ok::<(), opmas_sdk::Error>(())
//!         })
//!         .await?;
//!     std::process::exit(outcome.exit_code());
//! }
//! ```
//!
//! # Layout
//! - [`settings`]: [`Settings`], read from the environment.
//! - `agent`: [`Agent`] (connect, run) and its loop: heartbeats, control, signals.
//! - `handle`: [`Handle`], the cheap clone the agent's work uses.

#![warn(missing_docs)]

mod agent;
mod handle;
pub mod nats;
pub mod settings;

pub use agent::{Agent, Outcome};
pub use handle::{Handle, Metric};
pub use opmas_domain::control::{ControlAction, ControlReply, ControlRequest};
pub use opmas_domain::telemetry::{Heartbeat, LogLevel as Level};
pub use settings::Settings;

/// What can go wrong in an agent run by the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A variable the supervisor sets is missing or malformed: fix the
    /// environment (or the agent's spec).
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration is not a JSON object, or its file cannot be read.
    #[error("configuration: {0}")]
    Config(String),
    /// NATS is unreachable or refused a message: retry later.
    #[error("nats: {0}")]
    Nats(String),
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The agent's own work returned an error.
    #[error("agent work failed: {0}")]
    Work(String),
}

impl Error {
    fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }
}
