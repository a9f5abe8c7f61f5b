//! Given/when/then tests for the supervisor's facts, and event plumbing.

use cqrs_es::DomainEvent;
use serde_json::json;

use super::tests::{
    agent_id, expect, identity, refuse, registered, replay, run, running, spec, started, t, with,
};
use super::*;
use crate::backoff::RestartDecision;

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

#[test]
fn process_started_runs_the_agent() {
    let starting = with(registered(), &[AgentEvent::StartRequested]);
    let (events, agent) = run(starting, report_started(100, 0)).expect("starts");
    assert_eq!(events, vec![started(100, t(0))]);
    assert_eq!(agent.status, ProcessStatus::Running);
    assert_eq!(
        (agent.pid, agent.node.as_deref()),
        (Some(100), Some("node-a"))
    );
    assert_eq!(agent.process, Some(identity(100)));
    assert_eq!((agent.started_at, agent.restart_count), (Some(t(0)), 0));

    expect(running(), report_started(100, 0), vec![]);
    let reason = stale(run(running(), report_started(101, 1)));
    assert_eq!(
        reason,
        "pid 101 started while the agent is running with pid 100"
    );
    let reason = stale(run(registered(), report_started(100, 0)));
    assert!(reason.contains("meant to be stopped"), "{reason}");
    let restarting = with(running(), &[AgentEvent::RestartRequested]);
    assert!(stale(run(restarting, report_started(101, 1))).contains("stopping"));
    let err = AgentError::Validation {
        field: "identity.pid".into(),
        message: "must not be 0".into(),
    };
    refuse(
        with(registered(), &[AgentEvent::StartRequested]),
        report_started(0, 0),
        err,
    );
}

#[test]
fn a_crash_backs_off_and_the_next_start_counts_as_a_restart() {
    let (events, agent) = run(running(), exited(100, Some(1), 10)).expect("exits");
    assert_eq!(
        events,
        vec![AgentEvent::ProcessExited {
            pid: 100,
            code: Some(1),
            signal: None,
            at: t(10),
            decision: RestartDecision::Restart {
                delay_ms: 100,
                attempt: 1,
            },
        }]
    );
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Backoff, DesiredState::Running)
    );
    assert_eq!(
        (agent.pid, agent.process.as_ref(), agent.started_at),
        (None, None, None)
    );
    assert_eq!(agent.restart_window.recent, vec![t(10)]);
    assert_eq!(agent.restart_window.consecutive, 1);

    let backoff = with(running(), &events);
    let (_, agent) = run(backoff, report_started(101, 11)).expect("restarts");
    assert_eq!(
        (agent.status, agent.pid, agent.restart_count),
        (ProcessStatus::Running, Some(101), 1)
    );
}

#[test]
fn crash_loop_doubles_the_delay_then_fails_the_agent() {
    let mut history = running();
    let mut delays = Vec::new();
    for (pid, second) in [(100, 1), (101, 2)] {
        let (events, _) = run(history.clone(), exited(pid, None, second)).expect("exits");
        if let AgentEvent::ProcessExited {
            decision: RestartDecision::Restart { delay_ms, .. },
            ..
        } = events[0]
        {
            delays.push(delay_ms);
        }
        history.extend(events);
        history.push(started(pid + 1, t(second)));
    }
    assert_eq!(delays, vec![100, 200]);
    let (events, agent) = run(history.clone(), exited(102, Some(139), 3)).expect("gives up");
    assert_eq!(
        events[0],
        AgentEvent::ProcessExited {
            pid: 102,
            code: Some(139),
            signal: None,
            at: t(3),
            decision: RestartDecision::GiveUp {
                restarts_in_period: 2
            },
        }
    );
    assert_eq!(
        events[1],
        AgentEvent::AgentFailed {
            reason: "2 restarts within 60000 ms; last exit: exit code 139".into(),
            restarts_in_period: 2,
        }
    );
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Failed, DesiredState::Running)
    );
    assert_eq!(agent.restart_count, 2);
    assert!(
        agent
            .last_error
            .is_some_and(|e| e.starts_with("2 restarts"))
    );

    // A cooldown retry: the supervisor may start a failed agent again.
    let failed = with(history, &events);
    let (_, agent) = run(failed, report_started(103, 120)).expect("cooldown retry");
    assert_eq!(
        (agent.status, agent.restart_count),
        (ProcessStatus::Running, 3)
    );
}

