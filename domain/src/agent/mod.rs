//! The `Agent` aggregate: one agent's life as a state machine over events.
//!
//! [`Agent::handle`](cqrs_es::Aggregate::handle) checks a command against the
//! state and emits events (possibly none: repeated commands are idempotent);
//! [`Agent::apply`](cqrs_es::Aggregate::apply) folds an event into the state.
//! `handle` is pure: no IO, no clock, no randomness.
//!
//! Every command but `Register` is refused with `NotRegistered` on a fresh
//! aggregate and with `Deregistered` after `AgentDeregistered`.
//!
//! # Operator commands
//!
//! | command | when (status, desired) | events | then |
//! |---|---|---|---|
//! | Register | fresh aggregate, valid spec (config fits its schema, not requiring itself) | AgentRegistered | registered, stopped; spec & config v1 |
//! | UpdatePackage | valid spec that differs; current config fits its schema | PackageUpdated | spec_version + 1 (config kept) |
//! | ApplyPackage | valid spec; its config (the package's layers) rebased with the runtime changes fits its schema | PackageUpdated if the spec differs, ConfigUpdated (with `package_config`) if the layers changed | as those |
//! | UpdateConfig | `expected_version` = current, object fitting the schema | ConfigUpdated | config_version + 1 |
//! | RollbackConfig | `1 <= to < current`, that config fits the schema | ConfigRolledBack | config_version + 1 |
//! | Start | registered, stopped, failed | StartRequested | starting, running; window reset |
//! | Start | already desired running | — | |
//! | Start | stopping, desired stopped | *InvalidTransition* | |
//! | Stop | starting, running, degraded, stopping (restart) | StopRequested | stopping, stopped |
//! | Stop | backoff, failed (no process) | StopRequested | stopped, stopped |
//! | Stop | desired stopped, no process | — | |
//! | Restart | running, degraded (process alive) | RestartRequested | stopping, running; window reset |
//! | Restart | backoff, failed (no process) | RestartRequested | starting, running; window reset |
//! | Restart | otherwise | *InvalidTransition* | |
//! | Deregister | registered, stopped, failed; desired stopped | AgentDeregistered | gone |
//! | TriggerRecovery | desired running, none in progress, attempts left | RecoveryTriggered | recovery in progress |
//! | SetRecoveryPolicy | `max_attempts >= 1` | RecoveryPolicySet | spec.recovery replaced |
//!
//! # Supervisor facts
//!
//! | fact | when | events | then |
//! |---|---|---|---|
//! | ReportProcessStarted | desired running; starting, backoff, failed | ProcessStarted | running (restart_count + 1 unless first since Start) |
//! | ReportProcessStarted | running with the same pid | — | |
//! | ReportProcessStarted | desired stopped, other pid, stopping | *StaleFact* | |
//! | ReportProcessExited | pid is not the current one | *StaleFact* | |
//! | ReportProcessExited | stopping, desired stopped | ProcessExited(DoNotRestart) | stopped |
//! | ReportProcessExited | stopping, desired running (restart) | ProcessExited(Restart, delay 0) | starting |
//! | ReportProcessExited | policy restarts | ProcessExited(Restart) | backoff; window records it |
//! | ReportProcessExited | policy does not restart | ProcessExited(DoNotRestart) | stopped, desired stopped |
//! | ReportProcessExited | intensity exceeded | ProcessExited(GiveUp), AgentFailed | failed |
//! | ReportSpawnFailed | starting, backoff; desired running | ErrorRecorded(SpawnFailed), AgentFailed | failed |
//! | ReportSpawnFailed | otherwise | *StaleFact* | |
//! | ReportStopped | stopping | ProcessStopped | stopped (starting if restarting) |
//! | ReportStopped | no process | — | |
//! | ReportHealth | running, degraded; health differs | HealthChanged | degraded on warning/critical, running on healthy |
//! | ReportHeartbeatLost | running, degraded; not yet lost | HeartbeatLost (+ HealthChanged to critical) | degraded |
//! | ReportLimitExceeded | a process exists | ResourceLimitExceeded | |
//! | RecordError | always | ErrorRecorded | last_error set |
//! | CompleteRecovery | recovery in progress | RecoveryCompleted | succeeded (attempts reset) / failed |
//!
//! When a process exits or stops, its pid, identity and start time are
//! cleared and health returns to `unknown`.

mod command;
mod error;
mod event;
mod facts;
mod handlers;
mod package;
mod state;
mod upcast;

#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;

use crate::backoff::{self, RestartDecision};

pub use command::AgentCommand;
pub use error::AgentError;
pub use event::{AgentEvent, PROCESS_EXITED_VERSION};
pub use state::{
    Agent, DesiredState, Health, ProcessIdentity, ProcessStatus, RecoveryStatus, Severity,
};
pub use upcast::upcasters;

