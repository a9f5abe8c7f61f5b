//! The SDK against the real nats-server (`OPMAS_TEST_NATS_URL`, default
//! 127.0.0.1:4222). Each test uses its own subjects, so tests sharing the
//! server do not see each other's messages.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use opmas_sdk::{Agent, ControlReply, Error, Handle, Heartbeat, Metric, Outcome, Settings};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn nats_url() -> String {
    std::env::var("OPMAS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Settings of an agent with its own subjects `sdk_<tag>.*.<agent_id>`.
fn settings(extra: &[(&str, &str)]) -> Settings {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let id = format!("agent-{tag}");
    let mut vars = vec![
        ("AGENT_ID".to_string(), id.clone()),
        ("NATS_URL".into(), nats_url()),
        ("HEARTBEAT_INTERVAL".into(), "0.2".into()),
        (
            "OPMAS_HEARTBEAT_SUBJECT".into(),
            format!("sdk_{tag}.heartbeat.{id}"),
        ),
        (
            "OPMAS_CONTROL_SUBJECT".into(),
            format!("sdk_{tag}.control.{id}"),
        ),
        (
            "OPMAS_AGENT_METRICS_SUBJECT".into(),
            format!("sdk_{tag}.metrics.{id}"),
        ),
    ];
    // Later entries win.
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::from_lookup(|name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

async fn client() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap()
}

async fn control(client: &async_nats::Client, s: &Settings, body: Value) -> ControlReply {
    let body = serde_json::to_vec(&body).unwrap();
    let reply = tokio::time::timeout(WAIT, client.request(s.control_subject.clone(), body.into()))
        .await
        .expect("control reply in time")
        .expect("control reply");
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Work that waits until the agent is asked to stop.
async fn idle(handle: Handle) -> Result<(), Error> {
    handle.stopped().await;
    Ok(())
}

/// Heartbeats come on the supervisor's subject, no faster than the interval,
/// with the status the agent set; a ping is answered; a custom metric
/// arrives; stop ends `run` with exit code 0 and the agent stops listening.
#[tokio::test]
async fn heartbeats_ping_metrics_and_stop() {
    let s = settings(&[]);
    let nats = client().await;
    let mut beats = nats.subscribe(s.heartbeat_subject.clone()).await.unwrap();
    let mut metrics = nats.subscribe(s.metrics_subject.clone()).await.unwrap();
    nats.flush().await.unwrap();

    let agent = Agent::connect(s.clone()).await.unwrap();
    let handle = agent.handle();
    handle.set_status(Some("warming up"));
    let run = tokio::spawn(agent.run(idle));

    let mut seen: Vec<Heartbeat> = Vec::new();
    while seen.len() < 4 {
        let msg = tokio::time::timeout(WAIT, beats.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(serde_json::from_slice(&msg.payload).unwrap());
    }
    assert!(seen.iter().all(|b| b.agent_id == s.agent_id));
    assert_eq!(seen[0].status.as_deref(), Some("warming up"));
    for pair in seen.windows(2) {
        let gap = (pair[1].at - pair[0].at).to_std().unwrap();
        assert!(
            gap >= Duration::from_millis(150),
            "heartbeats {gap:?} apart"
        );
    }

    let pong = control(&nats, &s, json!({"action": "ping"})).await;
    assert!(pong.ok, "{pong:?}");
    assert_eq!(pong.message.as_deref(), Some("pong"));

    handle
        .metric("things_seen", 3.0, &[("kind", "test")])
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, metrics.next())
        .await
        .unwrap()
        .unwrap();
    let metric: Metric = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!((metric.name.as_str(), metric.value), ("things_seen", 3.0));
    assert_eq!(metric.labels["kind"], "test");
    assert_eq!(metric.agent_id, s.agent_id);

    let bye = control(&nats, &s, json!({"action": "stop"})).await;
    assert!(bye.ok, "{bye:?}");
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    assert_eq!(outcome.exit_code(), 0);
    assert!(handle.is_stopped());
    // The unsubscription reaches the server soon after; until it does, a
    // request is delivered but never answered.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let probe = nats.request(s.control_subject.clone(), "{}".into());
        match tokio::time::timeout(Duration::from_millis(500), probe).await {
            Err(_) => {}
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => break,
            Ok(other) => panic!("a stopped agent still answers: {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
    }
}

/// A reload hands the new configuration to the callback and makes it
/// current; a refused or malformed one leaves the old configuration; a
/// reload without configuration re-reads the configuration file.
#[tokio::test]
async fn reload_delivers_config_to_the_callback() {
    let file = std::env::temp_dir().join(format!("opmas-sdk-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, r#"{"threshold": 1}"#).unwrap();
    let s = settings(&[("OPMAS_AGENT_CONFIG_FILE", file.to_str().unwrap())]);
    assert_eq!(s.config, json!({"threshold": 1}));
    let nats = client().await;

    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = received.clone();
    let agent = Agent::connect(s.clone())
        .await
        .unwrap()
        .on_reload(move |config| {
            log.lock().unwrap().push(config.clone());
            match config.get("threshold").and_then(Value::as_u64) {
                Some(_) => Ok(()),
                None => Err("threshold must be a number".into()),
            }
        });
    let handle = agent.handle();
    let mut updates = handle.config_updates();
    let run = tokio::spawn(agent.run(idle));

    let reply = control(
        &nats,
        &s,
        json!({"action": "reload", "config": {"threshold": 5}}),
    )
    .await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(handle.config(), json!({"threshold": 5}));
    tokio::time::timeout(WAIT, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*updates.borrow_and_update(), json!({"threshold": 5}));

    let reply = control(
        &nats,
        &s,
        json!({"action": "reload", "config": {"threshold": "x"}}),
    )
    .await;
    assert!(!reply.ok);
    assert_eq!(reply.message.as_deref(), Some("threshold must be a number"));
    let reply = control(&nats, &s, json!({"action": "reload", "config": [1]})).await;
    assert!(!reply.ok);
    let reply = control(&nats, &s, json!({"action": "dance"})).await;
    assert!(!reply.ok);
    assert!(reply.message.unwrap().starts_with("not a control request"));
    assert_eq!(handle.config(), json!({"threshold": 5}));

    std::fs::write(&file, r#"{"threshold": 9}"#).unwrap();
    let reply = control(&nats, &s, json!({"action": "reload"})).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(handle.config(), json!({"threshold": 9}));
    assert_eq!(
        *received.lock().unwrap(),
        vec![
            json!({"threshold": 5}),
            json!({"threshold": "x"}),
            json!({"threshold": 9})
        ]
    );

    handle.stop();
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    let _ = std::fs::remove_file(file);
}

/// `restart` ends `run` with the restart exit code; work that fails ends
/// `run` with its error, and `run` returns when the work returns by itself.
#[tokio::test]
async fn restart_failure_and_finished_work() {
    let s = settings(&[]);
    let nats = client().await;
    let agent = Agent::connect(s.clone()).await.unwrap();
    let run = tokio::spawn(agent.run(idle));
    let reply = control(&nats, &s, json!({"action": "restart"})).await;
    assert!(reply.ok);
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((outcome, outcome.exit_code()), (Outcome::Restart, 75));

    let agent = Agent::connect(settings(&[])).await.unwrap();
    let failed = agent.run(|_| async { Err::<(), _>("disk on fire") }).await;
    assert!(
        matches!(failed, Err(Error::Work(ref m)) if m == "disk on fire"),
        "{failed:?}"
    );

    let agent = Agent::connect(settings(&[])).await.unwrap();
    let done = agent.run(|_| async { Ok::<(), Error>(()) }).await.unwrap();
    assert_eq!(done, Outcome::Finished);
}

/// Without NATS the agent cannot start, and says so.
#[tokio::test]
async fn unreachable_nats_is_a_nats_error() {
    let s = settings(&[("NATS_URL", "nats://127.0.0.1:1")]);
    match Agent::connect(s).await {
        Err(Error::Nats(_)) => {}
        Err(other) => panic!("expected a NATS error, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// An agent whose NATS server is gone still stops when asked: the last
/// flush does not wait for a reconnection. (An agent outlived the
/// nats-server of an `opmas dev` that ended, and ignored SIGTERM.)
#[tokio::test]
async fn stops_when_its_server_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = opmas_embedded::NatsServer::start(dir.path()).await.unwrap();
    let agent = Agent::connect(settings(&[("NATS_URL", &server.url())]))
        .await
        .unwrap();
    let handle = agent.handle();
    let run = tokio::spawn(agent.run(idle));
    server.stop().await;
    // Heartbeats go on meanwhile, into the buffer of a lost connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop();
    let outcome = tokio::time::timeout(WAIT, run)
        .await
        .expect("run returns without its server")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped);
}
