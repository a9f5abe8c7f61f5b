//! The event log end to end: commands → Postgres → outbox relay → JetStream,
//! against the real Postgres and nats-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use opmas_domain::AgentEvent;
use opmas_store::verify::{self, Report};
use opmas_store::{AgentStore, CommandError, Relay, RelayConfig, StreamSettings};
use tokio_util::sync::CancellationToken;

fn relay(db: &TestDb, client: &async_nats::Client, settings: &StreamSettings) -> Relay {
    let config = RelayConfig {
        stream: settings.clone(),
        sweep_interval: Duration::from_millis(200),
        retry_delay: Duration::from_millis(100),
        ack_timeout: Duration::from_secs(2),
        ..RelayConfig::default()
    };
    Relay::new(db.pool.clone(), client.clone(), config)
}

async fn backlog(db: &TestDb) -> i64 {
    opmas_store::relay::backlog(&db.pool).await.unwrap()
}

async fn settled_report(
    db: &TestDb,
    client: &async_nats::Client,
    settings: &StreamSettings,
) -> Report {
    assert!(
        eventually(Duration::from_secs(30), || async { backlog(db).await == 0 }).await,
        "outbox not drained"
    );
    let js = async_nats::jetstream::new(client.clone());
    verify::verify(&db.pool, &js, settings).await.unwrap()
}

/// 1,000 commands over 100 agents from 32 tasks: the store and the stream hold
/// the same events, same ids, in per-agent order, without duplicates; and each
/// message carries the event it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_commands_from_32_tasks_reach_the_stream_identically() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let cancel = CancellationToken::new();
    let relay_task = tokio::spawn(relay(&db, &client, &settings).run(cancel.clone()));

    let store = AgentStore::new(db.pool.clone());
    let agents: Vec<String> = (0..100).map(|i| format!("agent-{i}")).collect();
    for id in &agents {
        store.execute(id, register(id), meta("test")).await.unwrap();
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, agents, next) = (store.clone(), agents.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= 900 {
                    break;
                }
                let id = &agents[n % agents.len()];
                store
                    .execute_with_retry(id, record_error(n), meta("test"), 50)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let events = store_events(&db.pool).await;
    assert_eq!(events.len(), 1_000);
    for id in &agents {
        let seqs: Vec<i64> = events
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<i64>>(), "agent {id}");
    }

    let report = settled_report(&db, &client, &settings).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        (report.store_events, report.stream_messages, report.agents),
        (1_000, 1_000, 100)
    );

    // The message for agent-7's 3rd event carries that event, with its id header.
    let js = async_nats::jetstream::new(client.clone());
    let s = js.get_stream(&settings.name).await.unwrap();
    let msg = s
        .get_last_raw_message_by_subject(&settings.subject("agent-7", "ErrorRecorded"))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["aggregate_id"], "agent-7");
    assert_eq!(body["sequence"], 10);
    assert_eq!(body["metadata"]["actor"], "test");
    let event: AgentEvent = serde_json::from_value(body["payload"].clone()).unwrap();
    assert!(matches!(event, AgentEvent::ErrorRecorded { .. }));
    let id = msg.headers.get("Nats-Msg-Id").unwrap().to_string();
    assert_eq!(id, "agent-7:10");

    cancel.cancel();
    relay_task.await.unwrap().unwrap();
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// Concurrent conflicting commands on one agent: each applied once or
/// rejected as a conflict; sequences stay contiguous. Once with one commit
/// per statement, once with group commit (losers share a batch with winners).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conflicting_commands_apply_once_or_conflict() {
    let db = TestDb::new().await;
    let plain = AgentStore::new(db.pool.clone());
    let grouped = AgentStore::new(db.pool.clone()).with_group_commit(64);
    for (id, store) in [("solo", plain), ("grouped", grouped)] {
        store.execute(id, register(id), meta("test")).await.unwrap();

        // 32 racing optimistic config updates against version 1: one wins.
        let mut tasks = Vec::new();
        for n in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let cmd = opmas_domain::AgentCommand::UpdateConfig {
                    expected_version: 1,
                    config: serde_json::json!({ "n": n }),
                };
                store.execute(id, cmd, meta("racer")).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(events) => {
                    assert_eq!(events.len(), 1);
                    ok += 1;
                }
                Err(CommandError::Conflict) => {}
                Err(CommandError::Rejected(opmas_domain::AgentError::VersionConflict {
                    expected: 1,
                    actual: 2,
                })) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ok, 1, "{id}");
        let (agent, seq) = store.load(id).await.unwrap();
        assert_eq!((agent.config_version, seq), (2, 2), "{id}");

        // 32 racing facts with retry: all land, once each, contiguous.
        let mut tasks = Vec::new();
        for n in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .execute_with_retry(id, record_error(n), meta("racer"), 100)
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().len(), 1);
        }
        let seqs: Vec<i64> = store_events(&db.pool)
            .await
            .into_iter()
            .filter(|(a, _)| a == id)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(seqs, (1..=34).collect::<Vec<i64>>(), "{id}");
        let messages: Vec<String> = sqlx::query_scalar(
            "select payload->'ErrorRecorded'->>'message' from events where aggregate_id = $1 and sequence > 2",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let distinct: std::collections::HashSet<_> = messages.iter().collect();
        assert_eq!(distinct.len(), 32, "each fact once: {messages:?}");
    }
    db.cleanup().await;
}

