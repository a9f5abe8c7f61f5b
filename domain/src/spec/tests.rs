use serde_json::json;

use super::*;

fn valid() -> AgentSpec {
    AgentSpec {
        agent_type: "collector".into(),
        package_version: "1.2.3".into(),
        command: "/usr/bin/collector".into(),
        args: vec!["--port".into(), "9000".into()],
        env: BTreeMap::from([
            ("TOKEN".into(), "hunter2".into()),
            ("MODE".into(), "fast".into()),
        ]),
        secret_env: BTreeSet::from(["TOKEN".into()]),
        ..AgentSpec::default()
    }
}

/// The field named by the first validation error of `spec`.
fn failing_field(spec: &AgentSpec) -> String {
    spec.validate().expect_err("spec should be invalid").field
}

#[test]
fn defaults_are_documented_values_and_valid() {
    let spec = valid();
    assert_eq!(spec.validate(), Ok(()));
    assert_eq!(spec.stop_signal, "SIGTERM");
    assert_eq!(spec.stop_grace_ms, 10_000);
    assert_eq!(spec.config, json!({}));
    assert_eq!(
        spec.heartbeat,
        HeartbeatSpec {
            interval_ms: 5_000,
            timeout_ms: 15_000,
            startup_grace_ms: 30_000,
            enabled: true
        }
    );
    let r = &spec.restart;
    assert_eq!(r.mode, RestartMode::OnFailure);
    assert_eq!(
        (r.initial_delay_ms, r.max_delay_ms, r.reset_after_ms),
        (100, 30_000, 60_000)
    );
    assert_eq!((r.multiplier, r.jitter), (2.0, 0.1));
    assert_eq!(
        (r.intensity, r.period_ms, r.failed_cooldown_ms),
        (5, 60_000, None)
    );
    assert_eq!(
        spec.recovery,
        RecoveryPolicy {
            strategy: RecoveryStrategy::Restart,
            auto: true,
            max_attempts: 3
        }
    );
    assert_eq!(spec.health_check.check, HealthCheck::Heartbeat);
}

#[test]
fn partial_json_fills_defaults_and_typos_are_rejected() {
    let spec: AgentSpec = serde_json::from_value(json!({
        "agent_type": "collector",
        "command": "collector",
        "restart": {"mode": "always", "intensity": 2},
        "health_check": {"check": {"kind": "tcp", "host": "localhost", "port": 80}},
    }))
    .expect("partial spec");
    assert_eq!(spec.restart.mode, RestartMode::Always);
    assert_eq!(spec.restart.intensity, 2);
    assert_eq!(spec.restart.max_delay_ms, 30_000);
    assert_eq!(
        spec.health_check.check,
        HealthCheck::Tcp {
            host: "localhost".into(),
            port: 80
        }
    );
    assert_eq!(spec.health_check.failure_threshold, 3);
    assert_eq!(spec.validate(), Ok(()));

    for typo in [
        json!({"comand": "x"}),
        json!({"restart": {"intesity": 3}}),
        json!({"health_check": {"check": {"kind": "http", "url": "http://x", "method": "GET"}}}),
        json!({"restart": {"mode": "sometimes"}}),
    ] {
        assert!(
            serde_json::from_value::<AgentSpec>(typo.clone()).is_err(),
            "{typo}"
        );
    }
}

#[test]
fn round_trips_through_json() {
    let mut spec = valid();
    spec.health_check.check = HealthCheck::Exec {
        command: "/bin/check".into(),
        args: vec!["-q".into()],
    };
    spec.limits.cpu_percent = Some(150.0);
    let value = serde_json::to_value(&spec).expect("ser");
    assert_eq!(value["health_check"]["check"]["kind"], "exec");
    assert_eq!(value["restart"]["mode"], "on_failure");
    assert_eq!(
        serde_json::from_value::<AgentSpec>(value).expect("de"),
        spec
    );
}

#[test]
fn command_must_be_a_program() {
    let mut spec = valid();
    spec.command = "python -m server".into();
    let err = spec.validate().expect_err("shell line");
    assert_eq!(
        err.to_string(),
        "`command`: command is a program, not a shell line: put arguments in `args`"
    );
    spec.command = "/opt/my app/bin/run".into();
    assert_eq!(spec.validate(), Ok(()), "a path with a space is fine");
    for bad in ["", "  ", "a\0b"] {
        spec.command = bad.into();
        assert_eq!(failing_field(&spec), "command");
    }
}

