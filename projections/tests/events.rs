//! The events projector against the real Postgres and nats-server: every
//! event type lands in its read models; duplicates and out-of-order
//! redelivery change nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::Utc;
use opmas_domain::{
    AgentCommand, AgentSpec, Health, ProcessIdentity, RecoveryPolicy, RecoveryStrategy,
    RestartPolicy, Severity,
};
use opmas_store::AgentStore;
use sqlx::Row;
use support::*;
use tokio_util::sync::CancellationToken;

fn identity(pid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid,
        boot_id: "boot".into(),
        start_time_ticks: u64::from(pid),
    }
}

fn started(pid: u32) -> AgentCommand {
    AgentCommand::ReportProcessStarted {
        node: "node-a".into(),
        identity: identity(pid),
        at: Utc::now(),
    }
}

fn exited(pid: u32, code: i32) -> AgentCommand {
    AgentCommand::ReportProcessExited {
        pid,
        code: Some(code),
        signal: None,
        at: Utc::now(),
        jitter_sample: 0.5,
    }
}

fn error(message: &str) -> AgentCommand {
    AgentCommand::RecordError {
        severity: Severity::Error,
        category: "io".into(),
        error_type: "Timeout".into(),
        message: message.into(),
        context: serde_json::json!({ "message": message }),
    }
}