#[test]
fn exits_that_do_not_restart() {
    // A clean exit under on-failure: stopped for good.
    let (events, agent) = run(running(), exited(100, Some(0), 5)).expect("exits");
    assert!(matches!(
        events[..],
        [AgentEvent::ProcessExited {
            decision: RestartDecision::DoNotRestart,
            ..
        }]
    ));
    assert_eq!(
        (agent.status, agent.desired),
        (ProcessStatus::Stopped, DesiredState::Stopped)
    );

    // An exit we asked for.
    let stopping = with(running(), &[AgentEvent::StopRequested]);
    let (events, agent) = run(stopping, exited(100, None, 5)).expect("exits");
    assert!(matches!(
        events[..],
        [AgentEvent::ProcessExited {
            decision: RestartDecision::DoNotRestart,
            ..
        }]
    ));
    assert_eq!(
        (agent.status, agent.pid, agent.health),
        (ProcessStatus::Stopped, None, Health::Unknown)
    );

    // Restart mode `never`.
    let mut never = spec();
    never.restart.mode = crate::spec::RestartMode::Never;
    let given = vec![
        AgentEvent::AgentRegistered {
            agent_id: agent_id(),
            spec: never,
        },
        AgentEvent::StartRequested,
        started(100, t(0)),
    ];
    let (_, agent) = run(given, exited(100, Some(1), 5)).expect("exits");
    assert_eq!(agent.status, ProcessStatus::Stopped);
}

#[test]
fn an_operator_restart_respawns_without_backoff() {
    let restarting = with(running(), &[AgentEvent::RestartRequested]);
    let (events, agent) = run(restarting.clone(), exited(100, None, 5)).expect("exits");
    assert!(matches!(
        events[..],
        [AgentEvent::ProcessExited {
            decision: RestartDecision::Restart {
                delay_ms: 0,
                attempt: 1
            },
            ..
        }]
    ));
    assert_eq!(agent.status, ProcessStatus::Starting);
    assert_eq!(
        agent.restart_window,
        backoff::RestartWindow::default(),
        "not a crash"
    );
    let (_, agent) = run(with(restarting, &events), report_started(101, 6)).expect("starts");
    assert_eq!(
        (agent.status, agent.restart_count),
        (ProcessStatus::Running, 1)
    );
}

#[test]
fn exits_of_other_processes_are_stale() {
    assert_eq!(
        stale(run(running(), exited(99, Some(1), 5))),
        "exit of pid 99 reported but the current pid is 100"
    );
    let starting = with(registered(), &[AgentEvent::StartRequested]);
    assert!(stale(run(starting, exited(100, Some(1), 5))).contains("no process"));
    let bad_sample = AgentCommand::ReportProcessExited {
        pid: 100,
        code: Some(1),
        signal: None,
        at: t(5),
        jitter_sample: 1.5,
    };
    assert!(matches!(
        run(running(), bad_sample),
        Err(AgentError::Validation { .. })
    ));
}

#[test]
fn report_stopped_completes_a_stop() {
    let stopping = with(running(), &[AgentEvent::StopRequested]);
    let stop = || AgentCommand::ReportStopped { at: t(9) };
    let (events, agent) = run(stopping.clone(), stop()).expect("stops");
    assert_eq!(events, vec![AgentEvent::ProcessStopped { at: t(9) }]);
    assert_eq!(
        (agent.status, agent.pid, agent.process),
        (ProcessStatus::Stopped, None, None)
    );
    expect(with(stopping, &events), stop(), vec![]);
    expect(registered(), stop(), vec![]);

    let restarting = with(running(), &[AgentEvent::RestartRequested]);
    let (_, agent) = run(restarting, stop()).expect("stops");
    assert_eq!(agent.status, ProcessStatus::Starting, "a restart continues");
    assert!(stale(run(running(), stop())).contains("report the exit instead"));
}

#[test]
fn health_reports_move_between_running_and_degraded() {
    let (events, agent) = run(running(), health(Health::Warning)).expect("changes");
    assert_eq!(
        events,
        vec![AgentEvent::HealthChanged {
            from: Health::Unknown,
            to: Health::Warning,
            reason: "probe".into(),
        }]
    );
    assert_eq!(
        (agent.health, agent.status),
        (Health::Warning, ProcessStatus::Degraded)
    );
    let degraded = with(running(), &events);
    expect(degraded.clone(), health(Health::Warning), vec![]);
    let (_, agent) = run(degraded, health(Health::Healthy)).expect("recovers");
    assert_eq!(
        (agent.health, agent.status),
        (Health::Healthy, ProcessStatus::Running)
    );
    let (_, agent) = run(running(), health(Health::Healthy)).expect("healthy");
    assert_eq!(agent.status, ProcessStatus::Running);
    assert!(stale(run(registered(), health(Health::Healthy))).contains("registered"));
}

