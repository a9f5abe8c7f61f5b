//! [`AgentEvent`]: what happened, in the past tense.
//!
//! Events are stored forever, so their shape is versioned: `event_version` is
//! `"1.0"` for all except `ProcessExited`, which is `"2.0"` (1.0 had
//! `exit_code` and no `signal`/`decision`); [`super::upcasters`] converts.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::state::{Health, ProcessIdentity, Severity};
use crate::backoff::RestartDecision;
use crate::id::AgentId;
use crate::spec::{AgentSpec, RecoveryPolicy, RecoveryStrategy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    AgentRegistered {
        agent_id: AgentId,
        spec: AgentSpec,
    },
    PackageUpdated {
        spec: AgentSpec,
        spec_version: u32,
    },
    /// `package_config` is set when discovery made this version from the
    /// package's layers (see `AgentCommand::ApplyPackage`): those layers, as
    /// `config` builds on them. Absent from other updates (and from events
    /// written before it existed).
    ConfigUpdated {
        version: u32,
        config: serde_json::Value,
        previous_version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        package_config: Option<serde_json::Value>,
    },
    /// `version` is the new version, holding the config of `to_version`.
    ConfigRolledBack {
        version: u32,
        to_version: u32,
        config: serde_json::Value,
    },
    StartRequested,
    StopRequested,
    RestartRequested,
    RecoveryTriggered {
        strategy: RecoveryStrategy,
        reason: String,
        attempt: u32,
    },
    RecoveryPolicySet {
        policy: RecoveryPolicy,
    },
    AgentDeregistered,
    ProcessStarted {
        node: String,
        identity: ProcessIdentity,
        at: DateTime<Utc>,
    },
    /// `decision` tells the supervisor what to do next: `Restart` after a
    /// crash (status `backoff`) or after an operator restart (delay 0,
    /// status `starting`), `GiveUp` (followed by `AgentFailed`), or
    /// `DoNotRestart`.
    ProcessExited {
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        at: DateTime<Utc>,
        decision: RestartDecision,
    },
    AgentFailed {
        reason: String,
        restarts_in_period: u32,
    },
    ProcessStopped {
        at: DateTime<Utc>,
    },
    HealthChanged {
        from: Health,
        to: Health,
        reason: String,
    },
    HeartbeatLost {
        last_seen: Option<DateTime<Utc>>,
    },
    ResourceLimitExceeded {
        resource: String,
        limit: f64,
        observed: f64,
        window_ms: u64,
    },
    ErrorRecorded {
        severity: Severity,
        category: String,
        error_type: String,
        message: String,
        context: serde_json::Value,
    },
    RecoveryCompleted {
        succeeded: bool,
        error: Option<String>,
    },
}

impl AgentEvent {
    /// The variant name, as stored in `event_type`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::AgentRegistered { .. } => "AgentRegistered",
            Self::PackageUpdated { .. } => "PackageUpdated",
            Self::ConfigUpdated { .. } => "ConfigUpdated",
            Self::ConfigRolledBack { .. } => "ConfigRolledBack",
            Self::StartRequested => "StartRequested",
            Self::StopRequested => "StopRequested",
            Self::RestartRequested => "RestartRequested",
            Self::RecoveryTriggered { .. } => "RecoveryTriggered",
            Self::RecoveryPolicySet { .. } => "RecoveryPolicySet",
            Self::AgentDeregistered => "AgentDeregistered",
            Self::ProcessStarted { .. } => "ProcessStarted",
            Self::ProcessExited { .. } => "ProcessExited",
            Self::AgentFailed { .. } => "AgentFailed",
            Self::ProcessStopped { .. } => "ProcessStopped",
            Self::HealthChanged { .. } => "HealthChanged",
            Self::HeartbeatLost { .. } => "HeartbeatLost",
            Self::ResourceLimitExceeded { .. } => "ResourceLimitExceeded",
            Self::ErrorRecorded { .. } => "ErrorRecorded",
            Self::RecoveryCompleted { .. } => "RecoveryCompleted",
        }
    }
}

/// Current version of `ProcessExited`.
pub const PROCESS_EXITED_VERSION: &str = "2.0";

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::ProcessExited { .. } => PROCESS_EXITED_VERSION,
            _ => "1.0",
        }
        .to_owned()
    }
}
