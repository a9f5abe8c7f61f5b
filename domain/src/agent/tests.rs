//! Given/when/then tests for the operator commands; shared helpers live here.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::Aggregate;
use cqrs_es::test::TestFramework;
use serde_json::json;

use super::*;
use crate::id::AgentId;
use crate::spec::{AgentSpec, RecoveryPolicy, RecoveryStrategy, SpecError};

pub(super) fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0)
        .single()
        .expect("valid time")
}

pub(super) fn agent_id() -> AgentId {
    AgentId::parse("web-1").expect("valid id")
}

/// A valid spec without jitter, allowing 2 restarts per minute.
pub(super) fn spec() -> AgentSpec {
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

pub(super) fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        boot_id: "boot-a".into(),
        start_time_ticks: u64::from(pid) * 10,
    }
}

pub(super) fn registered() -> Vec<AgentEvent> {
    vec![AgentEvent::AgentRegistered {
        agent_id: agent_id(),
        spec: spec(),
    }]
}

pub(super) fn started(pid: u32, at: DateTime<Utc>) -> AgentEvent {
    AgentEvent::ProcessStarted {
        node: "node-a".into(),
        identity: identity(pid),
        at,
    }
}

/// Registered, started, pid 100 running since `t(0)`.
pub(super) fn running() -> Vec<AgentEvent> {
    let mut events = registered();
    events.extend([AgentEvent::StartRequested, started(100, t(0))]);
    events
}

pub(super) fn with(mut events: Vec<AgentEvent>, more: &[AgentEvent]) -> Vec<AgentEvent> {
    events.extend_from_slice(more);
    events
}

pub(super) fn replay(events: &[AgentEvent]) -> Agent {
    let mut agent = Agent::default();
    for event in events {
        agent.apply(event.clone());
    }
    agent
}

/// Runs `command` through cqrs-es after `given`; returns the events and the
/// state they lead to.
pub(super) fn run(
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

pub(super) fn expect(given: Vec<AgentEvent>, command: AgentCommand, events: Vec<AgentEvent>) {
    TestFramework::<Agent>::with(())
        .given(given)
        .when(command)
        .then_expect_events(events);
}

pub(super) fn refuse(given: Vec<AgentEvent>, command: AgentCommand, error: AgentError) {
    TestFramework::<Agent>::with(())
        .given(given)
        .when(command)
        .then_expect_error(error);
}

pub(super) fn invalid(
    command: &'static str,
    status: ProcessStatus,
    desired: DesiredState,
) -> AgentError {
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

#[test]
fn register_creates_a_stopped_agent_at_version_one() {
    let (events, agent) = run(
        vec![],
        AgentCommand::Register {
            agent_id: agent_id(),
            spec: spec(),
        },
    )
    .expect("registers");
    assert_eq!(events, registered());
    assert_eq!(agent.id, Some(agent_id()));
    assert!(agent.registered && !agent.deregistered);
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Registered, DesiredState::Stopped)
    );
    assert_eq!((agent.spec_version, agent.config_version), (1, 1));
    assert_eq!(agent.configs, vec![json!({"port": 8080})]);
    assert_eq!(
        (agent.health, agent.recovery),
        (Health::Unknown, RecoveryStatus::None)
    );
    assert_eq!(Agent::TYPE, "Agent");
}

#[test]
fn register_is_refused_twice_after_deregistration_and_for_bad_specs() {
    let register = |spec| AgentCommand::Register {
        agent_id: agent_id(),
        spec,
    };
    refuse(
        registered(),
        register(spec()),
        AgentError::AlreadyRegistered,
    );
    let gone = with(registered(), &[AgentEvent::AgentDeregistered]);
    refuse(gone, register(spec()), AgentError::Deregistered);
    let mut bad = spec();
    bad.command = "web --port 80".into();
    let err = run(vec![], register(bad)).expect_err("invalid spec");
    assert!(matches!(&err, AgentError::InvalidSpec(SpecError { field, .. }) if field == "command"));
    assert!(
        err.to_string()
            .starts_with("invalid spec: `command`: command is a program"),
        "{err}"
    );
}

