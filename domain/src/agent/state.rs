//! The [`Agent`] state and the small enums it is made of.
//!
//! Everything is `pub` so projections and the supervisor can read an agent;
//! only [`Agent::apply`](cqrs_es::Aggregate::apply) changes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backoff::RestartWindow;
use crate::id::AgentId;
use crate::spec::AgentSpec;

labelled_enum! {
    /// What the operator wants.
    #[derive(Default)]
    pub enum DesiredState {
        Running => "running",
        #[default]
        Stopped => "stopped",
    }
}

labelled_enum! {
    /// Where the process is in its life; see the table in [`crate::agent`].
    #[derive(Default)]
    pub enum ProcessStatus {
        /// Registered, never started.
        #[default]
        Registered => "registered",
        /// Start requested; waiting for the supervisor to report a process.
        Starting => "starting",
        Running => "running",
        /// Running but health is warning or critical.
        Degraded => "degraded",
        /// Exited; the supervisor restarts it after the decided delay.
        Backoff => "backoff",
        /// Asked to stop (or to restart); waiting for the process to go.
        Stopping => "stopping",
        Stopped => "stopped",
        /// Restarted too often; left alone (until a cooldown retry or Start).
        Failed => "failed",
    }
}

labelled_enum! {
    /// Health as last reported by the supervisor.
    #[derive(Default)]
    pub enum Health {
        Healthy => "healthy",
        Warning => "warning",
        Critical => "critical",
        #[default]
        Unknown => "unknown",
    }
}

labelled_enum! {
    /// Progress of the last recovery.
    #[derive(Default)]
    pub enum RecoveryStatus {
        #[default]
        None => "none",
        InProgress => "in_progress",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

labelled_enum! {
    /// Severity of a recorded error.
    pub enum Severity {
        Info => "info",
        Warning => "warning",
        Error => "error",
        Critical => "critical",
    }
}

impl ProcessStatus {
    /// A process exists (or is being spawned) in this status.
    pub const fn has_process(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Degraded | Self::Stopping
        )
    }
}

/// Identifies one OS process across pid reuse: the pid alone is not enough.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// `/proc/sys/kernel/random/boot_id` of the node.
    pub boot_id: String,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time_ticks: u64,
}

/// The event-sourced state of one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    pub id: Option<AgentId>,
    pub registered: bool,
    /// Deregistered agents are gone: every command is refused.
    pub deregistered: bool,
    pub spec: Option<AgentSpec>,
    /// 1 at registration, +1 per package update.
    pub spec_version: u32,
    /// 1 at registration, +1 per config update or rollback.
    pub config_version: u32,
    /// Config history; `configs[v - 1]` is version `v`.
    pub configs: Vec<serde_json::Value>,
    /// The config the package's layers (schema defaults, config files,
    /// `OPMAS_AGENT_*` variables) gave when discovery last applied them:
    /// set at registration from a package (`spec.package_dir`) and by a
    /// `ConfigUpdated` carrying `package_config`. `None`: not from a package.
    /// What the current config differs from it in was changed at runtime.
    pub package_config: Option<serde_json::Value>,
    pub desired: DesiredState,
    pub status: ProcessStatus,
    pub health: Health,
    pub recovery: RecoveryStatus,
    /// Recovery attempts since the last successful one.
    pub recovery_attempts: u32,
    /// Strategy of the recovery in progress (None when there is none).
    #[serde(default)]
    pub recovery_strategy: Option<crate::spec::RecoveryStrategy>,
    /// Node of the current (or last) process.
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub process: Option<ProcessIdentity>,
    /// When the current process started.
    pub started_at: Option<DateTime<Utc>>,
    /// Processes started after the first one since the last Start; never decreases.
    pub restart_count: u64,
    pub restart_window: RestartWindow,
    pub heartbeat_lost: bool,
    pub last_error: Option<String>,
    /// A process has run since the last `StartRequested`, so the next
    /// process start is a restart.
    pub has_run: bool,
}

impl Agent {
    /// The current config (the last entry of the history).
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.configs.last()
    }
}
