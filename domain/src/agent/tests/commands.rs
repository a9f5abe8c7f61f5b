//! Register, package and config commands; refusals before and after life.

use serde_json::json;

use super::*;

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
    let mut own = spec();
    own.requires.insert(agent_id().to_string());
    let err = run(vec![], register(own.clone())).expect_err("requires itself");
    assert_eq!(
        err.to_string(),
        format!("`requires`: `{}` cannot require itself", agent_id())
    );
    let err = run(registered(), AgentCommand::UpdatePackage { spec: own }).expect_err("update");
    assert!(matches!(err, AgentError::Validation { field, .. } if field == "requires"));
}

/// One of every command but `Register`.
fn all_other_commands() -> Vec<AgentCommand> {
    use AgentCommand as C;
    vec![
        C::UpdatePackage { spec: spec() },
        C::ApplyPackage { spec: spec() },
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
        C::ReportSpawnFailed {
            message: "program `x` not found".into(),
            context: json!({}),
        },
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
            package_config: None,
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
            package_config: None,
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
            package_config: None,
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
fn configs_must_satisfy_the_schema_on_register_update_rollback_and_new_packages() {
    let mut with_schema = spec();
    with_schema.config_schema = Some(json!({
        "type": "object",
        "properties": {"port": {"type": "integer", "maximum": 65535}}
    }));
    // Register: the initial config is checked.
    let mut bad = with_schema.clone();
    bad.config = json!({"port": "http"});
    let register = |spec| AgentCommand::Register {
        agent_id: agent_id(),
        spec,
    };
    let err = run(vec![], register(bad)).expect_err("bad initial config");
    assert_eq!(
        err.to_string(),
        "invalid spec: `config.port`: \"http\" is not of type \"integer\""
    );
    let given = vec![AgentEvent::AgentRegistered {
        agent_id: agent_id(),
        spec: with_schema.clone(),
    }];
    // UpdateConfig: refused with the failing path.
    let update = AgentCommand::UpdateConfig {
        expected_version: 1,
        config: json!({"port": 70000}),
    };
    refuse(
        given.clone(),
        update,
        AgentError::Validation {
            field: "config.port".into(),
            message: "70000 is greater than the maximum of 65535".into(),
        },
    );
    // Rollback to a config the (newer) schema refuses.
    let mut stricter = with_schema.clone();
    stricter.config_schema = Some(json!({"type": "object", "required": ["port"]}));
    let history = with(
        vec![AgentEvent::AgentRegistered {
            agent_id: agent_id(),
            spec: AgentSpec {
                config: json!({}),
                ..spec()
            },
        }],
        &[
            AgentEvent::ConfigUpdated {
                version: 2,
                config: json!({"port": 1}),
                previous_version: 1,
                package_config: None,
            },
            AgentEvent::PackageUpdated {
                spec: AgentSpec {
                    config: json!({"port": 1}),
                    ..stricter.clone()
                },
                spec_version: 2,
            },
        ],
    );
    let err = run(
        history.clone(),
        AgentCommand::RollbackConfig { to_version: 1 },
    )
    .expect_err("rollback to a refused config");
    assert!(
        matches!(&err, AgentError::Validation { field, message } if field == "config" && message == "\"port\" is a required property"),
        "{err}"
    );
    // A new package whose schema the current config does not satisfy.
    let mut narrower = with_schema;
    narrower.config_schema =
        Some(json!({"type": "object", "properties": {"port": {"maximum": 10}}}));
    narrower.config = json!({"port": 5}); // the package's own config is fine
    let given = with(
        given,
        &[AgentEvent::ConfigUpdated {
            version: 2,
            config: json!({"port": 80}),
            previous_version: 1,
            package_config: None,
        }],
    );
    let err = run(given, AgentCommand::UpdatePackage { spec: narrower }).expect_err("narrower");
    assert_eq!(
        err.to_string(),
        "`config.port`: 80 is greater than the maximum of 10"
    );
}