/// Two writers with their own caches (as two processes): a command decided on
/// a stale cached agent is refused by the database, reloaded and decided again.
#[tokio::test]
async fn a_stale_cache_never_commits() {
    let db = TestDb::new().await;
    let a = AgentStore::new(db.pool.clone());
    let b = AgentStore::new(db.pool.clone());
    a.execute("shared", register("shared"), meta("a"))
        .await
        .unwrap();
    let cfg = |v: u32, n: i32| opmas_domain::AgentCommand::UpdateConfig {
        expected_version: v,
        config: serde_json::json!({ "n": n }),
    };
    a.execute("shared", cfg(1, 1), meta("a")).await.unwrap(); // a caches version 2
    b.execute("shared", cfg(2, 2), meta("b")).await.unwrap(); // b moves it to 3
    // a's cache still says version 2: the commit conflicts, a reloads, and the
    // domain then rejects the stale expectation.
    let err = a.execute("shared", cfg(2, 3), meta("a")).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(opmas_domain::AgentError::VersionConflict {
                expected: 2,
                actual: 3
            })
        ),
        "{err:?}"
    );
    // And a command valid on fresh state goes through at the right sequence.
    let events = a.execute("shared", cfg(3, 4), meta("a")).await.unwrap();
    assert_eq!(events[0].sequence, 4);
    let seqs: Vec<i64> = store_events(&db.pool)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    db.cleanup().await;
}

/// A command refused on a stale cached agent is decided again on the stored
/// state: here another process (the supervisor) reported the stop that makes
/// a start valid, after this writer cached the agent as `stopping`.
#[tokio::test]
async fn a_stale_cache_never_refuses_a_valid_command() {
    let db = TestDb::new().await;
    let api = AgentStore::new(db.pool.clone());
    let supervisor = AgentStore::new(db.pool.clone());
    api.execute("stale", register("stale"), meta("api"))
        .await
        .unwrap();
    api.execute("stale", opmas_domain::AgentCommand::Start, meta("api"))
        .await
        .unwrap();
    api.execute("stale", opmas_domain::AgentCommand::Stop, meta("api"))
        .await
        .unwrap(); // api caches `stopping`
    let stopped = opmas_domain::AgentCommand::ReportStopped {
        at: chrono::Utc::now(),
    };
    supervisor
        .execute("stale", stopped, meta("supervisor"))
        .await
        .unwrap();
    let events = api
        .execute("stale", opmas_domain::AgentCommand::Start, meta("api"))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence, 5);
    // A command that is invalid on the stored state is still refused.
    let err = api
        .execute("stale", opmas_domain::AgentCommand::Restart, meta("api"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)), "{err:?}");
    db.cleanup().await;
}

