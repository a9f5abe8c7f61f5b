//! Secrets are sealed at the edge (ADR 0004), against a real API, Postgres,
//! nats-server and supervisor: registered through the API, updated through
//! the API, discovered from a package (and changed in its config file),
//! their clear text is in no table of
//! the database (events, outbox, snapshots, read models) and in no message
//! of the events stream, while the agent processes get them in clear.
//! A secret its schema refuses, or an env value that is not a string, is
//! named in the 422, never shown.
//! Without a key, secrets are refused and plain specs still work; a
//! supervisor without the right key fails the spawn with a recorded error.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use opmas_domain::secret::SecretKey;
use opmas_domain::{Agent, AgentEvent, ProcessStatus};
use opmas_supervisor::{Config, Supervisor};
use opmas_testkit::api::{ApiStack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRETS: [&str; 6] = [
    "env-s3cret",
    "cfg-s3cret",
    "new-s3cret",
    "pkg-s3cret",
    "pkg-n3w-s3cret",
    REFUSED,
];

/// A secret shorter than the schema's `minLength` of 8: refused, and never
/// shown in the refusal.
const REFUSED: &str = "hunt3r7";

/// Registers `spec` as `id`: refused with a 422 naming `field`; the answer.
async fn refused_registration(stack: &ApiStack, id: &str, spec: Value, field: &str) -> Value {
    let body = json!({"agent_id": id, "spec": spec});
    let (s, answer) = call(stack, Method::POST, "/api/v1/agents", Some(body)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
    answer
}

async fn call(
    stack: &ApiStack,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_with(stack, method, path, body, None).await
}

async fn call_with(
    stack: &ApiStack,
    method: Method,
    path: &str,
    body: Option<Value>,
    if_match: Option<i64>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, stack.url(path))
        .bearer_auth(&stack.admin_token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(version) = if_match {
        req = req.header("if-match", format!("\"{version}\""));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A supervisor for `node` on the stack's streams, opening with `key`.
fn supervise(stack: &ApiStack, node: &str, key: Option<Arc<SecretKey>>, logs: &std::path::Path) {
    let mut config = Config::new(node, nats_url());
    config.claim_unplaced = false;
    config.log_dir = logs.to_path_buf();
    config.stream = stack.events.clone();
    config.telemetry = stack.telemetry.clone();
    config.reconcile_interval = Duration::from_millis(500);
    config.heartbeat_prefix = format!("opmas_{}.heartbeat", tag());
    config.control_prefix = format!("opmas_{}.control", tag());
    config.secret_key = key;
    let supervisor = Supervisor::new(stack.store.clone(), stack.client.clone(), config).unwrap();
    tokio::spawn(supervisor.run(stack.cancel.clone()));
}

async fn wait_for(stack: &ApiStack, id: &str, what: &str, check: impl Fn(&Agent) -> bool) -> Agent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (agent, _) = stack.store.load(id).await.unwrap();
        if check(&agent) {
            return agent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: waited 30 s for {what}; status {:?}, last error {:?}",
            agent.status,
            agent.last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn environ(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    format!("\n{}", String::from_utf8_lossy(&raw).replace('\0', "\n"))
}

/// Everything the database holds, every table as text.
async fn database_text(pool: &sqlx::PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'public' order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut text = String::new();
    for table in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "select string_agg(t::text, '\n') from \"{table}\" t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        text.push_str(&format!("== {table}\n{}\n", rows.unwrap_or_default()));
    }
    text
}

/// Every message of the events stream, as text.
async fn stream_text(stack: &ApiStack) -> String {
    let js = async_nats::jetstream::new(stack.client.clone());
    let mut stream = js.get_stream(&stack.events.name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut text = String::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            text.push_str(&String::from_utf8_lossy(&message.payload));
            text.push('\n');
        }
    }
    text
}

fn vault_spec(dir: &std::path::Path) -> Value {
    // Writes the config it is given at start and at each SIGHUP.
    let script = format!(
        "cat \"$OPMAS_AGENT_CONFIG_FILE\" > {seen}; \
         trap 'cat \"$OPMAS_AGENT_CONFIG_FILE\" > {seen}' HUP; while true; do sleep 0.1; done",
        seen = dir.join("seen").display()
    );
    json!({"agent_type": "db", "command": "sh", "args": ["-c", script],
        "node": "node-a", "reload": "sighup", "heartbeat": {"enabled": false},
        "env": {"DB_PASSWORD": "env-s3cret", "MODE": "fast"}, "secret_env": ["DB_PASSWORD"],
        "config_schema": {"type": "object", "properties": {
            "password": {"type": "string", "minLength": 8, "x-secret": true},
            "level": {"type": "string"}}},
        "config": {"password": "cfg-s3cret", "level": "info"}})
}

fn write_package(root: &std::path::Path) {
    let dir = root.join("pkg");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("agent.toml"),
        "name = \"pkg\"\ntype = \"t\"\nversion = \"1.0.0\"\ncommand = \"./bin/run\"\n\
         node = \"node-a\"\nsecret_env = [\"TOKEN\"]\nenv = { TOKEN = \"pkg-s3cret\" }\n\
         [heartbeat]\nenabled = false\n\
         [config]\nreload = \"restart\"\n\
         schema = { type = \"object\", properties = { key = { type = \"string\", \"x-secret\" = true } } }\n",
    )
    .unwrap();
    std::fs::write(dir.join("config/base.toml"), "key = \"pkg-s3cret\"\n").unwrap();
    std::fs::write(dir.join("bin/run"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Kills the agents' processes (they outlive their supervisor by design).
async fn finish(stack: ApiStack) {
    for id in stack.store.agent_ids().await.unwrap_or_default() {
        if let Ok((agent, _)) = stack.store.load(&id).await
            && let Some(pid) = agent.pid
        {
            let _ = opmas_supervisor::signal::group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_sealed_in_store_and_stream_and_clear_for_the_agent() {
    let packages = tempfile::tempdir().unwrap();
    write_package(packages.path());
    let stack = ApiStack::start_with(StackOptions {
        package_roots: vec![packages.path().to_path_buf()],
        ..StackOptions::default()
    })
    .await;
    let logs = tempfile::tempdir().unwrap();
    supervise(&stack, "node-a", stack.secret_key.clone(), logs.path());
    let work = tempfile::tempdir().unwrap();

    // Registered through the API: the process gets the clear values.
    let (s, v) = call(
        &stack,
        Method::POST,
        "/api/v1/agents",
        Some(json!({"agent_id": "vault", "spec": vault_spec(work.path())})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(&stack, Method::POST, "/api/v1/agents/vault/start", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let agent = wait_for(&stack, "vault", "running", |a| {
        a.status == ProcessStatus::Running
    })
    .await;
    let env = environ(agent.pid.unwrap());
    assert!(env.contains("\nDB_PASSWORD=env-s3cret\n"), "{env}");
    assert!(
        env.contains("\"password\":\"cfg-s3cret\""),
        "OPMAS_AGENT_CONFIG: {env}"
    );
    let seen = work.path().join("seen");
    let read = |want: &'static str| {
        let seen = seen.clone();
        async move { std::fs::read_to_string(&seen).is_ok_and(|s| s.contains(want)) }
    };
    assert!(
        eventually(Duration::from_secs(10), || read("cfg-s3cret")).await,
        "config file"
    );

    // A secret its schema refuses (minLength 8), in a config update and in
    // a registration: the answer names the field and the rule, never the
    // value.
    let (s, v) = call_with(
        &stack,
        Method::PUT,
        "/api/v1/agents/vault/config",
        Some(json!({"config": {"password": REFUSED}})),
        Some(1),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "checked in clear: {v}");
    assert_eq!(v["error"]["details"]["field"], "config.password", "{v}");
    let mut short = vault_spec(work.path());
    short["config"]["password"] = json!(REFUSED);
    let registering =
        refused_registration(&stack, "vault-short", short, "spec.config.password").await;
    // An env value that is not a string (any may be secret): refused by
    // the JSON decoder, whose message would show it.
    let mut numeric = vault_spec(work.path());
    numeric["env"]["DB_PASSWORD"] = json!(73317331);
    let decoding =
        refused_registration(&stack, "vault-numeric", numeric, "spec.env.DB_PASSWORD").await;
    assert!(!decoding.to_string().contains("73317331"), "{decoding}");
    for answer in [&v, &registering] {
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("shorter than 8 characters"), "{answer}");
        assert!(!answer.to_string().contains(REFUSED), "{answer}");
    }

    // A config update through the API (PUT): reaches the process by SIGHUP.
    let (s, v) = call_with(
        &stack,
        Method::PUT,
        "/api/v1/agents/vault/config",
        Some(json!({"config": {"password": "new-s3cret", "level": "debug"}})),
        Some(1),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        eventually(Duration::from_secs(10), || read("new-s3cret")).await,
        "reloaded config"
    );
    // Sent back as read (`***`): the sealed value is kept, nothing changes
    // but the level (deterministic sealing: the diff has no secret in it).
    let (s, v) = call_with(
        &stack,
        Method::PUT,
        "/api/v1/agents/vault/config",
        Some(json!({"config": {"password": "***", "level": "warn"}})),
        Some(2),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(eventually(Duration::from_secs(10), || read("\"warn\"")).await);
    assert!(
        read("new-s3cret").await,
        "the kept secret reached the agent"
    );
    let versions = || async {
        let (_, v) = call(
            &stack,
            Method::GET,
            "/api/v1/agents/vault/config/versions",
            None,
        )
        .await;
        v
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            versions().await.as_array().is_some_and(|a| a.len() == 3)
        })
        .await
    );
    let diff = versions().await[0]["diff"].clone();
    let paths: Vec<&str> = diff
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        ["/level"],
        "an unchanged secret seals to the same text: {diff}"
    );

    // Discovered from a package.
    let (s, v) = call(&stack, Method::POST, "/api/v1/agents/discover", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["registered"][0]["agent_id"], "pkg", "{v}");
    let (s, v) = call(&stack, Method::POST, "/api/v1/agents/discover", None).await;
    assert_eq!(
        v["unchanged"][0]["agent_id"], "pkg",
        "sealed again, the same: {s} {v}"
    );
    call(&stack, Method::POST, "/api/v1/agents/pkg/start", None).await;
    let agent = wait_for(&stack, "pkg", "running", |a| {
        a.status == ProcessStatus::Running
    })
    .await;
    let env = environ(agent.pid.unwrap());
    assert!(env.contains("\nTOKEN=pkg-s3cret\n"), "{env}");
    assert!(env.contains("{\"key\":\"pkg-s3cret\"}"), "{env}");

    // The package's config file edited (same version): a new config
    // version, sealed, that the running agent gets (`reload = "restart"`).
    let dir = packages.path().join("pkg");
    std::fs::write(dir.join("config/base.toml"), "key = \"pkg-n3w-s3cret\"\n").unwrap();
    let (s, v) = call(&stack, Method::POST, "/api/v1/agents/discover", None).await;
    assert_eq!(v["config_updated"][0]["agent_id"], "pkg", "{s} {v}");
    let old_pid = agent.pid;
    let agent = wait_for(&stack, "pkg", "a restart with the new config", |a| {
        a.status == ProcessStatus::Running && a.pid.is_some() && a.pid != old_pid
    })
    .await;
    let env = environ(agent.pid.unwrap());
    assert!(env.contains("{\"key\":\"pkg-n3w-s3cret\"}"), "{env}");

    // Nowhere in the database, nowhere in the stream; answers show `***`.
    let (s, v) = call(&stack, Method::GET, "/api/v1/agents/vault", None).await;
    assert_eq!(
        (s, &v["spec"]["env"]["DB_PASSWORD"]),
        (StatusCode::OK, &json!("***"))
    );
    let (_, events) = call(&stack, Method::GET, "/api/v1/agents/vault/events", None).await;
    let stored = database_text(&stack.db.pool).await;
    let published = stream_text(&stack).await;
    let answered = events.to_string();
    for (what, text) in [
        ("database", &stored),
        ("stream", &published),
        ("events answer", &answered),
    ] {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{what} holds {secret}");
        }
    }
    assert!(
        !answered.contains("opmas:sealed:v1:"),
        "answers mask sealed text: {answered}"
    );
    for text in [&stored, &published] {
        assert!(text.contains("opmas:sealed:v1:"), "sealed values are there");
        assert!(text.contains("ConfigUpdated") && text.contains("AgentRegistered"));
    }
    assert!(stored.contains("== outbox") && stored.contains("== events"));
    finish(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_key_secrets_are_refused_and_plain_specs_work() {
    let packages = tempfile::tempdir().unwrap();
    write_package(packages.path());
    let stack = ApiStack::start_with(StackOptions {
        package_roots: vec![packages.path().to_path_buf()],
        secret_key: false,
        ..StackOptions::default()
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let (s, v) = call(
        &stack,
        Method::POST,
        "/api/v1/agents",
        Some(json!({"agent_id": "vault", "spec": vault_spec(work.path())})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("VALIDATION_FAILED")),
        "{v}"
    );
    assert_eq!(
        v["error"]["details"]["field"], "spec.env.DB_PASSWORD",
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no secret key") && message.contains("--secret-key-file"),
        "{message}"
    );

    // No secret, no key needed; a secret in a config update is refused.
    let mut plain = vault_spec(work.path());
    plain["env"] = json!({"MODE": "fast"});
    plain["secret_env"] = json!([]);
    plain["config"] = json!({"level": "info"});
    let (s, v) = call(
        &stack,
        Method::POST,
        "/api/v1/agents",
        Some(json!({"agent_id": "plain", "spec": plain})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call_with(
        &stack,
        Method::PUT,
        "/api/v1/agents/plain/config",
        Some(json!({"config": {"password": "cfg-s3cret"}})),
        Some(1),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["details"]["field"], "config.password", "{v}");
    let (s, v) = call_with(
        &stack,
        Method::PUT,
        "/api/v1/agents/plain/config",
        Some(json!({"config": {"level": "debug"}})),
        Some(1),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A discovered package with secrets is reported invalid, like others.
    let (s, v) = call(&stack, Method::POST, "/api/v1/agents/discover", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["registered"].as_array().unwrap().is_empty(), "{v}");
    let invalid = &v["invalid"][0];
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("--secret-key-file"),
        "{v}"
    );

    let stored = database_text(&stack.db.pool).await;
    for secret in SECRETS {
        assert!(!stored.contains(secret), "database holds {secret}");
    }
    finish(stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supervisor_without_the_key_records_why_it_cannot_start() {
    let stack = ApiStack::start().await;
    let logs = tempfile::tempdir().unwrap();
    supervise(&stack, "node-a", None, logs.path());
    let wrong = Arc::new(SecretKey::generate().unwrap());
    supervise(&stack, "node-b", Some(wrong), logs.path());
    let work = tempfile::tempdir().unwrap();
    for (id, node) in [("nokey", "node-a"), ("wrongkey", "node-b")] {
        let mut spec = vault_spec(work.path());
        spec["node"] = json!(node);
        let (s, v) = call(
            &stack,
            Method::POST,
            "/api/v1/agents",
            Some(json!({"agent_id": id, "spec": spec})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        call(
            &stack,
            Method::POST,
            &format!("/api/v1/agents/{id}/start"),
            None,
        )
        .await;
    }
    for (id, says) in [
        ("nokey", "--secret-key-file"),
        ("wrongkey", "does not open with"),
    ] {
        let agent = wait_for(&stack, id, "a recorded error", |a| a.last_error.is_some()).await;
        let error = agent.last_error.clone().unwrap();
        assert!(error.contains(says), "{error}");
        assert!(error.contains(&format!("agent `{id}`")), "{error}");
        // Never spawned: the agent failed with the reason (no pid).
        assert_eq!(agent.status, ProcessStatus::Failed, "{agent:?}");
        assert_eq!(agent.pid, None);
        assert!(error.starts_with("cannot start the process: "), "{error}");
        let events = stack.store.events(id).await.unwrap();
        assert!(events.iter().any(|e| matches!(&e.payload,
            AgentEvent::ErrorRecorded { error_type, .. } if error_type == "SpawnFailed")));
    }
    finish(stack).await;
}