#[test]
fn each_rule_names_its_field() {
    type Breaker = fn(&mut AgentSpec);
    let cases: Vec<(Breaker, &str)> = vec![
        (|s| s.agent_type.clear(), "agent_type"),
        (|s| s.args.push("a\0".into()), "args"),
        (|s| _ = s.env.insert(String::new(), "v".into()), "env"),
        (|s| _ = s.env.insert("A=B".into(), "v".into()), "env"),
        (|s| _ = s.env.insert("A\0".into(), "v".into()), "env"),
        (|s| _ = s.secret_env.insert("MISSING".into()), "secret_env"),
        (|s| s.working_dir = Some(String::new()), "working_dir"),
        (|s| s.heartbeat.interval_ms = 0, "heartbeat.interval_ms"),
        (|s| s.heartbeat.timeout_ms = 4_999, "heartbeat.timeout_ms"),
        (|s| s.restart.max_delay_ms = 99, "restart.max_delay_ms"),
        (|s| s.restart.multiplier = 0.5, "restart.multiplier"),
        (|s| s.restart.multiplier = f64::NAN, "restart.multiplier"),
        (|s| s.restart.jitter = 1.5, "restart.jitter"),
        (|s| s.restart.jitter = -0.1, "restart.jitter"),
        (|s| s.restart.intensity = 0, "restart.intensity"),
        (|s| s.restart.period_ms = 0, "restart.period_ms"),
        (|s| s.limits.cpu_percent = Some(0.0), "limits.cpu_percent"),
        (
            |s| s.limits.cpu_percent = Some(102_400.5),
            "limits.cpu_percent",
        ),
        (
            |s| s.limits.memory_bytes = Some(1_048_575),
            "limits.memory_bytes",
        ),
        (|s| s.limits.open_files = Some(0), "limits.open_files"),
        (|s| s.stop_signal = "SIGSTOP".into(), "stop_signal"),
        (
            |s| s.health_check.failure_threshold = 0,
            "health_check.failure_threshold",
        ),
        (
            |s| s.health_check.interval_ms = 0,
            "health_check.interval_ms",
        ),
        (
            |s| {
                s.health_check.check = HealthCheck::Http {
                    url: "ftp://x".into(),
                }
            },
            "health_check.check.url",
        ),
        (
            |s| {
                s.health_check.check = HealthCheck::Tcp {
                    host: "h".into(),
                    port: 0,
                }
            },
            "health_check.check.port",
        ),
        (|s| s.recovery.max_attempts = 0, "recovery.max_attempts"),
        (|s| s.config = json!([1, 2]), "config"),
        (|s| s.config_schema = Some(json!(true)), "config_schema"),
        (|s| _ = s.requires.insert("Db".into()), "requires"),
        (|s| s.package_dir = Some("pkg/a".into()), "package_dir"),
    ];
    for (breaker, field) in cases {
        let mut spec = valid();
        breaker(&mut spec);
        assert_eq!(failing_field(&spec), field);
    }
    let mut edge = valid();
    edge.limits.cpu_percent = Some(MAX_CPU_PERCENT);
    edge.limits.memory_bytes = Some(MIN_MEMORY_BYTES);
    edge.heartbeat.timeout_ms = edge.heartbeat.interval_ms;
    edge.restart.initial_delay_ms = 0;
    edge.restart.jitter = 1.0;
    edge.stop_signal = "SIGKILL".into();
    assert_eq!(edge.validate(), Ok(()), "boundaries are inclusive");
}

#[test]
fn redacted_hides_only_secret_values() {
    let spec = valid();
    let shown = spec.redacted();
    assert_eq!(shown.env["TOKEN"], "***");
    assert_eq!(shown.env["MODE"], "fast");
    assert_eq!(spec.env["TOKEN"], "hunter2", "the original is untouched");
    assert_eq!(shown.secret_env, spec.secret_env);
}

#[test]
fn package_fields_default_for_old_specs_and_are_checked() {
    // A spec stored before `requires`, `reload`, `config_schema` and
    // `package_dir` existed still reads, with their defaults.
    let old: AgentSpec =
        serde_json::from_value(json!({"agent_type": "t", "command": "sleep"})).expect("old spec");
    assert_eq!(old.reload, ReloadMode::Control);
    assert!(old.requires.is_empty() && old.config_schema.is_none() && old.package_dir.is_none());
    let mut spec = valid();
    spec.reload = ReloadMode::Sighup;
    spec.requires.insert("db".into());
    spec.config_schema = Some(json!({"type": "object"}));
    spec.package_dir = Some("/srv/agents/web".into());
    assert_eq!(spec.validate(), Ok(()));
    let value = serde_json::to_value(&spec).expect("ser");
    assert_eq!(value["reload"], "sighup");
    assert_eq!(
        serde_json::from_value::<AgentSpec>(value).expect("de"),
        spec
    );
    spec.requires.insert("Db".into());
    assert_eq!(
        spec.validate().expect_err("bad id").to_string(),
        "`requires`: agent id `Db` has an upper-case letter at 1: use lowercase letters, digits and '-'"
    );
}

