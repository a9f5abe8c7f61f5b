//! Control messages: request/reply on `opmas.control.<agent_id>` between a
//! supervisor (or an operator tool) and agents that speak it (the SDK does).
//! Agents that do not answer are handled with signals instead.

use serde::{Deserialize, Serialize};

/// What is asked of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Shut down gracefully.
    Stop,
    /// Re-read configuration without restarting.
    Reload,
    /// Restart yourself (exit; the supervisor starts you again).
    Restart,
    /// Answer, to show you are responsive.
    Ping,
}

/// The request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The action.
    pub action: ControlAction,
    /// The configuration to apply, for `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// The reply body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the agent did what was asked.
    pub ok: bool,
    /// Why not, or a note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
