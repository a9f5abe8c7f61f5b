//! Process facts from the supervisor: started, exited, stopped.

use super::*;

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
fn a_spawn_failure_fails_the_agent_and_a_start_tries_again() {
    let spawn_failed = || AgentCommand::ReportSpawnFailed {
        message: "program `web` not found".into(),
        context: json!({"command": "web"}),
    };
    let starting = with(registered(), &[AgentEvent::StartRequested]);
    let (events, agent) = run(starting, spawn_failed()).expect("fails the agent");
    assert_eq!(
        events,
        vec![
            AgentEvent::ErrorRecorded {
                severity: Severity::Error,
                category: "process".into(),
                error_type: "SpawnFailed".into(),
                message: "program `web` not found".into(),
                context: json!({"command": "web"}),
            },
            AgentEvent::AgentFailed {
                reason: "cannot start the process: program `web` not found".into(),
                restarts_in_period: 0,
            },
        ]
    );
    assert_eq!(agent.status, ProcessStatus::Failed);
    assert_eq!(agent.desired, DesiredState::Running);
    assert_eq!(
        agent.last_error.as_deref(),
        Some("cannot start the process: program `web` not found")
    );

    // Failed: a Start asks again; a second report is stale.
    let failed = with(with(registered(), &[AgentEvent::StartRequested]), &events);
    expect(
        failed.clone(),
        AgentCommand::Start,
        vec![AgentEvent::StartRequested],
    );
    assert!(stale(run(failed, spawn_failed())).contains("failed"));

    // After a crash, in backoff, the respawn can fail too.
    let crashed = AgentCommand::ReportProcessExited {
        pid: 100,
        code: Some(1),
        signal: None,
        at: t(5),
        jitter_sample: 0.5,
    };
    let (exit, agent) = run(running(), crashed).expect("exits");
    assert_eq!(agent.status, ProcessStatus::Backoff);
    let (events, agent) = run(with(running(), &exit), spawn_failed()).expect("fails from backoff");
    assert_eq!(events.len(), 2);
    assert_eq!(agent.status, ProcessStatus::Failed);

    // Not while running, stopped or meant to stop.
    assert!(stale(run(running(), spawn_failed())).contains("running"));
    assert!(stale(run(registered(), spawn_failed())).contains("registered"));
    let empty = AgentCommand::ReportSpawnFailed {
        message: " ".into(),
        context: json!({}),
    };
    refuse(
        with(registered(), &[AgentEvent::StartRequested]),
        empty,
        AgentError::Validation {
            field: "message".into(),
            message: "must not be empty".into(),
        },
    );
}
