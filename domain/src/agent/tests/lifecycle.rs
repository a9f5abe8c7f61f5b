//! Start, stop, restart, deregister and recovery.

use super::*;

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