/// One of every command but `Register`.
fn all_other_commands() -> Vec<AgentCommand> {
    use AgentCommand as C;
    vec![
        C::UpdatePackage { spec: spec() },
        C::UpdateConfig {
            expected_version: 1,
            config: json!({}),
        },
        C::RollbackConfig { to_version: 1 },
        C::Start,
        C::Stop,
        C::Restart,
        C::TriggerRecovery {
            strategy: RecoveryStrategy::Restart,
            reason: "r".into(),
        },
        C::SetRecoveryPolicy {
            policy: RecoveryPolicy::default(),
        },
        C::Deregister,
        C::ReportProcessStarted {
            node: "n".into(),
            identity: identity(1),
            at: t(0),
        },
        C::ReportProcessExited {
            pid: 1,
            code: Some(0),
            signal: None,
            at: t(0),
            jitter_sample: 0.5,
        },
        C::ReportStopped { at: t(0) },
        C::ReportHealth {
            health: Health::Healthy,
            reason: "ok".into(),
        },
        C::ReportHeartbeatLost { last_seen: None },
        C::ReportLimitExceeded {
            resource: "memory".into(),
            limit: 1.0,
            observed: 2.0,
            window_ms: 1_000,
        },
        C::RecordError {
            severity: Severity::Error,
            category: "io".into(),
            error_type: "disk".into(),
            message: "full".into(),
            context: json!({}),
        },
        C::CompleteRecovery {
            succeeded: true,
            error: None,
        },
    ]
}

#[test]
fn unregistered_and_deregistered_agents_refuse_everything() {
    let gone = with(registered(), &[AgentEvent::AgentDeregistered]);
    for command in all_other_commands() {
        refuse(vec![], command.clone(), AgentError::NotRegistered);
        refuse(gone.clone(), command, AgentError::Deregistered);
    }
}

#[test]
fn update_package_bumps_the_spec_version_and_keeps_config_history() {
    let mut new = spec();
    new.package_version = "2.0.0".into();
    new.config = json!({"ignored": true});
    let mut expected = new.clone();
    expected.config = json!({"port": 9090});
    let given = with(
        registered(),
        &[AgentEvent::ConfigUpdated {
            version: 2,
            config: json!({"port": 9090}),
            previous_version: 1,
        }],
    );
    let (events, agent) =
        run(given.clone(), AgentCommand::UpdatePackage { spec: new }).expect("updates");
    assert_eq!(
        events,
        vec![AgentEvent::PackageUpdated {
            spec: expected.clone(),
            spec_version: 2,
        }]
    );
    assert_eq!(agent.spec, Some(expected.clone()));
    assert_eq!((agent.spec_version, agent.config_version), (2, 2));

    let same = with(given, &events);
    expect(
        same.clone(),
        AgentCommand::UpdatePackage { spec: expected },
        vec![],
    );
    let mut bad = spec();
    bad.restart.multiplier = 0.0;
    let err = run(same, AgentCommand::UpdatePackage { spec: bad }).expect_err("invalid");
    assert!(
        matches!(err, AgentError::InvalidSpec(SpecError { ref field, .. }) if field == "restart.multiplier")
    );
}

#[test]
fn update_config_is_optimistic_and_wants_an_object() {
    let (events, agent) = run(
        registered(),
        AgentCommand::UpdateConfig {
            expected_version: 1,
            config: json!({"port": 1}),
        },
    )
    .expect("updates");
    assert_eq!(
        events,
        vec![AgentEvent::ConfigUpdated {
            version: 2,
            config: json!({"port": 1}),
            previous_version: 1,
        }]
    );
    assert_eq!(agent.config_version, 2);
    assert_eq!(agent.config(), Some(&json!({"port": 1})));
    assert_eq!(agent.spec.map(|s| s.config), Some(json!({"port": 1})));

    let update = |expected_version, config| AgentCommand::UpdateConfig {
        expected_version,
        config,
    };
    let err = AgentError::VersionConflict {
        expected: 3,
        actual: 2,
    };
    refuse(with(registered(), &events), update(3, json!({})), err);
    let err = AgentError::Validation {
        field: "config".into(),
        message: "must be a JSON object".into(),
    };
    refuse(registered(), update(1, json!("text")), err);
}

