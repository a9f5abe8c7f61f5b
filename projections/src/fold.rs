//! Folding: each event is applied to the agent with the domain's own
//! `Agent::apply` (the single source of state logic), and the rows it
//! causes in every event-sourced read model are collected in a [`Batch`].
//! Pure: no IO, so the live consumer and `opmas replay` produce the same rows.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use opmas_domain::{Agent, AgentEvent, RestartDecision};

use crate::diff::{config_diff, fingerprint};
use crate::envelope::Envelope;
use crate::rows::{ConfigRow, ErrorRow, GroupRow, HistoryRow, RecoveryRow, StatusRow};

/// Rows caused by a run of events, ready to be written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    /// Latest row per agent.
    pub status: BTreeMap<String, StatusRow>,
    pub history: Vec<HistoryRow>,
    /// New attempts (completed in place when the completion is in the batch).
    pub recovery: Vec<RecoveryRow>,
    /// Completions of attempts written by an earlier batch.
    pub completions: Vec<RecoveryRow>,
    pub errors: Vec<ErrorRow>,
    /// Repeats seen in this batch per (agent, fingerprint).
    pub groups: BTreeMap<(String, String), GroupRow>,
    pub configs: Vec<ConfigRow>,
    /// Events folded into this batch.
    pub events: usize,
}

impl Batch {
    /// Applies `env` to `agent` (which must be at `env.sequence - 1`) and
    /// records the rows it causes.
    pub fn apply(&mut self, agent: &mut Agent, env: &Envelope) {
        let (status, desired, first) = (agent.status, agent.desired, !agent.registered);
        agent.apply(env.event.clone());
        if first || agent.status != status || agent.desired != desired {
            self.history.push(HistoryRow {
                agent_id: env.agent_id.clone(),
                sequence: env.sequence,
                event_type: env.event.name(),
                from_status: (!first).then(|| status.as_str()),
                to_status: agent.status.as_str(),
                from_desired: (!first).then(|| desired.as_str()),
                to_desired: agent.desired.as_str(),
                reason: env
                    .reason()
                    .map(str::to_owned)
                    .or_else(|| reason(&env.event)),
                actor: env.actor().to_owned(),
                correlation_id: env.correlation_id().map(str::to_owned),
                at: env.recorded_at,
                created_at: env.recorded_at,
            });
        }
        self.models(agent, env);
        let mut row = StatusRow::new(agent, env);
        if let Some(previous) = self.status.get(&env.agent_id) {
            row.created_at = previous.created_at;
            row.last_heartbeat_at = previous.last_heartbeat_at;
        }
        if let AgentEvent::HeartbeatLost { last_seen } = &env.event {
            row.last_heartbeat_at = last_seen.or(row.last_heartbeat_at);
        }
        self.status.insert(env.agent_id.clone(), row);
        self.events += 1;
    }

    /// Rows of the models other than status and history.
    fn models(&mut self, agent: &Agent, env: &Envelope) {
        match &env.event {
            AgentEvent::RecoveryTriggered {
                strategy,
                reason,
                attempt,
            } => self.recovery.push(RecoveryRow {
                agent_id: env.agent_id.clone(),
                sequence: Some(env.sequence),
                attempt: Some(*attempt),
                strategy: Some(strategy.as_str().to_owned()),
                reason: Some(reason.clone()),
                actor: Some(env.actor().to_owned()),
                started_at: Some(env.recorded_at),
                completed_sequence: None,
                completed_at: None,
                outcome: "in_progress",
                error: None,
                created_at: Some(env.recorded_at),
                updated_at: env.recorded_at,
            }),
            AgentEvent::RecoveryCompleted { succeeded, error } => {
                self.complete(env, *succeeded, error.clone())
            }
            AgentEvent::ErrorRecorded {
                severity,
                category,
                error_type,
                message,
                context,
            } => {
                let row = ErrorRow {
                    agent_id: env.agent_id.clone(),
                    sequence: env.sequence,
                    severity: severity.as_str(),
                    category: category.clone(),
                    error_type: error_type.clone(),
                    message: message.clone(),
                    context: context.clone(),
                    fingerprint: fingerprint(category, error_type, message),
                    actor: env.actor().to_owned(),
                    at: env.recorded_at,
                    created_at: env.recorded_at,
                };
                self.group(&row);
                self.errors.push(row);
            }
            AgentEvent::AgentRegistered { spec, .. } => {
                self.config(env, agent, &spec.config, None, None)
            }
            AgentEvent::ConfigUpdated {
                config,
                previous_version,
                ..
            } => self.config(env, agent, config, Some(*previous_version), None),
            AgentEvent::ConfigRolledBack {
                config, to_version, ..
            } => {
                let previous = agent.config_version.checked_sub(1);
                self.config(env, agent, config, previous, Some(*to_version))
            }
            _ => {}
        }
    }