/// The relay is woken at once by a writer in another process (pg_notify) and
/// by one in its own process (direct wake), not by its sweep: the sweep here
/// is a minute long.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_is_woken_by_commits_not_by_its_sweep() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let cancel = CancellationToken::new();
    let local = opmas_store::OutboxNotifier::spawn(db.pool.clone(), cancel.clone());
    let config = RelayConfig {
        stream: settings.clone(),
        sweep_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let relay = Relay::new(db.pool.clone(), client.clone(), config).with_wake(local.subscribe());
    let relay_task = tokio::spawn(relay.run(cancel.clone()));
    // Give the relay time to take its lock and LISTEN.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let remote_notifier = opmas_store::OutboxNotifier::spawn(db.pool.clone(), cancel.clone());
    let remote = AgentStore::new(db.pool.clone()).with_notifier(remote_notifier);
    let in_process = AgentStore::new(db.pool.clone()).with_notifier(local);
    let js = async_nats::jetstream::new(client.clone());
    for (n, (id, store)) in [("far", remote), ("near", in_process)]
        .into_iter()
        .enumerate()
    {
        store.execute(id, register(id), meta("test")).await.unwrap();
        let arrived = eventually(Duration::from_secs(3), || {
            let js = js.clone();
            let name = settings.name.clone();
            async move {
                let Ok(s) = js.get_stream(&name).await else {
                    return false;
                };
                s.get_info()
                    .await
                    .map(|i| i.state.messages == n as u64 + 1)
                    .unwrap_or(false)
            }
        })
        .await;
        assert!(arrived, "{id}'s event was not published within 3 s");
    }
    cancel.cancel();
    relay_task.await.unwrap().unwrap();
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// NATS stopped while commands are accepted, then started again: the events
/// waited in the outbox and all arrive, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_delays_but_loses_nothing() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = opmas_embedded::NatsServer::start(dir.path()).await.unwrap();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let settings = stream();
    let cancel = CancellationToken::new();
    let relay_task = tokio::spawn(relay(&db, &client, &settings).run(cancel.clone()));
    let store = AgentStore::new(db.pool.clone());
    for i in 0..10 {
        let id = format!("a{i}");
        store
            .execute(&id, register(&id), meta("test"))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            backlog(&db).await == 0
        })
        .await
    );

    server.stop().await;
    for n in 0..200 {
        let id = format!("a{}", n % 10);
        store
            .execute(&id, record_error(n), meta("test"))
            .await
            .unwrap();
    }
    // Nothing can go out while NATS is down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(backlog(&db).await > 0, "events should wait in the outbox");

    server.restart().await.unwrap();
    let report = settled_report(&db, &client, &settings).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.store_events, report.stream_messages), (210, 210));
    cancel.cancel();
    relay_task.await.unwrap().unwrap();
    db.cleanup().await;
}