#[test]
fn rollback_makes_an_old_config_current_as_a_new_version() {
    let given = with(
        registered(),
        &[AgentEvent::ConfigUpdated {
            version: 2,
            config: json!({"port": 2}),
            previous_version: 1,
        }],
    );
    let (events, agent) = run(
        given.clone(),
        AgentCommand::RollbackConfig { to_version: 1 },
    )
    .expect("rolls back");
    assert_eq!(
        events,
        vec![AgentEvent::ConfigRolledBack {
            version: 3,
            to_version: 1,
            config: json!({"port": 8080}),
        }]
    );
    assert_eq!(agent.config_version, 3);
    assert_eq!(agent.configs.len(), 3);
    assert_eq!(agent.config(), Some(&json!({"port": 8080})));

    for to_version in [0, 2, 3] {
        let err = AgentError::UnknownConfigVersion {
            requested: to_version,
            latest: 2,
        };
        refuse(
            given.clone(),
            AgentCommand::RollbackConfig { to_version },
            err,
        );
    }
}

#[test]
fn start_from_rest_is_requested_and_repeats_are_no_ops() {
    let (events, agent) = run(registered(), AgentCommand::Start).expect("starts");
    assert_eq!(events, vec![AgentEvent::StartRequested]);
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Starting, DesiredState::Running)
    );
    expect(
        stopped(),
        AgentCommand::Start,
        vec![AgentEvent::StartRequested],
    );

    let (_, agent) = run(failed(), AgentCommand::Start).expect("manual retry");
    assert_eq!(agent.status, ProcessStatus::Starting);
    assert_eq!(agent.restart_window, backoff::RestartWindow::default());

    let starting = with(registered(), &[AgentEvent::StartRequested]);
    let restarting = with(running(), &[AgentEvent::RestartRequested]);
    for given in [starting, running(), backing_off(), restarting] {
        expect(given, AgentCommand::Start, vec![]);
    }
    let stopping = with(running(), &[AgentEvent::StopRequested]);
    let err = run(stopping, AgentCommand::Start).expect_err("stopping");
    assert_eq!(
        err,
        invalid("start", ProcessStatus::Stopping, DesiredState::Stopped)
    );
    assert_eq!(
        err.to_string(),
        "cannot start while the agent is stopping (desired: stopped)"
    );
}

#[test]
fn stop_waits_for_a_process_or_stops_at_once() {
    let (_, agent) = run(running(), AgentCommand::Stop).expect("stops");
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Stopping, DesiredState::Stopped)
    );
    assert_eq!(agent.pid, Some(100), "the process is still there");
    let starting = with(registered(), &[AgentEvent::StartRequested]);
    let (_, agent) = run(starting, AgentCommand::Stop).expect("stops");
    assert_eq!(agent.status, ProcessStatus::Stopping);
    let restarting = with(running(), &[AgentEvent::RestartRequested]);
    let (_, agent) = run(restarting, AgentCommand::Stop).expect("cancels restart");
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Stopping, DesiredState::Stopped)
    );

    for given in [backing_off(), failed()] {
        let (events, agent) = run(given, AgentCommand::Stop).expect("stops");
        assert_eq!(events, vec![AgentEvent::StopRequested]);
        assert_eq!(
            (agent.status, agent.desired),
            (ProcessStatus::Stopped, DesiredState::Stopped)
        );
    }
    let stopping = with(running(), &[AgentEvent::StopRequested]);
    for given in [registered(), stopped(), stopping] {
        expect(given, AgentCommand::Stop, vec![]);
    }
}

#[test]
fn restart_needs_something_to_restart() {
    let (events, agent) = run(running(), AgentCommand::Restart).expect("restarts");
    assert_eq!(events, vec![AgentEvent::RestartRequested]);
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Stopping, DesiredState::Running)
    );
    for given in [backing_off(), failed()] {
        let (_, agent) = run(given, AgentCommand::Restart).expect("restarts");
        assert_eq!(
            (agent.status, agent.desired),
            (ProcessStatus::Starting, DesiredState::Running)
        );
        assert_eq!(agent.restart_window.consecutive, 0);
    }
    let starting = with(registered(), &[AgentEvent::StartRequested]);
    let cases = [
        (
            registered(),
            ProcessStatus::Registered,
            DesiredState::Stopped,
        ),
        (stopped(), ProcessStatus::Stopped, DesiredState::Stopped),
        (starting, ProcessStatus::Starting, DesiredState::Running),
    ];
    for (given, status, desired) in cases {
        refuse(
            given,
            AgentCommand::Restart,
            invalid("restart", status, desired),
        );
    }
}