/// The whole life of one agent, covering all 19 event types.
fn lifecycle() -> Vec<AgentCommand> {
    let spec = AgentSpec {
        package_version: "2.0".into(),
        restart: RestartPolicy {
            intensity: 1,
            ..RestartPolicy::default()
        },
        ..spec()
    };
    vec![
        AgentCommand::UpdateConfig {
            expected_version: 1,
            config: serde_json::json!({ "level": "debug", "port": 8080 }),
        },
        AgentCommand::RollbackConfig { to_version: 1 },
        AgentCommand::UpdatePackage { spec },
        AgentCommand::SetRecoveryPolicy {
            policy: RecoveryPolicy {
                strategy: RecoveryStrategy::Restart,
                auto: false,
                max_attempts: 3,
            },
        },
        AgentCommand::Start,
        started(100),
        AgentCommand::ReportHealth {
            health: Health::Warning,
            reason: "slow".into(),
        },
        AgentCommand::ReportLimitExceeded {
            resource: "memory".into(),
            limit: 100.0,
            observed: 150.0,
            window_ms: 1000,
        },
        error("connect to 10.0.0.1:5432 timed out after 30s"),
        error("connect to 10.0.0.9:6543 timed out after 5s"),
        error("disk full"),
        AgentCommand::TriggerRecovery {
            strategy: RecoveryStrategy::Restart,
            reason: "unhealthy".into(),
        },
        AgentCommand::CompleteRecovery {
            succeeded: false,
            error: Some("still slow".into()),
        },
        AgentCommand::Restart,
        exited(100, 0),
        started(101),
        AgentCommand::Stop,
        AgentCommand::ReportStopped { at: Utc::now() },
        AgentCommand::Start,
        started(102),
        exited(102, 1),
        started(103),
        exited(103, 1),
        AgentCommand::Stop,
        AgentCommand::Deregister,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_type_lands_in_its_read_models() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let cancel = CancellationToken::new();
    let relay = streams.relay(&db, &cancel);
    let projector = streams.projector(&db, streams.config(), &cancel);
    let store = AgentStore::new(db.pool.clone());

    let id = "full";
    store
        .execute(id, register(id), meta("alice"))
        .await
        .unwrap();
    let lost_at = chrono::DateTime::from_timestamp(Utc::now().timestamp() - 30, 0).unwrap();
    for (n, command) in lifecycle().into_iter().enumerate() {
        let metadata = match command {
            AgentCommand::Stop => meta_reason("alice", "maintenance"),
            _ => meta("alice"),
        };
        let events = store.execute(id, command.clone(), metadata).await.unwrap();
        assert!(
            !events.is_empty(),
            "command {n} {command:?} emitted nothing"
        );
        if n == 6 {
            let lost = AgentCommand::ReportHeartbeatLost {
                last_seen: Some(lost_at),
            };
            store.execute(id, lost, meta("supervisor")).await.unwrap();
        }
    }
    let types: Vec<String> = sqlx::query_scalar("select distinct event_type from events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        types.len(),
        19,
        "scenario covers every event type: {types:?}"
    );
    wait_caught_up(&db.pool).await;

    let s = sqlx::query("select * from agent_status where agent_id = 'full'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let max: i64 = sqlx::query_scalar("select max(sequence) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(s.get::<i64, _>("last_sequence"), max);
    assert_eq!(s.get::<String, _>("last_event_type"), "AgentDeregistered");
    assert!(s.get::<bool, _>("deregistered"));
    assert_eq!(s.get::<String, _>("desired_state"), "stopped");
    assert_eq!(s.get::<String, _>("status"), "stopped");
    assert_eq!(s.get::<String, _>("recovery_status"), "failed");
    assert_eq!(
        s.get::<Option<String>, _>("package_version").as_deref(),
        Some("2.0")
    );
    assert_eq!(
        (
            s.get::<i32, _>("spec_version"),
            s.get::<i32, _>("config_version")
        ),
        (2, 3)
    );
    assert_eq!(s.get::<i64, _>("restart_count"), 2);
    assert_eq!(
        s.get::<Option<String>, _>("node").as_deref(),
        Some("node-a")
    );
    let heartbeat: Option<chrono::DateTime<Utc>> = s.get("last_heartbeat_at");
    assert_eq!(
        heartbeat.map(|t| t.timestamp_micros()),
        Some(lost_at.timestamp_micros())
    );
    assert!(
        s.get::<Option<String>, _>("last_error")
            .unwrap()
            .contains("restarts within")
    );
    let state: serde_json::Value = s.get("state");
    assert_eq!(state["config_version"], 3);

    let history: Vec<(Option<String>, String, Option<String>, String)> = sqlx::query_as(
        "select from_status, to_status, reason, actor from agent_status_history order by sequence",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        history[0],
        (None, "registered".into(), None, "alice".into())
    );
    for (from, to) in [
        ("registered", "starting"),
        ("starting", "running"),
        ("running", "degraded"),
        ("stopping", "starting"),
        ("stopping", "stopped"),
        ("running", "backoff"),
        ("backoff", "running"),
    ] {
        assert!(
            history
                .iter()
                .any(|h| h.0.as_deref() == Some(from) && h.1 == to),
            "{from} -> {to} missing from {history:?}"
        );
    }
    assert!(
        history
            .iter()
            .any(|h| h.1 == "failed" && h.2.as_deref().unwrap_or("").contains("giving up"))
    );
    assert!(
        history
            .iter()
            .any(|h| h.1 == "stopping" && h.2.as_deref() == Some("maintenance"))
    );

    let (attempt, outcome, err): (i32, String, Option<String>) = sqlx::query_as(
        "select attempt, outcome, error from agent_recovery_attempts where completed_at is not null",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (attempt, outcome.as_str(), err.as_deref()),
        (1, "failed", Some("still slow"))
    );

    let errors: i64 = sqlx::query_scalar("select count(*) from agent_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(errors, 3);
    let groups: Vec<(i64, String)> =
        sqlx::query_as("select count, first_message from agent_error_groups order by count desc")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(
        groups[0],
        (2, "connect to 10.0.0.1:5432 timed out after 30s".into())
    );

    let configs: Vec<(i32, serde_json::Value, Option<i32>)> =
        sqlx::query_as("select version, diff, rolled_back_to from agent_configs order by version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(configs.len(), 3);
    assert_eq!(
        configs[1].1,
        serde_json::json!([
            {"path": "/level", "to": "debug"}, {"path": "/port", "to": 8080}
        ])
    );
    assert_eq!(
        configs[2].1,
        serde_json::json!([
            {"path": "/level", "from": "debug"}, {"path": "/port", "from": 8080}
        ])
    );
    assert_eq!(configs[2].2, Some(1));

    // Time travel: the state right after event 7 (ProcessStarted), and the audit trail.
    let seventh: chrono::DateTime<Utc> =
        sqlx::query_scalar("select recorded_at from events where sequence = 7")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let as_of = opmas_projections::audit::state_as_of(&db.pool, id, seventh)
        .await
        .unwrap();
    assert_eq!(
        (as_of.sequence, as_of.agent.status),
        (7, opmas_domain::ProcessStatus::Running)
    );
    assert_eq!(as_of.agent.pid, Some(100));
    let missing = opmas_projections::audit::state_as_of(&db.pool, "nobody", seventh).await;
    assert!(matches!(
        missing,
        Err(opmas_projections::Error::NotFound(_))
    ));
    let trail = opmas_projections::audit::events(&db.pool, id, Some(seventh), None)
        .await
        .unwrap();
    assert_eq!(trail.first().map(|e| e.sequence), Some(7));
    assert_eq!(trail.len() as i64, max - 6);
    assert!(
        trail
            .iter()
            .any(|e| e.reason() == Some("maintenance") && e.actor() == "alice")
    );

    assert_rebuild_equals_live(&db.pool).await;
    cancel.cancel();
    relay.await.unwrap();
    projector.await.unwrap();
    streams.cleanup().await;
    db.cleanup().await;
}

/// Body of one stored event as the relay publishes it.
async fn body(db: &TestDb, agent: &str, sequence: i64) -> Vec<u8> {
    let text: String = sqlx::query_scalar(
        "select json_build_object('aggregate_type', aggregate_type, 'aggregate_id', aggregate_id, \
           'sequence', sequence, 'event_type', event_type, 'event_version', event_version, \
           'payload', payload, 'metadata', metadata, 'recorded_at', recorded_at)::text \
         from events where aggregate_id = $1 and sequence = $2",
    )
    .bind(agent)
    .bind(sequence)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    text.into_bytes()
}

/// Duplicates (same event twice, old events again) and out-of-order
/// delivery across agents (b3 before b2, a gap), published by hand: the
/// read models equal a rebuild from the store, where each event is applied
/// once and in order. Writing the same batch again changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_and_out_of_order_redelivery_change_nothing() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let store = AgentStore::new(db.pool.clone());
    for id in ["a", "b"] {
        store.execute(id, register(id), meta("t")).await.unwrap();
        for n in 1..=3 {
            store
                .execute(id, update_config(n, n as usize), meta("t"))
                .await
                .unwrap();
            store
                .execute(id, record_error(n as usize), meta("t"))
                .await
                .unwrap();
        }
    }
    // a: 1..7, b: 1..7
    let order = [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("a", 2),
        ("b", 3),
        ("a", 1),
        ("b", 2),
        ("a", 3),
        ("b", 5),
        ("b", 4),
        ("a", 4),
        ("a", 5),
        ("a", 6),
        ("a", 7),
        ("b", 7),
        ("b", 6),
        ("a", 7),
    ];
    let js = streams.js();
    for (n, (agent, seq)) in order.iter().enumerate() {
        let subject = streams.events.subject(agent, "X");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{agent}:{seq}:{n}").as_str());
        js.publish_with_headers(subject, headers, body(&db, agent, *seq).await.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let config = opmas_projections::Config {
        batch: 3,
        ..streams.config()
    };
    let projector = streams.projector(&db, config, &cancel);
    wait_caught_up(&db.pool).await;
    // Everything delivered (the last message is a duplicate of a:7).
    let consumed = eventually(Duration::from_secs(30), || async {
        let seq: i64 = sqlx::query_scalar(
            "select coalesce(max(stream_sequence), 0) from projection_consumers where name like '%events'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        seq == order.len() as i64
    })
    .await;
    assert!(consumed, "not every message was consumed");
    cancel.cancel();
    projector.await.unwrap();

    let (a, b): (i32, i32) = sqlx::query_as(
        "select (select config_version from agent_status where agent_id = 'a'), \
                (select config_version from agent_status where agent_id = 'b')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((a, b), (4, 4), "each config update applied exactly once");
    let counts: Vec<i64> =
        sqlx::query_scalar("select count from agent_error_groups order by agent_id, fingerprint")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(counts, vec![3, 3], "each error counted once");
    assert_rebuild_equals_live(&db.pool).await;

    // The same events again, straight into the projector's write path.
    let before = live_checksums(&db.pool).await;
    let mut envelopes = Vec::new();
    for (agent, seq) in order {
        let mut conn = db.pool.acquire().await.unwrap();
        envelopes.extend(
            opmas_projections::envelope::load_range(&mut conn, agent, seq - 1, seq + 1)
                .await
                .unwrap(),
        );
    }
    let mut tx = db.pool.begin().await.unwrap();
    opmas_projections::events::project(&mut tx, &envelopes)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(live_checksums(&db.pool).await, before);

    streams.cleanup().await;
    db.cleanup().await;
}