/// The relay as its own process, killed with SIGKILL mid-stream and started
/// again: the stream still equals the store, without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_mid_stream_then_restarted() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let spawn_relay = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_opmas"))
            .arg("relay")
            .env("OPMAS_DATABASE_URL", &db.url)
            .env("OPMAS_NATS_URL", nats_url())
            .env("OPMAS_EVENTS_STREAM", &settings.name)
            .env("OPMAS_EVENTS_SUBJECT_PREFIX", &settings.subject_prefix)
            .env("OPMAS_RELAY_BATCH", "50")
            .env("OPMAS_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let store = AgentStore::new(db.pool.clone());
    for i in 0..20 {
        let id = format!("r{i}");
        store
            .execute(&id, register(&id), meta("test"))
            .await
            .unwrap();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..2_000 {
                let id = format!("r{}", n % 20);
                store
                    .execute(&id, record_error(n), meta("test"))
                    .await
                    .unwrap();
            }
        })
    };
    for round in 0..3 {
        let mut child = spawn_relay();
        // Let it publish some, then kill it without warning.
        let js = async_nats::jetstream::new(client.clone());
        let got_some = eventually(Duration::from_secs(20), || {
            let js = js.clone();
            let name = settings.name.clone();
            async move {
                match js.get_stream(&name).await {
                    Ok(s) => s
                        .get_info()
                        .await
                        .map(|i| i.state.messages > 300 * round)
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(got_some, "relay published nothing in round {round}");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    writer.await.unwrap();
    let mut child = spawn_relay();
    let report = settled_report(&db, &client, &settings).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        (report.store_events, report.stream_messages),
        (2_020, 2_020)
    );
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// `verify` finds missing, duplicated and misordered events, and `repair`
/// rebuilds the stream from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_differences_and_repair_fixes_them() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let js = async_nats::jetstream::new(client.clone());
    let store = AgentStore::new(db.pool.clone());
    let cancel = CancellationToken::new();
    let relay_task = tokio::spawn(relay(&db, &client, &settings).run(cancel.clone()));
    for id in ["lost", "twice", "clean"] {
        store.execute(id, register(id), meta("test")).await.unwrap();
        for n in 0..4 {
            store
                .execute(id, record_error(n), meta("test"))
                .await
                .unwrap();
        }
    }
    assert!(settled_report(&db, &client, &settings).await.is_clean());

    // Damage: delete lost:3, republish twice:2 under another id (a duplicate
    // that is also out of order).
    let s = js.get_stream(&settings.name).await.unwrap();
    let lost = s
        .get_last_raw_message_by_subject(&settings.subject("lost", "ErrorRecorded"))
        .await
        .unwrap();
    s.delete_message(lost.sequence).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Opmas-Agent-Id", "twice");
    headers.insert("Opmas-Sequence", "2");
    js.publish_with_headers(
        settings.subject("twice", "ErrorRecorded"),
        headers,
        "{}".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let report = verify::verify(&db.pool, &js, &settings).await.unwrap();
    assert_eq!(report.diffs.len(), 2, "{report:?}");
    let by = |id: &str| {
        report
            .diffs
            .iter()
            .find(|d| d.agent_id == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by("lost").missing, vec![5]);
    assert_eq!(by("twice").duplicates, vec![2]);
    assert!(by("twice").out_of_order);

    let queued = verify::repair(&db.pool, &js, &settings, &report)
        .await
        .unwrap();
    assert_eq!(queued, 1 + 5);
    let after = settled_report(&db, &client, &settings).await;
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(after.store_events, 15);
    cancel.cancel();
    relay_task.await.unwrap().unwrap();
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// The relay dies after JetStream acknowledged a batch but before it deleted
/// the outbox rows: the next relay publishes them again under the same
/// message ids, and the stream's duplicate window drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republishing_after_a_lost_bookkeeping_step_adds_nothing() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let store = AgentStore::new(db.pool.clone());
    for i in 0..5 {
        let id = format!("d{i}");
        store
            .execute(&id, register(&id), meta("test"))
            .await
            .unwrap();
        store
            .execute(&id, record_error(i), meta("test"))
            .await
            .unwrap();
    }
    for round in 0..2 {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(relay(&db, &client, &settings).run(cancel.clone()));
        let report = settled_report(&db, &client, &settings).await;
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
        assert_eq!(report.stream_messages, 10, "round {round}");
        // Put every row back, as if the deletes had never happened.
        sqlx::query(
            "insert into outbox (aggregate_type, aggregate_id, sequence) \
             select aggregate_type, aggregate_id, sequence from events order by aggregate_id, sequence",
        )
        .execute(&db.pool)
        .await
        .unwrap();
    }
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}

/// While commands keep being committed and published, `verify` does not
/// report the events in flight as differences (found by docs-check: a
/// crash-looping agent made `opmas events verify` fail now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_while_events_are_written_reports_no_difference() {
    let db = TestDb::new().await;
    let client = nats().await;
    let settings = stream();
    let js = async_nats::jetstream::new(client.clone());
    let store = AgentStore::new(db.pool.clone());
    let cancel = CancellationToken::new();
    let relay_task = tokio::spawn(relay(&db, &client, &settings).run(cancel.clone()));
    store
        .execute("busy", register("busy"), meta("test"))
        .await
        .unwrap();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writing = CancellationToken::new();
    let writer = {
        let (store, stop, written) = (store.clone(), writing.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                store
                    .execute("busy", record_error(n), meta("test"))
                    .await
                    .unwrap();
                n += 1;
                written.store(n as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // Compare over and over while at least 500 events go by.
    let mut rounds = 0;
    while written.load(std::sync::atomic::Ordering::Relaxed) < 500 {
        let report = verify::verify(&db.pool, &js, &settings).await.unwrap();
        assert!(report.is_clean(), "round {rounds}: {report:?}");
        rounds += 1;
    }
    writing.cancel();
    writer.await.unwrap();
    assert!(rounds > 10, "only {rounds} comparisons");
    cancel.cancel();
    let _ = relay_task.await;
    delete_stream(&client, &settings).await;
    db.cleanup().await;
}