#[test]
fn deregister_only_without_a_process() {
    for given in [registered(), stopped()] {
        let (events, agent) = run(given, AgentCommand::Deregister).expect("deregisters");
        assert_eq!(events, vec![AgentEvent::AgentDeregistered]);
        assert!(agent.deregistered);
    }
    let cases = [
        (running(), ProcessStatus::Running, DesiredState::Running),
        (failed(), ProcessStatus::Failed, DesiredState::Running),
        (backing_off(), ProcessStatus::Backoff, DesiredState::Running),
    ];
    for (given, status, desired) in cases {
        refuse(
            given,
            AgentCommand::Deregister,
            invalid("deregister", status, desired),
        );
    }
}

#[test]
fn recovery_runs_one_attempt_at_a_time_up_to_the_limit() {
    let trigger = || AgentCommand::TriggerRecovery {
        strategy: RecoveryStrategy::Reload,
        reason: "critical".into(),
    };
    let (events, agent) = run(running(), trigger()).expect("triggers");
    assert_eq!(
        events,
        vec![AgentEvent::RecoveryTriggered {
            strategy: RecoveryStrategy::Reload,
            reason: "critical".into(),
            attempt: 1,
        }]
    );
    assert_eq!(
        (agent.recovery, agent.recovery_attempts),
        (RecoveryStatus::InProgress, 1)
    );
    let in_progress = with(running(), &events);
    refuse(
        in_progress.clone(),
        trigger(),
        AgentError::RecoveryInProgress { attempt: 1 },
    );
    let err = invalid(
        "trigger recovery",
        ProcessStatus::Registered,
        DesiredState::Stopped,
    );
    refuse(registered(), trigger(), err);
    let none = AgentCommand::TriggerRecovery {
        strategy: RecoveryStrategy::None,
        reason: "x".into(),
    };
    assert!(matches!(
        run(running(), none),
        Err(AgentError::Validation { .. })
    ));

    // Three failed attempts exhaust the default `max_attempts` of 3.
    let mut history = running();
    for attempt in 1..=3 {
        history.extend([
            AgentEvent::RecoveryTriggered {
                strategy: RecoveryStrategy::Restart,
                reason: "r".into(),
                attempt,
            },
            AgentEvent::RecoveryCompleted {
                succeeded: false,
                error: Some("still broken".into()),
            },
        ]);
    }
    let exhausted = AgentError::RecoveryExhausted {
        attempts: 3,
        max_attempts: 3,
    };
    refuse(history, trigger(), exhausted);
}

#[test]
fn complete_recovery_needs_one_in_progress() {
    let in_progress = with(
        running(),
        &[AgentEvent::RecoveryTriggered {
            strategy: RecoveryStrategy::Restart,
            reason: "r".into(),
            attempt: 1,
        }],
    );
    let complete = |succeeded, error| AgentCommand::CompleteRecovery { succeeded, error };
    let (events, agent) = run(in_progress.clone(), complete(true, None)).expect("completes");
    assert_eq!(
        events,
        vec![AgentEvent::RecoveryCompleted {
            succeeded: true,
            error: None
        }]
    );
    assert_eq!(
        (agent.recovery, agent.recovery_attempts),
        (RecoveryStatus::Succeeded, 0)
    );
    let (_, agent) = run(in_progress, complete(false, Some("nope".into()))).expect("completes");
    assert_eq!(
        (agent.recovery, agent.recovery_attempts),
        (RecoveryStatus::Failed, 1)
    );
    assert_eq!(agent.last_error.as_deref(), Some("nope"));
    refuse(
        running(),
        complete(true, None),
        AgentError::NoRecoveryInProgress,
    );
}

#[test]
fn set_recovery_policy_replaces_the_spec_policy() {
    let policy = RecoveryPolicy {
        strategy: RecoveryStrategy::Reload,
        auto: false,
        max_attempts: 1,
    };
    let (events, agent) = run(
        registered(),
        AgentCommand::SetRecoveryPolicy {
            policy: policy.clone(),
        },
    )
    .expect("sets");
    assert_eq!(
        events,
        vec![AgentEvent::RecoveryPolicySet {
            policy: policy.clone()
        }]
    );
    assert_eq!(agent.spec.map(|s| s.recovery), Some(policy));
    let bad = RecoveryPolicy {
        max_attempts: 0,
        ..RecoveryPolicy::default()
    };
    let err = AgentError::InvalidSpec(SpecError::new(
        "recovery.max_attempts",
        "must be at least 1",
    ));
    refuse(
        registered(),
        AgentCommand::SetRecoveryPolicy { policy: bad },
        err,
    );
}
