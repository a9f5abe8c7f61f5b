//! `ApplyPackage`: a package as discovery read it. Changes of its config
//! layers become config versions; values set at runtime stay on top.

use serde_json::{Value, json};

use super::*;

/// The spec of a package at `version` whose layers give `config`.
fn package(version: &str, config: Value) -> AgentSpec {
    AgentSpec {
        package_version: version.into(),
        package_dir: Some("/srv/agents/web".into()),
        config,
        ..spec()
    }
}

/// Registered from `package("1.0.0", {"port": 8080})`, then `level` set at
/// runtime (version 2).
fn tuned() -> Vec<AgentEvent> {
    vec![
        AgentEvent::AgentRegistered {
            agent_id: agent_id(),
            spec: package("1.0.0", json!({"port": 8080})),
        },
        AgentEvent::ConfigUpdated {
            version: 2,
            config: json!({"port": 8080, "level": "debug"}),
            previous_version: 1,
            package_config: None,
        },
    ]
}

fn apply(spec: AgentSpec) -> AgentCommand {
    AgentCommand::ApplyPackage { spec }
}

#[test]
fn changed_layers_become_a_version_with_runtime_values_on_top() {
    assert_eq!(
        replay(&tuned()).package_config,
        Some(json!({"port": 8080})),
        "registered from a package: its layers are recorded"
    );
    assert_eq!(replay(&registered()).package_config, None, "not a package");

    let (events, agent) =
        run(tuned(), apply(package("1.0.0", json!({"port": 9090})))).expect("applies");
    assert_eq!(
        events,
        vec![AgentEvent::ConfigUpdated {
            version: 3,
            config: json!({"port": 9090, "level": "debug"}),
            previous_version: 2,
            package_config: Some(json!({"port": 9090})),
        }]
    );
    assert_eq!(agent.package_config, Some(json!({"port": 9090})));
    assert_eq!(agent.spec_version, 1, "the spec is as it was");
    assert_eq!(
        agent.spec.map(|s| s.config),
        Some(json!({"port": 9090, "level": "debug"}))
    );

    // The same layers again: nothing; the runtime value is not undone.
    let given = with(tuned(), &events);
    expect(
        given.clone(),
        apply(package("1.0.0", json!({"port": 9090}))),
        vec![],
    );
    expect(
        tuned(),
        apply(package("1.0.0", json!({"port": 8080}))),
        vec![],
    );

    // A new version and new layers: both, spec first (with the config it
    // had), then the config.
    let (events, agent) = run(
        given,
        apply(package("2.0.0", json!({"port": 9090, "workers": 4}))),
    )
    .expect("applies both");
    assert_eq!(
        events,
        vec![
            AgentEvent::PackageUpdated {
                spec: package("2.0.0", json!({"port": 9090, "level": "debug"})),
                spec_version: 2,
            },
            AgentEvent::ConfigUpdated {
                version: 4,
                config: json!({"port": 9090, "level": "debug", "workers": 4}),
                previous_version: 3,
                package_config: Some(json!({"port": 9090, "workers": 4})),
            },
        ]
    );
    assert_eq!((agent.spec_version, agent.config_version), (2, 4));
    assert_eq!(
        agent.spec.map(|s| s.package_version),
        Some("2.0.0".to_owned())
    );
}

#[test]
fn a_new_schema_must_fit_the_layers_and_the_runtime_values() {
    let schema = json!({
        "type": "object",
        "properties": {"level": {"enum": ["info", "warn"]}, "port": {"type": "integer"}}
    });
    let strict = |config: Value| AgentSpec {
        config_schema: Some(schema.clone()),
        ..package("2.0.0", config)
    };
    // The runtime `level` does not fit: refused, saying where it came from.
    let err = run(tuned(), apply(strict(json!({"port": 1})))).expect_err("runtime value");
    let AgentError::Validation { field, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(field, "config.level");
    assert!(
        message.starts_with("\"debug\" is not one of")
            && message.contains("set at runtime through the config API"),
        "{message}"
    );
    // The layers themselves do not fit: refused as an invalid spec.
    let err = run(tuned(), apply(strict(json!({"port": "x"})))).expect_err("layers");
    assert!(
        matches!(&err, AgentError::InvalidSpec(SpecError { field, .. }) if field == "config.port"),
        "{err:?}"
    );
    // Once the runtime value fits, the package applies.
    let fixed = with(
        tuned(),
        &[AgentEvent::ConfigUpdated {
            version: 3,
            config: json!({"port": 8080, "level": "warn"}),
            previous_version: 2,
            package_config: None,
        }],
    );
    let (events, _) = run(fixed, apply(strict(json!({"port": 1})))).expect("fits");
    assert_eq!(events.len(), 2, "{events:?}");
}