impl Aggregate for Agent {
    const TYPE: &'static str = "Agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.events_for(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentEvent::AgentRegistered { agent_id, spec } => {
                *self = Agent {
                    id: Some(agent_id),
                    registered: true,
                    spec_version: 1,
                    config_version: 1,
                    configs: vec![spec.config.clone()],
                    package_config: spec.package_dir.is_some().then(|| spec.config.clone()),
                    spec: Some(spec),
                    ..Agent::default()
                };
            }
            AgentEvent::PackageUpdated { spec, spec_version } => {
                self.spec = Some(spec);
                self.spec_version = spec_version;
            }
            AgentEvent::ConfigUpdated {
                version,
                config,
                package_config,
                ..
            } => {
                if package_config.is_some() {
                    self.package_config = package_config;
                }
                self.set_config(version, config);
            }
            AgentEvent::ConfigRolledBack {
                version, config, ..
            } => self.set_config(version, config),
            AgentEvent::StartRequested => {
                self.desired = DesiredState::Running;
                self.status = ProcessStatus::Starting;
                self.has_run = false;
                self.restart_window = backoff::RestartWindow::default();
            }
            AgentEvent::StopRequested => {
                self.desired = DesiredState::Stopped;
                self.status = if self.status.has_process() {
                    ProcessStatus::Stopping
                } else {
                    ProcessStatus::Stopped
                };
            }
            AgentEvent::RestartRequested => {
                self.desired = DesiredState::Running;
                self.status = if self.pid.is_some() {
                    ProcessStatus::Stopping
                } else {
                    ProcessStatus::Starting
                };
                self.restart_window = backoff::RestartWindow::default();
            }
            AgentEvent::RecoveryTriggered {
                attempt, strategy, ..
            } => {
                self.recovery = RecoveryStatus::InProgress;
                self.recovery_attempts = attempt;
                self.recovery_strategy = Some(strategy);
            }
            AgentEvent::RecoveryPolicySet { policy } => {
                if let Some(spec) = &mut self.spec {
                    spec.recovery = policy;
                }
            }
            AgentEvent::AgentDeregistered => {
                self.deregistered = true;
                self.desired = DesiredState::Stopped;
            }
            AgentEvent::ProcessStarted { node, identity, at } => {
                self.on_started(node, identity, at);
            }
            AgentEvent::ProcessExited { at, decision, .. } => self.on_exited(at, decision),
            AgentEvent::AgentFailed { reason, .. } => {
                self.status = ProcessStatus::Failed;
                self.last_error = Some(reason);
            }
            AgentEvent::ProcessStopped { .. } => {
                self.clear_process();
                self.status = match self.desired {
                    DesiredState::Running => ProcessStatus::Starting,
                    DesiredState::Stopped => ProcessStatus::Stopped,
                };
            }
            AgentEvent::HealthChanged { to, .. } => self.on_health(to),
            AgentEvent::HeartbeatLost { .. } => self.heartbeat_lost = true,
            AgentEvent::ResourceLimitExceeded { .. } => {}
            AgentEvent::ErrorRecorded { message, .. } => self.last_error = Some(message),
            AgentEvent::RecoveryCompleted { succeeded, error } => {
                self.recovery_strategy = None;
                if succeeded {
                    self.recovery = RecoveryStatus::Succeeded;
                    self.recovery_attempts = 0;
                } else {
                    self.recovery = RecoveryStatus::Failed;
                }
                if error.is_some() {
                    self.last_error = error;
                }
            }
        }
    }
}

impl Agent {
    fn set_config(&mut self, version: u32, config: serde_json::Value) {
        if let Some(spec) = &mut self.spec {
            spec.config = config.clone();
        }
        self.configs.push(config);
        self.config_version = version;
    }

    fn on_started(&mut self, node: String, identity: ProcessIdentity, at: DateTime<Utc>) {
        if self.has_run {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.has_run = true;
        self.status = ProcessStatus::Running;
        self.pid = Some(identity.pid);
        self.process = Some(identity);
        self.node = Some(node);
        self.started_at = Some(at);
        self.health = Health::Unknown;
        self.heartbeat_lost = false;
    }

    fn on_exited(&mut self, at: DateTime<Utc>, decision: RestartDecision) {
        let requested = self.status == ProcessStatus::Stopping;
        let ran_for_ms = self.ran_for_ms(at);
        self.clear_process();
        self.status = match decision {
            RestartDecision::Restart { .. } if requested => ProcessStatus::Starting,
            RestartDecision::Restart { .. } => {
                if let Some(spec) = &self.spec {
                    backoff::record_restart(
                        &mut self.restart_window,
                        &spec.restart,
                        at,
                        ran_for_ms,
                    );
                }
                ProcessStatus::Backoff
            }
            RestartDecision::GiveUp { .. } => ProcessStatus::Failed,
            RestartDecision::DoNotRestart => {
                self.desired = DesiredState::Stopped;
                ProcessStatus::Stopped
            }
        };
    }

    fn on_health(&mut self, to: Health) {
        self.health = to;
        if to == Health::Healthy {
            self.heartbeat_lost = false;
        }
        self.status = match (self.status, to) {
            (ProcessStatus::Running, Health::Warning | Health::Critical) => ProcessStatus::Degraded,
            (ProcessStatus::Degraded, Health::Healthy) => ProcessStatus::Running,
            (status, _) => status,
        };
    }

    fn clear_process(&mut self) {
        self.pid = None;
        self.process = None;
        self.started_at = None;
        self.health = Health::Unknown;
        self.heartbeat_lost = false;
    }

    /// How long the current process has run at `at` (0 if unknown or negative).
    pub fn ran_for_ms(&self, at: DateTime<Utc>) -> u64 {
        self.started_at
            .map(|started| (at - started).num_milliseconds())
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0)
    }
}
