//! The `opmas` client commands (`agents`, `config`, `logs`, `token`,
//! `events tail`) as users run them: the real binary against a real API
//! (its own database and streams), human and JSON output, and the errors
//! of a bad setup.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use opmas_testkit::api::ApiStack;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The binary with no server, token or config from the environment.
fn opmas() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"));
    for var in [
        "OPMAS_SERVER",
        "OPMAS_TOKEN",
        "OPMAS_CLI_CONFIG",
        "OPMAS_DATABASE_URL",
        "OPMAS_NATS_URL",
    ] {
        cmd.env_remove(var);
    }
    // No config file from the user running the tests.
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-opmas-test")
        .env("OPMAS_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(stack: &ApiStack, token: &str, args: &[&str]) -> Run {
    let out = opmas()
        .args(args)
        .args(["--server", &stack.base, "--token", token])
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

async fn admin(stack: &ApiStack, args: &[&str]) -> Run {
    run(stack, &stack.admin_token, args).await
}

async fn json_of(stack: &ApiStack, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let r = admin(stack, &all).await;
    assert!(r.ok, "{args:?} failed: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", r.stdout))
}

/// Register, list, show, lifecycle, recover, config set/get/history/
/// rollback, events and deregister, each as a table and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_config_through_the_cli() {
    let stack = ApiStack::start().await;

    let r = admin(
        &stack,
        &[
            "agents",
            "register",
            "cli-a",
            "--command",
            "sleep",
            "--arg",
            "1000",
            "--reason",
            "from the cli",
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("cli-a register: AgentRegistered"),
        "{}",
        r.stdout
    );

    // A spec file (TOML) works as well as --command.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "agent_type = \"worker\"\ncommand = \"sleep\"\nargs = [\"1000\"]\n",
    )
    .unwrap();
    let r = admin(
        &stack,
        &[
            "agents",
            "register",
            "cli-b",
            "--spec",
            spec.to_str().unwrap(),
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);

    // Both appear in the list once the read model has them.
    let listed = eventually(Duration::from_secs(10), || async {
        let r = admin(&stack, &["agents", "ls"]).await;
        r.ok && r.stdout.contains("cli-a")
            && r.stdout.contains("cli-b")
            && r.stdout.contains("2 of 2 agents")
    })
    .await;
    assert!(listed, "agents never listed");
    let page = json_of(&stack, &["agents", "ls", "--type", "worker"]).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cli-b"], "type filter");
    assert_eq!(page["total"], 1);

    let r = admin(&stack, &["agents", "show", "cli-b"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("agent_type:") && r.stdout.contains("worker"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"command\": \"sleep\""),
        "spec shown: {}",
        r.stdout
    );

    // Lifecycle: each answer names the events committed.
    let r = admin(&stack, &["agents", "start", "cli-a", "--reason", "go"]).await;
    assert!(
        r.ok && r.stdout.contains("StartRequested") && r.stdout.contains("desired running"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let v = json_of(&stack, &["agents", "stop", "cli-a"]).await;
    assert_eq!(v["events"], json!(["StopRequested"]));
    assert_eq!(v["agent"]["desired_state"], "stopped");
    // No supervisor here: the agent stays `stopping`, and a restart is
    // refused with the domain's reason and exit code 1.
    let r = admin(&stack, &["agents", "restart", "cli-a"]).await;
    assert!(
        !r.ok && r.stderr.contains("INVALID_TRANSITION (409)") && r.stderr.contains("stopping"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "one error line: {}", r.stderr);

    // Config: --set on the current version, nested keys, JSON values.
    let r = admin(
        &stack,
        &[
            "config",
            "set",
            "cli-a",
            "--set",
            "level=debug",
            "--set",
            "limits.max=5",
            "--reason",
            "tune",
        ],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("cli-a config version 1 -> 2"),
        "{}",
        r.stdout
    );
    let v = json_of(&stack, &["config", "get", "cli-a"]).await;
    assert_eq!(v["config"], json!({"level": "debug", "limits": {"max": 5}}));
    let version = v["version"].as_u64().unwrap();
    // A whole file replaces the config.
    let file = dir.path().join("config.json");
    std::fs::write(&file, r#"{"level": "info"}"#).unwrap();
    let r = admin(
        &stack,
        &["config", "set", "cli-a", "--file", file.to_str().unwrap()],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let v = json_of(&stack, &["config", "get", "cli-a"]).await;
    assert_eq!(v["config"], json!({"level": "info"}));
    assert_eq!(v["version"].as_u64().unwrap(), version + 1);
    let last = std::sync::Mutex::new(String::new());
    let history = eventually(Duration::from_secs(10), || async {
        let r = admin(&stack, &["config", "history", "cli-a"]).await;
        *last.lock().unwrap() = r.stdout.clone() + &r.stderr;
        r.ok && r.stdout.contains(r#"/limits (none) -> {"max":5}"#)
            && r.stdout.matches("ConfigUpdated").count() == 2
    })
    .await;
    assert!(
        history,
        "config history never showed both versions: {}",
        last.lock().unwrap()
    );
    let r = admin(
        &stack,
        &["config", "rollback", "cli-a", "--to", &version.to_string()],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let v = json_of(&stack, &["config", "get", "cli-a"]).await;
    assert_eq!(v["config"], json!({"level": "debug", "limits": {"max": 5}}));

    // Recover with a strategy.
    let r = admin(
        &stack,
        &["agents", "recover", "cli-a", "--strategy", "reload"],
    )
    .await;
    assert!(
        r.ok || r.stderr.contains("INVALID_TRANSITION"),
        "{}",
        r.stderr
    );

    // The audit trail, oldest first, with actor and reason.
    let events = json_of(&stack, &["agents", "events", "cli-a"]).await;
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types[..3],
        ["AgentRegistered", "StartRequested", "StopRequested"]
    );
    assert!(types.contains(&"ConfigRolledBack"), "{types:?}");
    assert_eq!(events[0]["reason"], "from the cli");
    let r = admin(
        &stack,
        &["agents", "events", "cli-a", "--type", "ConfigUpdated"],
    )
    .await;
    assert!(r.ok && r.stdout.contains("2 events"), "{}", r.stdout);

    let r = admin(
        &stack,
        &["agents", "deregister", "cli-b", "--reason", "done"],
    )
    .await;
    assert!(
        r.ok && r.stdout.contains("AgentDeregistered"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let gone = eventually(Duration::from_secs(10), || async {
        let r = admin(&stack, &["agents", "ls"]).await;
        r.ok && !r.stdout.contains("cli-b") && r.stdout.contains("1 of 1 agents")
    })
    .await;
    assert!(gone, "deregistered agent still listed");
    let all = json_of(&stack, &["agents", "ls", "--all"]).await;
    assert_eq!(all["total"], 2, "--all includes deregistered agents");

    stack.cleanup().await;
}

/// Every way the client can be set up wrong says what to fix and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_say_what_to_fix() {
    let stack = ApiStack::start().await;

    // Nothing configured.
    let out = opmas().args(["agents", "ls"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no API server configured") && err.contains("OPMAS_SERVER"),
        "{err}"
    );
    // A server but no token.
    let out = opmas()
        .args(["agents", "ls", "--server", &stack.base])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token configured"));
    // Not an http URL.
    let out = opmas()
        .args(["agents", "ls", "--server", "localhost:1", "--token", "x"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with http://"));
    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = opmas()
        .args(["agents", "ls", "--token", "x", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the OPMAS API") && err.contains("opmas serve"),
        "{err}"
    );

    // A wrong token, an unknown agent, an invalid id: the API's code and message.
    let r = run(&stack, "opm_wrong", &["agents", "ls"]).await;
    assert!(!r.ok && r.stderr.contains("UNAUTHORIZED"), "{}", r.stderr);
    let r = admin(&stack, &["agents", "show", "ghost"]).await;
    assert!(
        !r.ok && r.stderr.contains("AGENT_NOT_FOUND (404)"),
        "{}",
        r.stderr
    );
    let r = admin(
        &stack,
        &["agents", "register", "Bad_Id", "--command", "true"],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("VALIDATION_FAILED") && r.stderr.contains("[field: agent_id]"),
        "{}",
        r.stderr
    );
    let r = admin(&stack, &["agents", "register", "x"]).await;
    assert!(!r.ok && r.stderr.contains("--spec FILE"), "{}", r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("spec.json");
    std::fs::write(&bad, "{not json").unwrap();
    let r = admin(
        &stack,
        &["agents", "register", "x", "--spec", bad.to_str().unwrap()],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("invalid JSON") && r.stderr.contains("spec.json"),
        "{}",
        r.stderr
    );
    let r = admin(&stack, &["config", "set", "ghost"]).await;
    assert!(
        !r.ok && r.stderr.contains("--set key=value"),
        "{}",
        r.stderr
    );
    let r = admin(&stack, &["agents", "register", "cfg", "--command", "true"]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = admin(
        &stack,
        &["config", "set", "cfg", "--set", "a=1", "--set", "a.b=2"],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("`a` is not an object"),
        "{}",
        r.stderr
    );

    // The config file: server and token from it; a broken one is named.
    let file = dir.path().join("cli.toml");
    std::fs::write(
        &file,
        format!(
            "server = \"{}\"\ntoken = \"{}\"\n",
            stack.base, stack.admin_token
        ),
    )
    .unwrap();
    let out = opmas()
        .args(["agents", "ls", "--cli-config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("AGENT"));
    // The same through OPMAS_CLI_CONFIG, with flags taking precedence.
    let out = opmas()
        .env("OPMAS_CLI_CONFIG", &file)
        .args(["agents", "ls", "--token", "opm_wrong"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHORIZED"),
        "flag beats file"
    );
    std::fs::write(&file, "server = [1]\n").unwrap();
    let out = opmas()
        .args(["agents", "ls", "--cli-config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cli.toml") && err.contains("not a valid CLI config"),
        "{err}"
    );
    let out = opmas()
        .args(["agents", "ls", "--cli-config", "/nonexistent/cli.toml"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading CLI config /nonexistent/cli.toml")
    );

    stack.cleanup().await;
}

/// `opmas token create|ls|revoke`: a viewer token reads but may not act,
/// and stops working once revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_through_the_cli() {
    let stack = ApiStack::start().await;
    let r = admin(&stack, &["agents", "register", "tok", "--command", "true"]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = admin(
        &stack,
        &["token", "create", "--role", "viewer", "--name", "ci-reader"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let viewer = r.stdout.trim().to_string();
    assert!(viewer.starts_with("opm_"), "{viewer}");

    let r = run(&stack, &viewer, &["agents", "show", "tok"]).await;
    assert!(r.ok, "{}", r.stderr);
    let r = run(&stack, &viewer, &["agents", "start", "tok"]).await;
    assert!(
        !r.ok && r.stderr.contains("FORBIDDEN (403)"),
        "{}",
        r.stderr
    );
    let r = run(&stack, &viewer, &["token", "create", "--role", "admin"]).await;
    assert!(!r.ok && r.stderr.contains("FORBIDDEN"), "{}", r.stderr);
    let r = admin(&stack, &["token", "create", "--role", "root"]).await;
    assert!(!r.ok && r.stderr.contains("(422)"), "{}", r.stderr);

    let list = json_of(&stack, &["token", "ls"]).await;
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci-reader")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .expect("created token listed");
    let r = admin(&stack, &["token", "ls"]).await;
    assert!(
        r.stdout.contains("ci-reader") && r.stdout.contains("viewer"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&viewer), "the secret is never listed");
    let r = admin(&stack, &["token", "revoke", &id]).await;
    assert!(
        r.ok && r.stdout.contains("revoked"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    let r = run(&stack, &viewer, &["agents", "show", "tok"]).await;
    assert!(!r.ok && r.stderr.contains("UNAUTHORIZED"), "{}", r.stderr);
    stack.cleanup().await;
}

/// `opmas logs` searches by text and level; `-f` prints lines published
/// after it started; `opmas events tail` prints lifecycle events as they
/// are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_tail_through_the_cli() {
    let stack = ApiStack::start().await;
    let r = admin(
        &stack,
        &["agents", "register", "talker", "--command", "true"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);

    let js = async_nats::jetstream::new(stack.client.clone());
    for (level, line) in [
        ("info", "listening on port 9000"),
        ("error", "upstream refused the connection"),
    ] {
        let l = json!({"agent_id": "talker", "node": "n1", "pid": 7, "at": chrono::Utc::now(),
                       "stream": "stdout", "level": level, "line": line});
        js.publish(
            stack.telemetry.logs_subject("talker", level),
            l.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let found = eventually(Duration::from_secs(10), || async {
        let r = admin(&stack, &["logs", "talker", "--grep", "REFUSED"]).await;
        r.ok && r.stdout.contains("upstream refused") && !r.stdout.contains("listening")
    })
    .await;
    assert!(found, "log search by text");
    let r = admin(&stack, &["logs", "talker", "--level", "info"]).await;
    assert!(
        r.stdout.contains("listening") && !r.stdout.contains("refused"),
        "{}",
        r.stdout
    );
    let r = admin(&stack, &["logs", "talker"]).await;
    let (a, b) = (
        r.stdout.find("listening").unwrap(),
        r.stdout.find("refused").unwrap(),
    );
    assert!(a < b, "oldest first: {}", r.stdout);
    let r = admin(&stack, &["logs", "talker", "--level", "loud"]).await;
    assert!(
        !r.ok && r.stderr.contains("VALIDATION_FAILED"),
        "{}",
        r.stderr
    );

    // Follow: lines published while it runs.
    let mut follow = opmas()
        .args([
            "logs", "talker", "-f", "-n", "1", "--grep", "fresh", "-o", "json",
        ])
        .args(["--server", &stack.base, "--token", &stack.admin_token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let publisher = {
        let client = stack.client.clone();
        let subject = stack.telemetry.logs_subject("talker", "warn");
        tokio::spawn(async move {
            for i in 0..100 {
                let l = json!({"agent_id": "talker", "node": "n1", "pid": 7, "at": chrono::Utc::now(),
                               "stream": "stderr", "level": "warn", "line": format!("fresh line {i}")});
                client
                    .publish(subject.clone(), l.to_string().into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("no followed line")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(
        v["line"].as_str().unwrap().starts_with("fresh line"),
        "{line}"
    );
    assert_eq!(v["level"], "warn");
    publisher.abort();
    follow.kill().await.unwrap();

    // events tail: the next lifecycle events of the agent, then exit; the
    // events of another agent, committed in between, are filtered out.
    let r = admin(
        &stack,
        &["agents", "register", "other", "--command", "true"],
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let mut tail = opmas()
        .args(["events", "tail", "--agent", "talker", "--count", "2"])
        .args(["--server", &stack.base, "--token", &stack.admin_token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(tail.stdout.take().unwrap()).lines();
    // Keep committing events until the tail (subscribing) has seen two.
    let stopper = {
        let base = stack.base.clone();
        let token = stack.admin_token.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..100 {
                // Config updates always commit an event (no supervisor needed).
                for agent in ["other", "talker"] {
                    let url = format!("{base}/api/v1/agents/{agent}/config");
                    let Ok(resp) = http.get(&url).bearer_auth(&token).send().await else {
                        continue;
                    };
                    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
                    let _ = http
                        .put(&url)
                        .bearer_auth(&token)
                        .header("if-match", etag)
                        .json(&json!({"config": {"n": i}}))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = out.next_line().await.unwrap() {
            seen.push(l);
        }
    })
    .await;
    stopper.abort();
    assert!(done.is_ok(), "tail never ended: {seen:?}");
    let status = tail.wait().await.unwrap();
    assert!(status.success());
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|l| l.contains("talker") && l.contains("ConfigUpdated")),
        "{seen:?}"
    );
    stack.cleanup().await;
}

/// `opmas agents discover` scans the server's package roots and prints
/// what changed; without roots the server's refusal is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let stack = ApiStack::start_with(opmas_testkit::api::StackOptions {
        package_roots: vec![root.path().to_path_buf()],
        ..Default::default()
    })
    .await;
    let out = opmas()
        .args(["agents", "new", "found", "--dir"])
        .arg(root.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    std::fs::create_dir_all(root.path().join("broken")).unwrap();
    std::fs::write(root.path().join("broken/agent.toml"), "name = 42\n").unwrap();
    let r = admin(&stack, &["agents", "discover"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("registered  found"), "{}", r.stdout);
    assert!(
        r.stdout.contains("invalid") && r.stdout.contains("broken/agent.toml:1"),
        "{}",
        r.stdout
    );
    let again = json_of(&stack, &["agents", "discover"]).await;
    assert_eq!(again["unchanged"][0]["agent_id"], "found", "{again}");
    stack.cleanup().await;

    let plain = ApiStack::start().await;
    let r = admin(&plain, &["agents", "discover"]).await;
    assert!(
        !r.ok && r.stderr.contains("DISCOVERY_NOT_CONFIGURED"),
        "{}",
        r.stderr
    );
    plain.cleanup().await;
}
