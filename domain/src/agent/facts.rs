//! Handling of the supervisor's facts: process started/exited/stopped,
//! health, heartbeats and limits. A fact that contradicts the state is
//! refused as [`AgentError::StaleFact`].

use chrono::{DateTime, Utc};

use super::error::AgentError;
use super::event::AgentEvent;
use super::handlers::{Events, none, one};
use super::state::{Agent, DesiredState, Health, ProcessIdentity, ProcessStatus, Severity};
use crate::backoff::{self, ExitKind, RestartDecision};
use crate::spec::AgentSpec;

impl Agent {
    pub(super) fn process_started(
        &self,
        node: String,
        identity: ProcessIdentity,
        at: DateTime<Utc>,
    ) -> Events {
        use ProcessStatus as S;
        if identity.pid == 0 {
            return Err(AgentError::validation("identity.pid", "must not be 0"));
        }
        if self.desired == DesiredState::Stopped {
            return Err(AgentError::stale(format!(
                "pid {} started but the agent is meant to be stopped",
                identity.pid
            )));
        }
        match self.status {
            S::Starting | S::Backoff | S::Failed => {
                one(AgentEvent::ProcessStarted { node, identity, at })
            }
            S::Running | S::Degraded if self.pid == Some(identity.pid) => none(),
            status => Err(AgentError::stale(format!(
                "pid {} started while the agent is {status} with pid {}",
                identity.pid,
                self.pid
                    .map_or_else(|| "none".to_owned(), |p| p.to_string()),
            ))),
        }
    }

    pub(super) fn process_exited(
        &self,
        spec: &AgentSpec,
        exit: Exit,
        jitter_sample: f64,
    ) -> Events {
        if !(0.0..=1.0).contains(&jitter_sample) {
            return Err(AgentError::validation("jitter_sample", "must be in [0, 1]"));
        }
        match self.pid {
            None => {
                return Err(AgentError::stale(format!(
                    "exit of pid {} reported but no process is running",
                    exit.pid
                )));
            }
            Some(current) if current != exit.pid => {
                return Err(AgentError::stale(format!(
                    "exit of pid {} reported but the current pid is {current}",
                    exit.pid
                )));
            }
            Some(_) => {}
        }
        let decision = match (self.status, self.desired) {
            (ProcessStatus::Stopping, DesiredState::Running) => RestartDecision::Restart {
                delay_ms: 0,
                attempt: 1,
            },
            (_, DesiredState::Stopped) => RestartDecision::DoNotRestart,
            _ => backoff::decide(
                &spec.restart,
                &self.restart_window,
                ExitKind::from_exit(exit.code, exit.signal),
                self.ran_for_ms(exit.at),
                exit.at,
                jitter_sample,
            ),
        };
        let mut events = vec![exit.event(decision)];
        if let RestartDecision::GiveUp { restarts_in_period } = decision {
            events.push(AgentEvent::AgentFailed {
                reason: format!(
                    "{restarts_in_period} restarts within {} ms; last exit: {}",
                    spec.restart.period_ms,
                    exit.describe()
                ),
                restarts_in_period,
            });
        }
        Ok(events)
    }

    /// A process that could not even be spawned fails the agent at once (as
    /// systemd fails a unit whose `ExecStart` cannot run): retrying a
    /// missing program in a loop would only hide it. The restart policy's
    /// `failed_cooldown_ms`, or an operator's Start, tries again.
    pub(super) fn spawn_failed(&self, message: String, context: serde_json::Value) -> Events {
        use ProcessStatus as S;
        if message.trim().is_empty() {
            return Err(AgentError::validation("message", "must not be empty"));
        }
        match (self.status, self.desired) {
            (S::Starting | S::Backoff, DesiredState::Running) => Ok(vec![
                AgentEvent::ErrorRecorded {
                    severity: Severity::Error,
                    category: "process".to_owned(),
                    error_type: "SpawnFailed".to_owned(),
                    message: message.clone(),
                    context,
                },
                AgentEvent::AgentFailed {
                    reason: format!("cannot start the process: {message}"),
                    restarts_in_period: 0,
                },
            ]),
            (status, desired) => Err(AgentError::stale(format!(
                "spawn failure reported while the agent is {status} (desired {desired})"
            ))),
        }
    }

    pub(super) fn stopped(&self, at: DateTime<Utc>) -> Events {
        use ProcessStatus as S;
        match self.status {
            S::Stopping => one(AgentEvent::ProcessStopped { at }),
            S::Starting | S::Running | S::Degraded => Err(AgentError::stale(format!(
                "stop reported while the agent is {} (desired {}): report the exit instead",
                self.status, self.desired
            ))),
            S::Registered | S::Stopped | S::Backoff | S::Failed => none(),
        }
    }

    /// Health reports need a running process.
    fn require_running(&self, what: &str) -> Result<(), AgentError> {
        match self.status {
            ProcessStatus::Running | ProcessStatus::Degraded => Ok(()),
            status => Err(AgentError::stale(format!(
                "{what} reported while the agent is {status}"
            ))),
        }
    }

    pub(super) fn report_health(&self, health: Health, reason: String) -> Events {
        self.require_running("health")?;
        if health == self.health {
            return none();
        }
        one(AgentEvent::HealthChanged {
            from: self.health,
            to: health,
            reason,
        })
    }

    pub(super) fn heartbeat_lost(&self, last_seen: Option<DateTime<Utc>>) -> Events {
        self.require_running("heartbeat loss")?;
        if self.heartbeat_lost {
            return none();
        }
        let mut events = vec![AgentEvent::HeartbeatLost { last_seen }];
        if self.health != Health::Critical {
            events.push(AgentEvent::HealthChanged {
                from: self.health,
                to: Health::Critical,
                reason: "heartbeat lost".to_owned(),
            });
        }
        Ok(events)
    }

    pub(super) fn limit_exceeded(&self, event: AgentEvent) -> Events {
        if self.pid.is_none() {
            return Err(AgentError::stale(format!(
                "resource limit reported while the agent is {} without a process",
                self.status
            )));
        }
        if let AgentEvent::ResourceLimitExceeded { resource, .. } = &event
            && resource.trim().is_empty()
        {
            return Err(AgentError::validation("resource", "must not be empty"));
        }
        one(event)
    }
}

/// A reported exit, before a decision is attached.
pub(super) struct Exit {
    pub(super) pid: u32,
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) at: DateTime<Utc>,
}

impl Exit {
    fn event(&self, decision: RestartDecision) -> AgentEvent {
        AgentEvent::ProcessExited {
            pid: self.pid,
            code: self.code,
            signal: self.signal,
            at: self.at,
            decision,
        }
    }

    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(signal)) => format!("killed by signal {signal}"),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "unknown".to_owned(),
        }
    }
}
