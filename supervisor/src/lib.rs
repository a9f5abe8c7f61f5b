//! The per-node supervisor: keeps the processes of the agents placed on its
//! node in their desired state, and reports every observed fact back as a
//! command to the `Agent` aggregate (never by writing state itself).
//!
//! It is a reconciler. On every event of an agent, on its own start and
//! periodically, the agent's worker loads the agent's state, compares desired
//! and observed state, and acts: spawn, signal, adopt, or report. Acting twice
//! is harmless: facts are idempotent in the aggregate, and a fact that
//! contradicts the state is refused (`StaleFact`) and ignored.
//!
//! # Layout
//! - [`service`]: [`Supervisor`], the durable consumer and the dispatch to workers.
//! - `worker`: one task per agent, owning its process; the reconcile steps.
//! - `process`: a running process (spawned or adopted) and its exit.
//! - `spawn`: building and starting the process (the one `unsafe` module).
//! - [`control`]: control requests to agents (reload before SIGHUP).
//! - [`heartbeat`]: heartbeat deadlines for all agents in one timer queue.
//! - [`logs`]: agents' output files, shipped to `OPMAS_LOGS`, rotated.
//! - [`metrics`]: resource sampling to `OPMAS_METRICS`, sustained limit breaches.
//! - [`signal`]: process-group signals and pidfd waits.
//! - [`identity`]: boot id + pid + start time from `/proc`.
//! - [`config`]: the supervisor's [`Config`].

pub mod cgroup;
pub mod config;
pub mod control;
pub mod heartbeat;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod probe;
mod process;
pub mod service;
pub mod signal;
mod spawn;
mod worker;

pub use config::Config;
pub use logs::LogSettings;
pub use metrics::MetricsSettings;
pub use process::Exit;
pub use service::{Supervisor, limit_malloc_arenas};
pub use spawn::SpawnError;

/// Errors of the supervisor service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS or JetStream failed: the service retries.
    #[error("nats: {0}")]
    Nats(String),
    /// The event store or stream setup failed: the service retries.
    #[error(transparent)]
    Store(#[from] opmas_store::Error),
    /// Something about this host prevents supervision (e.g. no /proc).
    #[error("host: {0}")]
    Host(String),
}

impl Error {
    pub(crate) fn nats(err: impl std::fmt::Display) -> Self {
        Self::Nats(err.to_string())
    }
}
