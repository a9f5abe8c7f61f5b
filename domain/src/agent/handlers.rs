//! Command handling: one helper per command, each returning the events to
//! emit. Operator commands are here (package commands in `package.rs`),
//! supervisor facts in `facts.rs`; see the tables in [`crate::agent`] for
//! the rules.

use serde_json::Value;

use super::command::AgentCommand;
use super::error::AgentError;
use super::event::AgentEvent;
use super::facts::Exit;
use super::state::{Agent, DesiredState, ProcessStatus, RecoveryStatus};
use crate::id::AgentId;
use crate::spec::{AgentSpec, RecoveryPolicy, RecoveryStrategy};

pub(super) type Events = Result<Vec<AgentEvent>, AgentError>;

/// No events: the command is already satisfied.
pub(super) fn none() -> Events {
    Ok(Vec::new())
}

pub(super) fn one(event: AgentEvent) -> Events {
    Ok(vec![event])
}

impl Agent {
    /// The events `command` produces in the current state, or why it is
    /// refused. Pure: it does not change `self`.
    pub fn events_for(&self, command: AgentCommand) -> Events {
        use AgentCommand as C;
        if let C::Register { agent_id, spec } = command {
            return self.register(agent_id, spec);
        }
        let spec = self.live_spec()?;
        match command {
            C::Register { .. } => Err(AgentError::AlreadyRegistered),
            C::UpdatePackage { spec: new } => self.update_package(spec, new),
            C::ApplyPackage { spec: new } => self.apply_package(spec, new),
            C::UpdateConfig {
                expected_version,
                config,
            } => self.update_config(expected_version, config),
            C::RollbackConfig { to_version } => self.rollback_config(to_version),
            C::Start => self.start(),
            C::Stop => self.stop(),
            C::Restart => self.restart(),
            C::Deregister => self.deregister(),
            C::TriggerRecovery { strategy, reason } => {
                self.trigger_recovery(spec, strategy, reason)
            }
            C::SetRecoveryPolicy { policy } => set_recovery_policy(policy),
            C::CompleteRecovery { succeeded, error } => self.complete_recovery(succeeded, error),
            C::ReportProcessStarted { node, identity, at } => {
                self.process_started(node, identity, at)
            }
            C::ReportProcessExited {
                pid,
                code,
                signal,
                at,
                jitter_sample,
            } => self.process_exited(
                spec,
                Exit {
                    pid,
                    code,
                    signal,
                    at,
                },
                jitter_sample,
            ),
            C::ReportSpawnFailed { message, context } => self.spawn_failed(message, context),
            C::ReportStopped { at } => self.stopped(at),
            C::ReportHealth { health, reason } => self.report_health(health, reason),
            C::ReportHeartbeatLost { last_seen } => self.heartbeat_lost(last_seen),
            C::ReportLimitExceeded {
                resource,
                limit,
                observed,
                window_ms,
            } => self.limit_exceeded(AgentEvent::ResourceLimitExceeded {
                resource,
                limit,
                observed,
                window_ms,
            }),
            C::RecordError {
                severity,
                category,
                error_type,
                message,
                context,
            } => one(AgentEvent::ErrorRecorded {
                severity,
                category,
                error_type,
                message,
                context,
            }),
        }
    }

    /// The spec of a registered, not deregistered agent.
    fn live_spec(&self) -> Result<&AgentSpec, AgentError> {
        if self.deregistered {
            return Err(AgentError::Deregistered);
        }
        self.spec.as_ref().ok_or(AgentError::NotRegistered)
    }

    fn invalid(&self, command: &'static str) -> AgentError {
        AgentError::InvalidTransition {
            command,
            status: self.status,
            desired: self.desired,
        }
    }

    fn register(&self, agent_id: AgentId, spec: AgentSpec) -> Events {
        if self.deregistered {
            return Err(AgentError::Deregistered);
        }
        if self.registered {
            return Err(AgentError::AlreadyRegistered);
        }
        spec.validate()?;
        not_self_required(&agent_id, &spec)?;
        one(AgentEvent::AgentRegistered { agent_id, spec })
    }

