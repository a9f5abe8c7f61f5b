//! `agent.toml`: a full manifest maps onto the spec, and every field's bad
//! value is refused with its file, line, field path and reason.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BASE, load};
use opmas_domain::{HealthCheck, RecoveryStrategy, ReloadMode, RestartMode};
use serde_json::json;

const FULL: &str = r#"name = "log-watcher"
type = "security"
version = "2.1.0"
description = "Watches auth.log"
command = "./bin/web"
args = ["--follow", "/var/log/auth.log"]
working_dir = "bin"
instances = 2
requires = ["nats-bridge"]
secret_env = ["API_KEY"]
env = { LOG_LEVEL = "debug", API_KEY = "hunter2" }

[limits]
memory = "256MiB"
cpu_percent = 50
open_files = 1024

[heartbeat]
interval = "2s"
timeout = "6s"
startup_grace = "10s"

[restart]
mode = "always"
initial_delay = "250ms"
max_delay = "1m"
intensity = 3
period = "30s"

[recovery]
strategy = "reload"
max_attempts = 5

[health_check]
kind = "http"
url = "http://127.0.0.1:9000/health"
interval = "5s"
timeout = "1s"
failure_threshold = 2

[stop]
signal = "SIGINT"
grace = "3s"

[config]
reload = "sighup"
schema = { type = "object", properties = { level = { type = "string", default = "info" } } }
"#;

#[test]
fn a_full_manifest_maps_onto_specs_per_instance() {
    let package = load(FULL).unwrap();
    assert_eq!(
        (package.name.as_str(), package.version.as_str()),
        ("log-watcher", "2.1.0")
    );
    assert_eq!(package.description, "Watches auth.log");
    let ids: Vec<&str> = package.agents.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["log-watcher-1", "log-watcher-2"]);
    let spec = &package.agents[0].1;
    assert_eq!(spec, &package.agents[1].1, "instances share the spec");
    let dir = package.dir.to_string_lossy().into_owned();
    assert_eq!(
        spec.command,
        format!("{dir}/bin/web"),
        "resolved in the package"
    );
    assert_eq!(
        spec.working_dir.as_deref(),
        Some(format!("{dir}/bin").as_str())
    );
    assert_eq!(spec.package_dir.as_deref(), Some(dir.as_str()));
    assert_eq!(spec.args, ["--follow", "/var/log/auth.log"]);
    assert_eq!(spec.env["LOG_LEVEL"], "debug");
    assert!(spec.secret_env.contains("API_KEY"));
    assert_eq!(spec.redacted().env["API_KEY"], "***");
    assert_eq!(spec.requires.iter().collect::<Vec<_>>(), ["nats-bridge"]);
    assert_eq!(spec.limits.memory_bytes, Some(256 << 20));
    assert_eq!(spec.limits.cpu_percent, Some(50.0));
    assert_eq!(spec.limits.open_files, Some(1024));
    assert_eq!(
        (
            spec.heartbeat.interval_ms,
            spec.heartbeat.timeout_ms,
            spec.heartbeat.startup_grace_ms
        ),
        (2_000, 6_000, 10_000)
    );
    assert_eq!(spec.restart.mode, RestartMode::Always);
    assert_eq!(
        (spec.restart.initial_delay_ms, spec.restart.max_delay_ms),
        (250, 60_000)
    );
    assert_eq!(
        (spec.restart.intensity, spec.restart.period_ms),
        (3, 30_000)
    );
    assert_eq!(spec.restart.multiplier, 2.0, "unset keys keep the defaults");
    assert_eq!(spec.recovery.strategy, RecoveryStrategy::Reload);
    assert_eq!(spec.recovery.max_attempts, 5);
    assert_eq!(
        spec.health_check.check,
        HealthCheck::Http {
            url: "http://127.0.0.1:9000/health".into()
        }
    );
    assert_eq!(
        (
            spec.health_check.interval_ms,
            spec.health_check.timeout_ms,
            spec.health_check.failure_threshold
        ),
        (5_000, 1_000, 2)
    );
    assert_eq!(
        (spec.stop_signal.as_str(), spec.stop_grace_ms),
        ("SIGINT", 3_000)
    );
    assert_eq!(spec.reload, ReloadMode::Sighup);
    assert_eq!(spec.config, json!({"level": "info"}), "schema default");
    assert!(spec.config_schema.is_some());
    assert_eq!(spec.validate(), Ok(()));
}

