//! The `opmas` binary as users run it: `dev`, `migrate`, `events verify`,
//! `--dump-config`, and the errors of a bad setup.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use opmas_store::{AgentStore, Relay, RelayConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

fn opmas() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"));
    for var in [
        "OPMAS_DATABASE_URL",
        "OPMAS_NATS_URL",
        "OPMAS_DATA_DIR",
        "OPMAS_SECRET_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("OPMAS_LOG", "warn").kill_on_drop(true);
    cmd
}

/// Copies the example shell agent's package into a fresh package root.
fn example_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    // and a package made from the shell template, as is
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_opmas"))
        .args([
            "agents",
            "new",
            "scaffolded",
            "--template",
            "shell",
            "--dir",
        ])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    let from =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/shell-ticker");
    let to = root.path().join("shell-ticker");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    root
}

/// The status of `agent` through the API `opmas dev` printed.
async fn dev_agent(text: &str, agent: &str) -> Option<serde_json::Value> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let (api, token) = (field("api:")?, field("token:")?);
    let resp = reqwest::Client::new()
        .get(format!("{api}/agents/{agent}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// `agent` as the API answers once it runs (or after 30 s, as last seen).
async fn dev_agent_running(text: &str, agent: &str) -> serde_json::Value {
    let mut last = None;
    for _ in 0..300 {
        last = dev_agent(text, agent).await;
        if last.as_ref().is_some_and(|a| a["status"] == "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.unwrap_or_default()
}

/// `opmas dev` with nothing configured starts its own PostgreSQL and
/// nats-server in the data directory, says it is ready, discovers, registers
/// and starts the packages of its package roots, and on Ctrl-C stops both
/// servers and exits 0, leaving the agents running. A second start reuses
/// the data directory and adopts the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_private_infrastructure_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let packages = example_root();
    let mut agent_pid: Option<i64> = None;
    let mut made_pids = Vec::new();
    let mut key_text = None;
    // PostgreSQL runs as `postgres` when we are root: let it in.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for round in 0..2 {
        let mut child = opmas()
            .arg("dev")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--package-root")
            .arg(packages.path())
            // a free port: 8080 may be taken on the machine running the tests
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.starts_with("Press Ctrl-C") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(ready, "round {round}: not ready: {seen:?}");
        let text = seen.join("\n");
        assert!(text.contains("opmas dev ready"), "{text}");
        assert!(text.contains("postgres://opmas@127.0.0.1:"), "{text}");
        assert!(text.contains("nats://127.0.0.1:"), "{text}");
        // The example package: registered and started (round 0), still the
        // same process, adopted (round 1).
        let agent = dev_agent_running(&text, "shell-ticker").await;
        assert_eq!(agent["status"], "running", "round {round}: {agent}");
        let pid = agent["pid"].as_i64().unwrap();
        assert_eq!(
            *agent_pid.get_or_insert(pid),
            pid,
            "round {round}: started twice"
        );
        let made = dev_agent_running(&text, "scaffolded").await;
        assert_eq!(
            made["status"], "running",
            "round {round}: the shell template: {made}"
        );
        made_pids.push(made["pid"].as_i64().unwrap());
        // Its secret key: created once in the data directory, private, kept.
        let key_file = dir.path().join("secret.key");
        let key = std::fs::read_to_string(&key_file).unwrap();
        assert_eq!(*key_text.get_or_insert(key.clone()), key, "round {round}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let pid = child.id().unwrap().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "round {round}: {exit:?}");
        let pid_file = dir.path().join("postgres/data/postmaster.pid");
        assert!(!pid_file.exists(), "round {round}: postgres still running");
        assert!(dir.path().join("nats/jetstream").exists());
    }
    for pid in agent_pid.into_iter().chain(made_pids) {
        let _ = opmas_supervisor::signal::group(pid as u32, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `opmas migrate` applies the migrations once and is harmless again;
/// without a database it says which setting is missing.
#[tokio::test]
async fn migrate_is_idempotent_and_explains_a_missing_url() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let out = opmas()
            .arg("migrate")
            .env("OPMAS_DATABASE_URL", &db.url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let n = opmas_store::db::MIGRATOR.iter().count();
        assert!(n >= 2, "event store and projections at least");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("migrations applied: {n} of {n}")
        );
    }
    let out = opmas().arg("migrate").output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPMAS_DATABASE_URL"), "{err}");

    let out = opmas()
        .arg("migrate")
        .env(
            "OPMAS_DATABASE_URL",
            "postgres://nobody:secret@127.0.0.1:1/none",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to PostgreSQL at postgres://nobody:***@127.0.0.1:1/none"),
        "{err}"
    );
    assert!(!err.contains("secret"), "password leaked: {err}");
    db.cleanup().await;
}

/// A `--secret-key-file` that is missing or holds no key stops the role at
/// once (before it connects anywhere), saying which file and what it needs.
#[tokio::test]
async fn a_missing_or_bad_secret_key_file_stops_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let out = opmas()
        .arg("supervisor")
        .arg("--secret-key-file")
        .arg(&missing)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--secret-key-file") && err.contains(&*missing.to_string_lossy()),
        "{err}"
    );
    assert!(!missing.exists(), "an explicit key file is never created");
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "0123").unwrap();
    let out = opmas()
        .args(["serve", "--roles", "api"])
        .env("OPMAS_SECRET_KEY_FILE", &bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("openssl rand -hex 64"), "{err}");
}

/// `--dump-config` shows the effective settings, passwords masked.
#[tokio::test]
async fn dump_config_masks_passwords() {
    let out = opmas()
        .args(["--dump-config", "migrate"])
        .env("OPMAS_DATABASE_URL", "postgres://u:hunter2@db:5432/opmas")
        .env("OPMAS_EVENTS_MAX_AGE", "30d")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["database_url"], "postgres://u:***@db:5432/opmas");
    assert_eq!(json["events_max_age"], "30days");
    assert_eq!(json["events_stream"], "OPMAS_EVENTS");
    let out = opmas()
        .args(["--events-max-age", "soon", "migrate"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--events-max-age"));
}

/// `opmas events verify` exits 0 on a clean log, 1 with a difference (and
/// names it), and `--repair` re-publishes from the event store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_verify_reports_and_repairs() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let store = AgentStore::new(db.pool.clone());
    for id in ["alpha", "beta"] {
        store.execute(id, register(id), meta("test")).await.unwrap();
        store
            .execute(id, record_error(1), meta("test"))
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let config = RelayConfig {
        stream: settings.clone(),
        ..RelayConfig::default()
    };
    let relay =
        tokio::spawn(Relay::new(db.pool.clone(), client.clone(), config).run(cancel.clone()));
    assert!(
        eventually(Duration::from_secs(10), || async {
            opmas_store::relay::backlog(&db.pool).await.unwrap() == 0
        })
        .await
    );
    cancel.cancel();
    relay.await.unwrap().unwrap();

    let verify = |extra: &'static [&'static str]| {
        let mut cmd = opmas();
        cmd.args(["events", "verify"])
            .args(extra)
            .env("OPMAS_DATABASE_URL", &db.url)
            .env("OPMAS_NATS_URL", nats_url())
            .env("OPMAS_EVENTS_STREAM", &settings.name)
            .env("OPMAS_EVENTS_SUBJECT_PREFIX", &settings.subject_prefix);
        cmd
    };
    let out = verify(&[]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("agents: 2  events in store: 4  messages in stream: 4")
    );

    let js = async_nats::jetstream::new(client.clone());
    let s = js.get_stream(&settings.name).await.unwrap();
    let m = s
        .get_last_raw_message_by_subject(&settings.subject("beta", "ErrorRecorded"))
        .await
        .unwrap();
    s.delete_message(m.sequence).await.unwrap();

    let out = verify(&["-o", "json"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["diffs"][0]["agent_id"], "beta");
    assert_eq!(report["diffs"][0]["missing"], serde_json::json!([2]));

    let out = verify(&["--repair"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("beta: missing 2"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("in per-agent order"),
        "{stdout}"
    );
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// `opmas agents new` makes packages that pass validation as they are: the
/// shell one (it runs under `opmas dev` in the dev test) and the Rust one,
/// which it builds with cargo in the package (a stand-in cargo here:
/// tests/packages.rs runs what it makes); with `--no-build`, or without
/// cargo, it says how to build instead; a bad name or an existing
/// directory is refused with the reason.
#[tokio::test]
async fn agents_new_makes_valid_packages() {
    let dir = tempfile::tempdir().unwrap();
    let out = opmas()
        .args([
            "agents",
            "new",
            "made-shell",
            "--template",
            "shell",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("package made-shell created"));
    let out = agents_new_rust(dir.path(), "made-rust", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("package made-rust created") && stdout.contains("built:"),
        "{stdout}"
    );
    let made = dir.path().join("made-rust");
    let calls = std::fs::read_to_string(dir.path().join("cargo-calls")).unwrap();
    assert_eq!(
        calls,
        format!("{} build --release --target-dir target\n", made.display())
    );
    assert!(made.join("Cargo.lock").exists(), "the SDK's lock file");
    let vars = std::collections::BTreeMap::new();
    let load = |name: &str| {
        opmas_packages::Package::load(
            &dir.path().join(name),
            opmas_packages::Context {
                environment: "development",
                vars: &vars,
            },
        )
    };
    for name in ["made-shell", "made-rust"] {
        let package = load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(package.name, name);
        let (id, spec) = &package.agents[0];
        assert_eq!(id.as_str(), name);
        assert_eq!(spec.config["every_secs"], 10, "config from base.toml");
    }
    // Not built: with --no-build, or when there is no cargo on PATH.
    let out = agents_new_rust(dir.path(), "later-rust", &["--no-build"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("build it:")
            && stdout.contains("cargo build --release --target-dir target"),
        "{stdout}"
    );
    let no_cargo = tempfile::tempdir().unwrap();
    let out = opmas()
        .args(["agents", "new", "no-cargo", "--template", "rust", "--dir"])
        .arg(dir.path())
        .env("PATH", no_cargo.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not built: cargo is not on PATH"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cargo-calls")).unwrap(),
        calls,
        "cargo ran again"
    );
    for name in ["later-rust", "no-cargo"] {
        let refused = load(name).unwrap_err();
        assert_eq!(refused.field, "command", "{name}: {refused}");
    }
    let out = opmas()
        .args(["agents", "new", "Bad_Name", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name an agent"));
    let out = opmas()
        .args(["agents", "new", "made-shell", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// `opmas audit` shows secrets as `***`, like the API: env values named in
/// `secret_env` and config fields the schema marks `x-secret`, in the
/// events and in the state as of an instant.
#[tokio::test]
async fn audit_hides_secrets() {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    let mut spec = spec();
    spec.env.insert("API_KEY".into(), "env-s3cret".into());
    spec.secret_env.insert("API_KEY".into());
    spec.config_schema = Some(serde_json::json!({"type": "object", "properties": {
        "password": {"type": "string", "x-secret": true}}}));
    spec.config = serde_json::json!({"password": "cfg-s3cret"});
    store
        .execute(
            "audited",
            opmas_domain::AgentCommand::Register {
                agent_id: opmas_domain::AgentId::parse("audited").unwrap(),
                spec,
            },
            meta("test"),
        )
        .await
        .unwrap();
    store
        .execute(
            "audited",
            opmas_domain::AgentCommand::UpdateConfig {
                expected_version: 1,
                config: serde_json::json!({"password": "new-s3cret"}),
            },
            meta("test"),
        )
        .await
        .unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    for output in ["table", "json"] {
        let out = opmas()
            .env("OPMAS_DATABASE_URL", &db.url)
            .args(["audit", "audited", "--as-of", &now, "-o", output])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("ConfigUpdated") && text.contains("***"),
            "{text}"
        );
        for secret in ["env-s3cret", "cfg-s3cret", "new-s3cret"] {
            assert!(!text.contains(secret), "{output}: {secret} shown: {text}");
        }
    }
    db.cleanup().await;
}