    fn complete(&mut self, env: &Envelope, succeeded: bool, error: Option<String>) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        let open = self
            .recovery
            .iter_mut()
            .rev()
            .find(|r| r.agent_id == env.agent_id && r.outcome == "in_progress");
        let row = match open {
            Some(row) => row,
            None => {
                self.completions.push(RecoveryRow {
                    agent_id: env.agent_id.clone(),
                    sequence: None,
                    attempt: None,
                    strategy: None,
                    reason: None,
                    actor: None,
                    started_at: None,
                    completed_sequence: None,
                    completed_at: None,
                    outcome,
                    error: None,
                    created_at: None,
                    updated_at: env.recorded_at,
                });
                let Some(row) = self.completions.last_mut() else {
                    return;
                };
                row
            }
        };
        row.completed_sequence = Some(env.sequence);
        row.completed_at = Some(env.recorded_at);
        row.outcome = outcome;
        row.error = error;
        row.updated_at = env.recorded_at;
    }

    fn group(&mut self, e: &ErrorRow) {
        let key = (e.agent_id.clone(), e.fingerprint.clone());
        let group = self.groups.entry(key).or_insert_with(|| GroupRow {
            agent_id: e.agent_id.clone(),
            fingerprint: e.fingerprint.clone(),
            severity: e.severity,
            category: e.category.clone(),
            error_type: e.error_type.clone(),
            first_message: e.message.clone(),
            count: 0,
            first_seen: e.at,
            last_seen: e.at,
            first_sequence: e.sequence,
            last_sequence: e.sequence,
            created_at: e.at,
            updated_at: e.at,
        });
        group.count += 1;
        group.severity = e.severity;
        group.last_seen = e.at;
        group.last_sequence = e.sequence;
        group.updated_at = e.at;
    }

    fn config(
        &mut self,
        env: &Envelope,
        agent: &Agent,
        config: &serde_json::Value,
        previous: Option<u32>,
        rolled_back_to: Option<u32>,
    ) {
        let old = previous
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| agent.configs.get(usize::try_from(i).ok()?));
        self.configs.push(ConfigRow {
            agent_id: env.agent_id.clone(),
            version: agent.config_version,
            config: config.clone(),
            diff: config_diff(old, config),
            previous_version: previous,
            rolled_back_to,
            event_type: env.event.name(),
            sequence: env.sequence,
            actor: env.actor().to_owned(),
            at: env.recorded_at,
            created_at: env.recorded_at,
        });
    }
}

/// A reason for a transition when the caller gave none.
fn reason(event: &AgentEvent) -> Option<String> {
    Some(match event {
        AgentEvent::ProcessExited {
            code,
            signal,
            decision,
            ..
        } => {
            let how = match (code, signal) {
                (_, Some(s)) => format!("killed by signal {s}"),
                (Some(c), None) => format!("exit code {c}"),
                (None, None) => "exited".to_owned(),
            };
            match decision {
                RestartDecision::Restart { delay_ms, attempt } => {
                    format!("{how}; restart {attempt} in {delay_ms} ms")
                }
                RestartDecision::GiveUp { restarts_in_period } => {
                    format!("{how}; giving up after {restarts_in_period} restarts")
                }
                RestartDecision::DoNotRestart => format!("{how}; not restarted"),
            }
        }
        AgentEvent::AgentFailed { reason, .. } => reason.clone(),
        AgentEvent::HealthChanged { reason, .. } => reason.clone(),
        AgentEvent::RecoveryTriggered { reason, .. } => reason.clone(),
        AgentEvent::ProcessStarted { node, identity, .. } => {
            format!("pid {} on {node}", identity.pid)
        }
        _ => return None,
    })
}