#[test]
fn the_smallest_manifest_takes_defaults() {
    let package = load(BASE).unwrap();
    let (id, spec) = &package.agents[0];
    assert_eq!((package.agents.len(), id.as_str()), (1, "web"));
    let default = opmas_domain::AgentSpec::default();
    assert_eq!(spec.heartbeat, default.heartbeat);
    assert_eq!(spec.restart, default.restart);
    assert_eq!(spec.health_check, default.health_check);
    assert_eq!(spec.reload, ReloadMode::Control);
    assert_eq!(spec.config, json!({}));
    assert_eq!(
        spec.working_dir.as_deref(),
        Some(&*package.dir.to_string_lossy())
    );
    let on_path = load(&BASE.replace("./bin/web", "sleep")).unwrap();
    assert_eq!(
        on_path.agents[0].1.command, "sleep",
        "a bare name is looked up on PATH"
    );
}

/// `BASE` with `key`'s line replaced by `line`.
fn replaced(key: &str, line: &str) -> String {
    BASE.lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn every_field_s_bad_value_is_refused_with_file_line_field_and_reason() {
    let extra = |s: &str| format!("{BASE}{s}\n");
    // (manifest, field, line, message)
    let cases: Vec<(String, &str, Option<usize>, &str)> = vec![
        (
            replaced("name", "name = \"Web\""),
            "name",
            Some(1),
            "agent id `Web` has an upper-case letter at 1: use lowercase letters, digits and '-'",
        ),
        (
            replaced("type", "type = \" \""),
            "type",
            Some(2),
            "must not be empty",
        ),
        (
            replaced("version", "version = \"1 0\""),
            "version",
            Some(3),
            "`1 0` contains whitespace",
        ),
        (
            replaced("version", ""),
            "version",
            None,
            "missing field `version`",
        ),
        (
            extra("description = 5"),
            "description",
            Some(5),
            "invalid type: integer `5`, expected a string",
        ),
        (
            replaced("command", "command = \"./bin/missing\""),
            "command",
            Some(4),
            "`./bin/missing` cannot be opened in the package: No such file or directory (os error 2)",
        ),
        (
            replaced("command", "command = \"python -m http.server\""),
            "command",
            Some(4),
            "command is a program, not a shell line: put arguments in `args`",
        ),
        (
            extra("args = [\"-v\", 1]"),
            "args[1]",
            Some(5),
            "invalid type: integer `1`, expected a string",
        ),
        (
            extra("working_dir = \"bin/web\""),
            "working_dir",
            Some(5),
            "`bin/web` is not a directory",
        ),
        (
            // Any env value may be a secret: the deserializer's message
            // (`invalid type: integer `73317331`, ...`) would show it.
            extra("env = { TOKEN = 73317331 }\nsecret_env = [\"TOKEN\"]"),
            "env.TOKEN",
            Some(5),
            "must be a string (value hidden: env values may be secret)",
        ),
        (
            extra("env = { \"A=B\" = \"x\" }"),
            "env",
            Some(5),
            "key \"A=B\" must not contain '=' or NUL",
        ),
        (
            extra("secret_env = [\"TOKEN\"]"),
            "secret_env",
            Some(5),
            "`TOKEN` is not a key of `env`",
        ),
        (
            extra("instances = 0"),
            "instances",
            Some(5),
            "must be between 1 and 100, got 0",
        ),
        (
            extra("instances = -2"),
            "instances",
            Some(5),
            "invalid value: integer `-2`, expected u32",
        ),
        (
            extra("requires = [\"db\", \"Cache\"]"),
            "requires[1]",
            Some(5),
            "agent id `Cache` has an upper-case letter at 1: use lowercase letters, digits and '-'",
        ),
        (
            extra("requires = [\"web\"]"),
            "requires[0]",
            Some(5),
            "`web` is an agent of this package: a package cannot require itself",
        ),
        (
            extra("restrat = 1"),
            "restrat",
            Some(5),
            "unknown field `restrat`, expected one of `name`, `type`, `version`, `description`, `command`, `args`, `working_dir`, `env`, `secret_env`, `user`, `group`, `node`, `instances`, `requires`, `limits`, `heartbeat`, `restart`, `recovery`, `health_check`, `stop`, `config`",
        ),
        (
            extra("[limits]\nmemory = \"lots\""),
            "limits.memory",
            Some(6),
            "`lots` is not a size: write bytes or e.g. \"512KiB\", \"256MiB\", \"1GiB\"",
        ),
        (
            extra("[limits]\nmemory = 1000"),
            "limits.memory",
            Some(6),
            "must be at least 1048576 (1 MiB), got 1000",
        ),
        (
            extra("[limits]\ncpu_percent = 0"),
            "limits.cpu_percent",
            Some(6),
            "must be in (0, 102400], got 0",
        ),
        (
            extra("[limits]\ncpu_seconds = 0"),
            "limits.cpu_seconds",
            Some(6),
            "must be greater than 0",
        ),
        (
            extra("[limits]\nopen_files = 0"),
            "limits.open_files",
            Some(6),
            "must be greater than 0",
        ),
        (
            extra("[limits]\nprocesses = 0"),
            "limits.processes",
            Some(6),
            "must be greater than 0",
        ),
        (
            extra("[heartbeat]\nenabled = \"yes\""),
            "heartbeat.enabled",
            Some(6),
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            extra("[heartbeat]\ninterval = \"5x\""),
            "heartbeat.interval",
            Some(6),
            "`5x` is not a duration: write e.g. \"5s\", \"250ms\" or \"2m\"",
        ),
        (
            extra("[heartbeat]\ninterval = 5"),
            "heartbeat.interval",
            Some(6),
            "invalid type: integer `5`, expected a duration such as \"5s\" or \"250ms\"",
        ),
        (
            extra("[heartbeat]\ninterval = \"0s\""),
            "heartbeat.interval",
            Some(6),
            "must be longer than 0s",
        ),
        (
            extra("[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\""),
            "heartbeat.timeout",
            Some(7),
            "must be at least `heartbeat.interval` (5s), got 1s",
        ),
        (
            extra("[heartbeat]\nstartup_grace = \"later\""),
            "heartbeat.startup_grace",
            Some(6),
            "`later` is not a duration: write e.g. \"5s\", \"250ms\" or \"2m\"",
        ),
        (
            extra("[heartbeat]\nintervall = \"5s\""),
            "heartbeat.intervall",
            Some(6),
            "unknown field `intervall`, expected one of `enabled`, `interval`, `timeout`, `startup_grace`",
        ),
        (
            extra("[restart]\nmode = \"sometimes\""),
            "restart.mode",
            Some(6),
            "unknown variant `sometimes`, expected one of `always`, `on_failure`, `never`",
        ),
        (
            extra("[restart]\ninitial_delay = \"2s\"\nmax_delay = \"1s\""),
            "restart.max_delay",
            Some(7),
            "must be at least `restart.initial_delay` (2s), got 1s",
        ),
        (
            extra("[restart]\nmultiplier = 0.5"),
            "restart.multiplier",
            Some(6),
            "must be a number >= 1.0, got 0.5",
        ),
        (
            extra("[restart]\njitter = 1.5"),
            "restart.jitter",
            Some(6),
            "must be a fraction in [0, 1], got 1.5",
        ),
        (
            extra("[restart]\nreset_after = 60"),
            "restart.reset_after",
            Some(6),
            "invalid type: integer `60`, expected a duration such as \"5s\" or \"250ms\"",
        ),
        (
            extra("[restart]\nintensity = 0"),
            "restart.intensity",
            Some(6),
            "must be at least 1",
        ),
        (
            extra("[restart]\nperiod = \"0s\""),
            "restart.period",
            Some(6),
            "must be longer than 0s",
        ),
        (
            extra("[restart]\nfailed_cooldown = \"0ms\""),
            "restart.failed_cooldown",
            Some(6),
            "must be longer than 0s",
        ),
        (
            extra("[recovery]\nstrategy = \"pray\""),
            "recovery.strategy",
            Some(6),
            "unknown variant `pray`, expected one of `restart`, `reload`, `none`",
        ),
        (
            extra("[recovery]\nauto = 1"),
            "recovery.auto",
            Some(6),
            "invalid type: integer `1`, expected a boolean",
        ),
        (
            extra("[recovery]\nmax_attempts = 0"),
            "recovery.max_attempts",
            Some(6),
            "must be at least 1",
        ),
        (
            extra("[health_check]\nkind = \"grpc\""),
            "health_check.kind",
            Some(6),
            "unknown variant `grpc`, expected one of `heartbeat`, `exec`, `http`, `tcp`",
        ),
        (
            extra("[health_check]\nkind = \"http\""),
            "health_check.url",
            Some(5),
            "is required for kind = \"http\"",
        ),
        (
            extra("[health_check]\nkind = \"http\"\nurl = \"ftp://x\""),
            "health_check.url",
            Some(7),
            "must be an http:// url, got \"ftp://x\" (https is not probed: use an exec check with curl)",
        ),
        (
            extra("[health_check]\nurl = \"http://x\""),
            "health_check.url",
            Some(6),
            "only applies to kind = \"http\"",
        ),
        (
            extra("[health_check]\nkind = \"tcp\"\nport = 0"),
            "health_check.port",
            Some(7),
            "must not be 0",
        ),
        (
            extra("[health_check]\nkind = \"tcp\"\nport = 70000"),
            "health_check.port",
            Some(7),
            "invalid value: integer `70000`, expected u16",
        ),
        (
            extra("[health_check]\nkind = \"tcp\"\nhost = \" \"\nport = 80"),
            "health_check.host",
            Some(7),
            "must not be empty",
        ),
        (
            extra("[health_check]\nkind = \"exec\""),
            "health_check.command",
            Some(5),
            "is required for kind = \"exec\"",
        ),
        (
            extra("[health_check]\nkind = \"exec\"\ncommand = \"./check.sh\""),
            "health_check.command",
            Some(7),
            "`./check.sh` cannot be opened in the package: No such file or directory (os error 2)",
        ),
        (
            extra("[health_check]\nkind = \"tcp\"\nport = 80\nargs = [\"-q\"]"),
            "health_check.args",
            Some(8),
            "only applies to kind = \"exec\"",
        ),
        (
            extra("[health_check]\ninterval = \"0s\""),
            "health_check.interval",
            Some(6),
            "must be longer than 0s",
        ),
        (
            extra("[health_check]\ntimeout = \"0s\""),
            "health_check.timeout",
            Some(6),
            "must be longer than 0s",
        ),
        (
            extra("[health_check]\nfailure_threshold = 0"),
            "health_check.failure_threshold",
            Some(6),
            "must be at least 1",
        ),
        (
            extra("[stop]\nsignal = \"SIGSTOP\""),
            "stop.signal",
            Some(6),
            "unknown signal `SIGSTOP`: use one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL, control",
        ),
        (
            extra("[stop]\ngrace = \"soon\""),
            "stop.grace",
            Some(6),
            "`soon` is not a duration: write e.g. \"5s\", \"250ms\" or \"2m\"",
        ),
        (
            extra("[config]\nreload = \"never\""),
            "config.reload",
            Some(6),
            "unknown variant `never`, expected one of `control`, `sighup`, `restart`",
        ),
        (
            extra("[config]\nschema = 5"),
            "config.schema",
            Some(6),
            "must be a path to a JSON Schema file in the package or an inline table",
        ),
        (
            extra("[config]\nschema = { type = \"nonsense\" }"),
            "config.schema",
            Some(6),
            "is not a valid JSON Schema: \"nonsense\" is not valid under any of the schemas listed in the 'anyOf' keyword",
        ),
        (
            extra("[config]\nschema = \"schema.json\""),
            "config.schema",
            Some(6),
            "`schema.json` cannot be opened in the package: No such file or directory (os error 2)",
        ),
        (extra("name = \"again\""), "", Some(5), "duplicate key"),
    ];
    let mut wrong = Vec::new();
    for (manifest, field, line, message) in cases {
        let err = load(&manifest).expect_err(&manifest);
        assert!(err.file.ends_with("web/agent.toml"), "{err}");
        if (err.field.as_str(), err.line, err.message.as_str()) != (field, line, message) {
            wrong.push(format!(
                "{manifest}=> {:?} {:?} {:?}",
                err.field, err.line, err.message
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn errors_read_as_one_line_with_file_line_and_field() {
    let err = load(&format!(
        "{BASE}[heartbeat]\ninterval = \"5s\"\ntimeout = \"1s\"\n"
    ))
    .unwrap_err();
    let file = err.file.display().to_string();
    assert_eq!(
        err.to_string(),
        format!(
            "{file}:7: `heartbeat.timeout`: must be at least `heartbeat.interval` (5s), got 1s"
        )
    );
    let err = load("name = \"web\"\ntype = \"http\nversion = \"1\"\n").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.line),
        ("", Some(2)),
        "syntax errors have a line: {err}"
    );
    let too_long = format!(
        "name = \"{}\"\ntype = \"t\"\nversion = \"1\"\ncommand = \"sleep\"\ninstances = 3\n",
        "a".repeat(62)
    );
    let err = load(&too_long).unwrap_err();
    assert_eq!(err.field, "name");
    assert!(
        err.message
            .starts_with("with 3 instances the ids are `aaaa"),
        "{err}"
    );
}
