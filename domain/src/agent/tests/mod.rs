//! Given/when/then tests of the `Agent` aggregate, through cqrs-es's
//! `TestFramework`. Shared fixtures live here:
//!
//! - `commands`: register, package and config commands, refusals of
//!   unregistered/deregistered agents.
//! - `lifecycle`: start, stop, restart, deregister, recovery.
//! - `package`: a package applied by discovery (layers vs runtime changes).
//! - `facts`: process started/exited/stopped reported by the supervisor.
//! - `reports`: health, heartbeats, limits, errors; event and state serde.

mod commands;
mod facts;
mod lifecycle;
mod package;
mod reports;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::Aggregate;
use cqrs_es::test::TestFramework;
use serde_json::json;

use super::*;
use crate::id::AgentId;
use crate::spec::{AgentSpec, RecoveryPolicy, RecoveryStrategy, SpecError};

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0)
        .single()
        .expect("valid time")
}

fn agent_id() -> AgentId {
    AgentId::parse("web-1").expect("valid id")
}

/// A valid spec without jitter, allowing 2 restarts per minute.
fn spec() -> AgentSpec {
    let mut spec = AgentSpec {
        agent_type: "web".into(),
        command: "/usr/bin/web".into(),
        config: json!({"port": 8080}),
        ..AgentSpec::default()
    };
    spec.restart.jitter = 0.0;
    spec.restart.intensity = 2;
    spec
}

fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        boot_id: "boot-a".into(),
        start_time_ticks: u64::from(pid) * 10,
    }
}

fn registered() -> Vec<AgentEvent> {
    vec![AgentEvent::AgentRegistered {
        agent_id: agent_id(),
        spec: spec(),
    }]
}

fn started(pid: u32, at: DateTime<Utc>) -> AgentEvent {
    AgentEvent::ProcessStarted {
        node: "node-a".into(),
        identity: identity(pid),
        at,
    }
}

/// Registered, started, pid 100 running since `t(0)`.
fn running() -> Vec<AgentEvent> {
    let mut events = registered();
    events.extend([AgentEvent::StartRequested, started(100, t(0))]);
    events
}

fn with(mut events: Vec<AgentEvent>, more: &[AgentEvent]) -> Vec<AgentEvent> {
    events.extend_from_slice(more);
    events
}

fn replay(events: &[AgentEvent]) -> Agent {
    let mut agent = Agent::default();
    for event in events {
        agent.apply(event.clone());
    }
    agent
}

/// Runs `command` through cqrs-es after `given`; returns the events and the
/// state they lead to.
fn run(
    given: Vec<AgentEvent>,
    command: AgentCommand,
) -> Result<(Vec<AgentEvent>, Agent), AgentError> {
    let events = TestFramework::<Agent>::with(())
        .given(given.clone())
        .when(command)
        .inspect_result()?;
    let state = replay(&with(given, &events));
    Ok((events, state))
}

fn expect(given: Vec<AgentEvent>, command: AgentCommand, events: Vec<AgentEvent>) {
    TestFramework::<Agent>::with(())
        .given(given)
        .when(command)
        .then_expect_events(events);
}

fn refuse(given: Vec<AgentEvent>, command: AgentCommand, error: AgentError) {
    TestFramework::<Agent>::with(())
        .given(given)
        .when(command)
        .then_expect_error(error);
}

fn invalid(command: &'static str, status: ProcessStatus, desired: DesiredState) -> AgentError {
    AgentError::InvalidTransition {
        command,
        status,
        desired,
    }
}

fn stopped() -> Vec<AgentEvent> {
    with(
        running(),
        &[
            AgentEvent::StopRequested,
            AgentEvent::ProcessStopped { at: t(5) },
        ],
    )
}

fn failed() -> Vec<AgentEvent> {
    with(
        running(),
        &[
            AgentEvent::ProcessExited {
                pid: 100,
                code: Some(1),
                signal: None,
                at: t(1),
                decision: backoff::RestartDecision::GiveUp {
                    restarts_in_period: 2,
                },
            },
            AgentEvent::AgentFailed {
                reason: "crashing".into(),
                restarts_in_period: 2,
            },
        ],
    )
}

fn backing_off() -> Vec<AgentEvent> {
    with(
        running(),
        &[AgentEvent::ProcessExited {
            pid: 100,
            code: Some(1),
            signal: None,
            at: t(1),
            decision: backoff::RestartDecision::Restart {
                delay_ms: 100,
                attempt: 1,
            },
        }],
    )
}

fn exited(pid: u32, code: Option<i32>, at_seconds: i64) -> AgentCommand {
    AgentCommand::ReportProcessExited {
        pid,
        code,
        signal: None,
        at: t(at_seconds),
        jitter_sample: 0.5,
    }
}

fn report_started(pid: u32, at_seconds: i64) -> AgentCommand {
    AgentCommand::ReportProcessStarted {
        node: "node-a".into(),
        identity: identity(pid),
        at: t(at_seconds),
    }
}

fn health(health: Health) -> AgentCommand {
    AgentCommand::ReportHealth {
        health,
        reason: "probe".into(),
    }
}

fn stale(result: Result<(Vec<AgentEvent>, Agent), AgentError>) -> String {
    match result {
        Err(AgentError::StaleFact { reason }) => reason,
        other => panic!("expected a stale fact, got {other:?}"),
    }
}