    fn update_config(&self, expected: u32, config: Value) -> Events {
        if expected != self.config_version {
            return Err(AgentError::VersionConflict {
                expected,
                actual: self.config_version,
            });
        }
        if !config.is_object() {
            return Err(AgentError::validation("config", "must be a JSON object"));
        }
        if let Some(schema) = self.spec.as_ref().and_then(|s| s.config_schema.as_ref()) {
            schema_allows(schema, &config)?;
        }
        one(AgentEvent::ConfigUpdated {
            version: self.config_version.saturating_add(1),
            config,
            previous_version: self.config_version,
            package_config: None,
        })
    }

    fn rollback_config(&self, to_version: u32) -> Events {
        let unknown = AgentError::UnknownConfigVersion {
            requested: to_version,
            latest: self.config_version,
        };
        if to_version == 0 || to_version >= self.config_version {
            return Err(unknown);
        }
        let index = usize::try_from(to_version - 1).map_err(|_| unknown.clone())?;
        let config = self.configs.get(index).ok_or(unknown)?.clone();
        if let Some(schema) = self.spec.as_ref().and_then(|s| s.config_schema.as_ref()) {
            schema_allows(schema, &config)?;
        }
        one(AgentEvent::ConfigRolledBack {
            version: self.config_version.saturating_add(1),
            to_version,
            config,
        })
    }

    fn start(&self) -> Events {
        use ProcessStatus as S;
        match (self.status, self.desired) {
            (S::Registered | S::Stopped | S::Failed, _) => one(AgentEvent::StartRequested),
            (_, DesiredState::Running) => none(),
            _ => Err(self.invalid("start")),
        }
    }

    fn stop(&self) -> Events {
        use ProcessStatus as S;
        match (self.status, self.desired) {
            (S::Starting | S::Running | S::Degraded, _) => one(AgentEvent::StopRequested),
            (_, DesiredState::Running) => one(AgentEvent::StopRequested),
            (_, DesiredState::Stopped) => none(),
        }
    }

    fn restart(&self) -> Events {
        use ProcessStatus as S;
        match self.status {
            S::Running | S::Degraded | S::Backoff | S::Failed => one(AgentEvent::RestartRequested),
            _ => Err(self.invalid("restart")),
        }
    }

    fn deregister(&self) -> Events {
        use ProcessStatus as S;
        match (self.status, self.desired) {
            (S::Registered | S::Stopped | S::Failed, DesiredState::Stopped) => {
                one(AgentEvent::AgentDeregistered)
            }
            _ => Err(self.invalid("deregister")),
        }
    }

    fn trigger_recovery(
        &self,
        spec: &AgentSpec,
        strategy: RecoveryStrategy,
        reason: String,
    ) -> Events {
        if self.desired == DesiredState::Stopped {
            return Err(self.invalid("trigger recovery"));
        }
        if self.recovery == RecoveryStatus::InProgress {
            return Err(AgentError::RecoveryInProgress {
                attempt: self.recovery_attempts,
            });
        }
        if strategy == RecoveryStrategy::None {
            return Err(AgentError::validation(
                "strategy",
                "`none` does not recover anything",
            ));
        }
        let max_attempts = spec.recovery.max_attempts;
        if self.recovery_attempts >= max_attempts {
            return Err(AgentError::RecoveryExhausted {
                attempts: self.recovery_attempts,
                max_attempts,
            });
        }
        one(AgentEvent::RecoveryTriggered {
            strategy,
            reason,
            attempt: self.recovery_attempts.saturating_add(1),
        })
    }

    fn complete_recovery(&self, succeeded: bool, error: Option<String>) -> Events {
        if self.recovery != RecoveryStatus::InProgress {
            return Err(AgentError::NoRecoveryInProgress);
        }
        one(AgentEvent::RecoveryCompleted { succeeded, error })
    }
}

/// `config` satisfies the agent's config schema.
pub(super) fn schema_allows(schema: &Value, config: &Value) -> Result<(), AgentError> {
    crate::spec::check_config(schema, config).map_err(|e| AgentError::Validation {
        field: e.field,
        message: e.message,
    })
}

/// An agent that requires itself could never start.
pub(super) fn not_self_required(agent_id: &AgentId, spec: &AgentSpec) -> Result<(), AgentError> {
    if spec.requires.contains(agent_id.as_str()) {
        return Err(AgentError::validation(
            "requires",
            format!("`{agent_id}` cannot require itself"),
        ));
    }
    Ok(())
}

fn set_recovery_policy(policy: RecoveryPolicy) -> Events {
    policy.validate()?;
    one(AgentEvent::RecoveryPolicySet { policy })
}
