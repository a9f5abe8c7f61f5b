//! Health, heartbeats, limits and errors; event and state serialization.

use cqrs_es::DomainEvent;
use serde_json::json;

use super::*;

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
