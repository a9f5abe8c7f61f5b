//! [`AgentCommand`]: what operators ask for and what supervisors observe.
//!
//! Operator commands express intent and may be refused. Supervisor commands
//! (`Report*`, `RecordError`, `CompleteRecovery`) report facts; a fact that
//! contradicts the state (an exit for a pid that is not the current one) is
//! refused as [`AgentError::StaleFact`](super::AgentError::StaleFact).
//! Times and random samples come in here: the aggregate reads no clock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::{Health, ProcessIdentity, Severity};
use crate::id::AgentId;
use crate::spec::{AgentSpec, RecoveryPolicy, RecoveryStrategy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentCommand {
    // ----- operator -----
    /// Create the agent. Only on a fresh aggregate.
    Register {
        agent_id: AgentId,
        spec: AgentSpec,
    },
    /// Replace the spec (new package). `spec.config` is ignored: config has
    /// its own history, see `UpdateConfig`.
    UpdatePackage {
        spec: AgentSpec,
    },
    /// A package as discovery read it: the spec as `UpdatePackage` takes
    /// it, with `spec.config` the config of the package's layers. When the
    /// layers changed since they were last applied, the config becomes them
    /// with the runtime changes laid on top, as a new version
    /// ([`crate::spec::rebase_config`]).
    ApplyPackage {
        spec: AgentSpec,
    },
    /// Optimistic update: `expected_version` must be the current config version.
    UpdateConfig {
        expected_version: u32,
        config: serde_json::Value,
    },
    /// Make an older config current again, as a new version.
    RollbackConfig {
        to_version: u32,
    },
    Start,
    Stop,
    Restart,
    TriggerRecovery {
        strategy: RecoveryStrategy,
        reason: String,
    },
    SetRecoveryPolicy {
        policy: RecoveryPolicy,
    },
    Deregister,

    // ----- supervisor facts -----
    ReportProcessStarted {
        node: String,
        identity: ProcessIdentity,
        at: DateTime<Utc>,
    },
    /// `jitter_sample` is uniform in `[0, 1)`, drawn by the caller.
    ReportProcessExited {
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        at: DateTime<Utc>,
        jitter_sample: f64,
    },
    /// The process could not be started at all (program missing, working
    /// directory gone, secrets that cannot be opened...): the agent fails
    /// with `message` as its reason, instead of waiting in `starting`.
    ReportSpawnFailed {
        message: String,
        context: serde_json::Value,
    },
    /// The process we asked to stop is gone (or was never spawned).
    ReportStopped {
        at: DateTime<Utc>,
    },
    ReportHealth {
        health: Health,
        reason: String,
    },
    ReportHeartbeatLost {
        last_seen: Option<DateTime<Utc>>,
    },
    ReportLimitExceeded {
        resource: String,
        limit: f64,
        observed: f64,
        window_ms: u64,
    },
    RecordError {
        severity: Severity,
        category: String,
        error_type: String,
        message: String,
        context: serde_json::Value,
    },
    CompleteRecovery {
        succeeded: bool,
        error: Option<String>,
    },
}