#[test]
fn heartbeat_loss_is_critical_once() {
    let lost = || AgentCommand::ReportHeartbeatLost {
        last_seen: Some(t(3)),
    };
    let (events, agent) = run(running(), lost()).expect("lost");
    assert_eq!(
        events,
        vec![
            AgentEvent::HeartbeatLost {
                last_seen: Some(t(3))
            },
            AgentEvent::HealthChanged {
                from: Health::Unknown,
                to: Health::Critical,
                reason: "heartbeat lost".into(),
            },
        ]
    );
    assert!(agent.heartbeat_lost);
    assert_eq!(
        (agent.health, agent.status),
        (Health::Critical, ProcessStatus::Degraded)
    );
    let given = with(running(), &events);
    expect(given.clone(), lost(), vec![]);
    let (_, agent) = run(given, health(Health::Healthy)).expect("back");
    assert!(!agent.heartbeat_lost);

    let critical = with(
        running(),
        &[AgentEvent::HealthChanged {
            from: Health::Unknown,
            to: Health::Critical,
            reason: "probe".into(),
        }],
    );
    expect(
        critical,
        lost(),
        vec![AgentEvent::HeartbeatLost {
            last_seen: Some(t(3)),
        }],
    );
    assert!(stale(run(registered(), lost())).contains("heartbeat loss"));
}

#[test]
fn limits_need_a_process_and_errors_are_always_recorded() {
    let limit = |resource: &str| AgentCommand::ReportLimitExceeded {
        resource: resource.into(),
        limit: 1e6,
        observed: 2e6,
        window_ms: 1_000,
    };
    expect(
        running(),
        limit("memory"),
        vec![AgentEvent::ResourceLimitExceeded {
            resource: "memory".into(),
            limit: 1e6,
            observed: 2e6,
            window_ms: 1_000,
        }],
    );
    assert!(stale(run(registered(), limit("memory"))).contains("without a process"));
    assert!(matches!(
        run(running(), limit(" ")),
        Err(AgentError::Validation { .. })
    ));

    let record = AgentCommand::RecordError {
        severity: Severity::Critical,
        category: "io".into(),
        error_type: "disk_full".into(),
        message: "no space left".into(),
        context: json!({"path": "/var"}),
    };
    let (events, agent) = run(registered(), record).expect("records");
    assert!(matches!(
        &events[..],
        [AgentEvent::ErrorRecorded {
            severity: Severity::Critical,
            ..
        }]
    ));
    assert_eq!(agent.last_error.as_deref(), Some("no space left"));
}

#[test]
fn events_name_their_type_and_version() {
    let exit = AgentEvent::ProcessExited {
        pid: 1,
        code: None,
        signal: Some(9),
        at: t(0),
        decision: RestartDecision::DoNotRestart,
    };
    let mut events = running();
    events.extend([
        exit,
        AgentEvent::StopRequested,
        AgentEvent::AgentDeregistered,
    ]);
    for event in &events {
        let tag = match serde_json::to_value(event).expect("ser") {
            serde_json::Value::String(tag) => tag,
            serde_json::Value::Object(map) => map.keys().next().cloned().expect("one key"),
            other => panic!("unexpected shape {other}"),
        };
        assert_eq!(tag, event.event_type());
        let expected = if tag == "ProcessExited" { "2.0" } else { "1.0" };
        assert_eq!(event.event_version(), expected);
        let back: AgentEvent =
            serde_json::from_value(serde_json::to_value(event).expect("ser")).expect("de");
        assert_eq!(&back, event);
    }
}

#[test]
fn state_snapshots_round_trip_and_enums_are_snake_case() {
    let agent = replay(&with(
        running(),
        &[AgentEvent::HealthChanged {
            from: Health::Unknown,
            to: Health::Critical,
            reason: "x".into(),
        }],
    ));
    let json = serde_json::to_value(&agent).expect("ser");
    assert_eq!(json["status"], "degraded");
    assert_eq!(json["id"], "web-1");
    assert_eq!(serde_json::from_value::<Agent>(json).expect("de"), agent);
    assert_eq!(RecoveryStatus::InProgress.to_string(), "in_progress");
    assert_eq!(DesiredState::Running.as_str(), "running");
    assert_eq!(Severity::Warning.to_string(), "warning");
}
