//! [`AgentError`]: why a command was refused. Each variant maps to one API
//! error code; no variant means "internal error".

use super::state::{DesiredState, ProcessStatus};
use crate::id::IdError;
use crate::spec::SpecError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("agent is not registered")]
    NotRegistered,
    #[error("agent is already registered")]
    AlreadyRegistered,
    #[error("agent has been deregistered")]
    Deregistered,
    #[error("cannot {command} while the agent is {status} (desired: {desired})")]
    InvalidTransition {
        command: &'static str,
        status: ProcessStatus,
        desired: DesiredState,
    },
    #[error("config version conflict: expected {expected}, current is {actual}")]
    VersionConflict { expected: u32, actual: u32 },
    #[error("config version {requested} does not exist or is current (latest is {latest})")]
    UnknownConfigVersion { requested: u32, latest: u32 },
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
    #[error("invalid agent id: {0}")]
    InvalidId(#[from] IdError),
    #[error("stale fact: {reason}")]
    StaleFact { reason: String },
    #[error("`{field}`: {message}")]
    Validation { field: String, message: String },
    #[error("a recovery is already in progress (attempt {attempt})")]
    RecoveryInProgress { attempt: u32 },
    #[error("no recovery is in progress")]
    NoRecoveryInProgress,
    #[error("recovery gave up: {attempts} of {max_attempts} attempts used")]
    RecoveryExhausted { attempts: u32, max_attempts: u32 },
}

impl AgentError {
    pub(crate) fn stale(reason: impl Into<String>) -> Self {
        Self::StaleFact {
            reason: reason.into(),
        }
    }

    pub(crate) fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}