#[test]
fn redacted_hides_config_values_marked_secret_in_the_schema() {
    let mut spec = valid();
    spec.config_schema = Some(json!({"type": "object", "properties": {
        "password": {"type": "string", "x-secret": true},
        "db": {"type": "object", "properties": {"token": {"x-secret": true}, "host": {}}},
        "level": {"type": "string"}
    }}));
    spec.config = json!({"password": "p", "db": {"token": "t", "host": "h"}, "level": "info"});
    assert_eq!(
        spec.redacted().config,
        json!({"password": "***", "db": {"token": "***", "host": "h"}, "level": "info"})
    );
    assert_eq!(spec.config["password"], "p", "the original is untouched");
}

#[test]
fn secret_pointers_and_masked_values_kept_on_update() {
    let schema = json!({"type": "object", "properties": {
        "password": {"type": "string", "x-secret": true},
        "db": {"type": "object", "properties": {"token": {"x-secret": true}, "host": {}}},
        "level": {"type": "string"}
    }});
    let mut pointers = super::secret_pointers(&schema);
    pointers.sort();
    assert_eq!(pointers, ["/db/token", "/password"]);
    let current = json!({"password": "p", "db": {"token": "t", "host": "h"}, "level": "info"});
    let mut update =
        json!({"password": "***", "db": {"token": "new", "host": "h2"}, "level": "***"});
    super::keep_unchanged_secrets(&schema, &mut update, &current);
    assert_eq!(
        update,
        json!({"password": "p", "db": {"token": "new", "host": "h2"}, "level": "***"}),
        "only secret fields sent as *** keep their value"
    );
}

#[test]
fn schema_errors_name_a_secret_field_but_never_show_its_value() {
    let schema = json!({"type": "object", "properties": {
        "api_key": {"type": "string", "minLength": 8, "x-secret": true},
        "level": {"type": "string", "enum": ["debug", "info"]},
        "db": {"type": "object", "maxProperties": 2, "properties": {
            "host": {"type": "string"},
            "password": {"type": "string", "pattern": "^[a-z0-9]+$", "x-secret": true}}},
        "vault": {"type": "object", "x-secret": true,
            "propertyNames": {"pattern": "^[a-z-]+$"},
            "properties": {"primary": {"type": "string", "minLength": 8}},
            "additionalProperties": {"type": "string", "minLength": 8}}
    }});
    let refused = |config: serde_json::Value| {
        let err = check_config(&schema, &config).expect_err("refused");
        (err.field, err.message)
    };
    let hidden = |field: &str, message: &str| (field.to_owned(), message.to_owned());

    // A secret field: what is wrong, not the value.
    assert_eq!(
        refused(json!({"api_key": "hunt3r7"})),
        hidden(
            "config.api_key",
            "the value is shorter than 8 characters (value hidden: secret)"
        )
    );
    assert_eq!(
        refused(json!({"db": {"password": "Hunt3r7"}})),
        hidden(
            "config.db.password",
            "the value does not match \"^[a-z0-9]+$\" (value hidden: secret)"
        )
    );
    // An object holding a secret is not shown either.
    assert_eq!(
        refused(json!({"db": {"host": "h", "password": "hunt3r7", "port": 1}})),
        hidden(
            "config.db",
            "the value has more than 2 properties (value hidden: it holds a secret)"
        )
    );
    // Inside a secret object: fields the schema declares are named, keys
    // only the config knows are not (they are part of the secret).
    assert_eq!(
        refused(json!({"vault": {"primary": "hunt3r7"}})),
        hidden(
            "config.vault.primary",
            "the value is shorter than 8 characters (value hidden: secret)"
        )
    );
    assert_eq!(
        refused(json!({"vault": {"alice-prod": "hunt3r7"}})),
        hidden(
            "config.vault",
            "the value is shorter than 8 characters (value hidden: secret)"
        )
    );
    let (field, message) = refused(json!({"vault": {"Hunt3r-Name": "long-enough"}}));
    assert_eq!(field, "config.vault");
    assert!(
        message.starts_with("a property name is invalid: ") && !message.contains("Hunt3r"),
        "{message}"
    );

    // Values that are not secret, and hold none, are shown: they help.
    assert_eq!(
        refused(json!({"level": "loud"})),
        hidden(
            "config.level",
            "\"loud\" is not one of \"debug\" or \"info\""
        )
    );
    assert_eq!(
        refused(json!({"db": "hunt3r7"})),
        hidden("config.db", "\"hunt3r7\" is not of type \"object\"")
    );
}
