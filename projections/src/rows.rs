//! Row types of the event-sourced read models. They serialize to JSON with
//! the tables' column names, so a batch is written with one
//! `json_populate_recordset` statement per table (see [`crate::batch`]).

use chrono::{DateTime, Utc};
use opmas_domain::Agent;
use serde::Serialize;
use serde_json::Value;

use crate::envelope::Envelope;

/// `agent_status`: the agent's current state, flat, plus the folded state.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub agent_id: String,
    pub last_sequence: i64,
    pub last_event_type: &'static str,
    pub registered: bool,
    pub deregistered: bool,
    pub agent_type: Option<String>,
    pub package_version: Option<String>,
    pub desired_state: &'static str,
    pub status: &'static str,
    pub health: &'static str,
    pub recovery_status: &'static str,
    pub recovery_attempts: u32,
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub restart_count: u64,
    pub heartbeat_lost: bool,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub spec_version: u32,
    pub config_version: u32,
    /// The folded agent, serialized straight into the row's JSON when it is
    /// written (a `Value` per event cost more than the rest of the fold).
    pub state: Agent,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl StatusRow {
    /// The row after `env` was applied to `agent`.
    pub fn new(agent: &Agent, env: &Envelope) -> Self {
        let spec = agent.spec.as_ref();
        Self {
            agent_id: env.agent_id.clone(),
            last_sequence: env.sequence,
            last_event_type: env.event.name(),
            registered: agent.registered,
            deregistered: agent.deregistered,
            agent_type: spec.map(|s| s.agent_type.clone()),
            package_version: spec.map(|s| s.package_version.clone()),
            desired_state: agent.desired.as_str(),
            status: agent.status.as_str(),
            health: agent.health.as_str(),
            recovery_status: agent.recovery.as_str(),
            recovery_attempts: agent.recovery_attempts,
            node: agent.node.clone(),
            pid: agent.pid,
            started_at: agent.started_at,
            restart_count: agent.restart_count,
            heartbeat_lost: agent.heartbeat_lost,
            last_heartbeat_at: None,
            last_error: agent.last_error.clone(),
            spec_version: agent.spec_version,
            config_version: agent.config_version,
            state: agent.clone(),
            created_at: env.recorded_at,
            updated_at: env.recorded_at,
        }
    }
}

/// `agent_status_history`: one process-status or desired-state transition.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub agent_id: String,
    pub sequence: i64,
    pub event_type: &'static str,
    pub from_status: Option<&'static str>,
    pub to_status: &'static str,
    pub from_desired: Option<&'static str>,
    pub to_desired: &'static str,
    pub reason: Option<String>,
    pub actor: String,
    pub correlation_id: Option<String>,
    pub at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// `agent_recovery_attempts`: inserted at `RecoveryTriggered`, completed by
/// `RecoveryCompleted` (also used, partially filled, for that update).
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryRow {
    pub agent_id: String,
    pub sequence: Option<i64>,
    pub attempt: Option<u32>,
    pub strategy: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_sequence: Option<i64>,
    pub completed_at: Option<DateTime<Utc>>,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// `agent_errors`: one recorded error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRow {
    pub agent_id: String,
    pub sequence: i64,
    pub severity: &'static str,
    pub category: String,
    pub error_type: String,
    pub message: String,
    pub context: Value,
    pub fingerprint: String,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// `agent_error_groups`: repeats of one fingerprint on one agent.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub agent_id: String,
    pub fingerprint: String,
    pub severity: &'static str,
    pub category: String,
    pub error_type: String,
    pub first_message: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub first_sequence: i64,
    pub last_sequence: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `agent_configs`: one config version.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRow {
    pub agent_id: String,
    pub version: u32,
    pub config: Value,
    pub diff: Value,
    pub previous_version: Option<u32>,
    pub rolled_back_to: Option<u32>,
    pub event_type: &'static str,
    pub sequence: i64,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}
