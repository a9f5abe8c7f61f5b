//! The event store itself: snapshots, upcasting on load, postgres-es
//! compatibility of the tables, and the outbox trigger.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cqrs_es::persist::PersistedEventRepository;
use opmas_domain::{Agent, AgentEvent, ProcessStatus};
use opmas_store::AgentStore;

/// With snapshots every 32 events, loading an agent of 100 events reads the
/// snapshot at 96 plus 4 events, and equals a full replay. The history is a
/// crash loop, whose events are not idempotent (restart counters), so a
/// snapshot holding events applied twice would show.
#[tokio::test]
async fn snapshot_plus_tail_equals_full_replay() {
    use opmas_domain::{AgentCommand, ProcessIdentity};
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone()).with_group_commit(8);
    store
        .execute("snap", register("snap"), meta("test"))
        .await
        .unwrap();
    store
        .execute("snap", AgentCommand::Start, meta("test"))
        .await
        .unwrap();
    let t0 = chrono::Utc::now();
    for k in 0..49u32 {
        let at = t0 + chrono::Duration::seconds(i64::from(k) * 120);
        let identity = ProcessIdentity {
            pid: 1000 + k,
            boot_id: "boot".into(),
            start_time_ticks: u64::from(k),
        };
        let started = AgentCommand::ReportProcessStarted {
            node: "n1".into(),
            identity,
            at,
        };
        store
            .execute("snap", started, meta("supervisor"))
            .await
            .unwrap();
        let exited = AgentCommand::ReportProcessExited {
            pid: 1000 + k,
            code: Some(1),
            signal: None,
            at: at + chrono::Duration::seconds(1),
            jitter_sample: 0.5,
        };
        store
            .execute("snap", exited, meta("supervisor"))
            .await
            .unwrap();
    }
    let (snap_seq, current): (i64, i64) = sqlx::query_as(
        "select last_sequence, current_snapshot from snapshots where aggregate_id = 'snap'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((snap_seq, current), (96, 3));

    let cold = AgentStore::new(db.pool.clone()).with_cache_capacity(0);
    let (loaded, seq) = cold.load("snap").await.unwrap();
    let replay = AgentStore::new(db.pool.clone()).with_snapshot_every(0);
    let (replayed, replay_seq) = replay.load("snap").await.unwrap();
    assert_eq!((seq, replay_seq), (100, 100));
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&replayed).unwrap()
    );
    assert_eq!(loaded.status, ProcessStatus::Backoff);
    assert_eq!(loaded.restart_count, 48);

    // A snapshot of another layout version, or one that does not decode, is
    // ignored and the agent is rebuilt from its events.
    for bad in [
        r#"{"snapshot_version": 999, "state": {}}"#,
        r#"{"snapshot_version": 1, "state": {"status": 42}}"#,
        r#"{"not": "an agent"}"#,
    ] {
        sqlx::query("update snapshots set payload = $1::json")
            .bind(bad)
            .execute(&db.pool)
            .await
            .unwrap();
        let (rebuilt, _) = cold.load("snap").await.unwrap();
        assert_eq!(
            serde_json::to_value(&rebuilt).unwrap(),
            serde_json::to_value(&replayed).unwrap(),
            "snapshot {bad}"
        );
    }
    db.cleanup().await;
}

/// Every committed event gets an outbox row in the same transaction; a
/// rejected command writes nothing at all.
#[tokio::test]
async fn outbox_rows_follow_commits_only() {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    store
        .execute("ob", register("ob"), meta("test"))
        .await
        .unwrap();
    let err = store
        .execute("ob", register("ob"), meta("test"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        opmas_store::CommandError::Rejected(opmas_domain::AgentError::AlreadyRegistered)
    ));
    store
        .execute("ob", opmas_domain::AgentCommand::Start, meta("test"))
        .await
        .unwrap();
    // Start again is satisfied already: no event, no outbox row.
    let none = store
        .execute("ob", opmas_domain::AgentCommand::Start, meta("test"))
        .await
        .unwrap();
    assert!(none.is_empty());
    let outbox: Vec<(String, i64)> =
        sqlx::query_as("select aggregate_id, sequence from outbox order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(outbox, vec![("ob".to_string(), 1), ("ob".to_string(), 2)]);
    assert_eq!(store_events(&db.pool).await.len(), 2);
    db.cleanup().await;
}

/// A `ProcessExited` stored at version 1.0 (before `signal` and `decision`
/// existed) is upcast when the agent is loaded from the database.
#[tokio::test]
async fn old_event_versions_are_upcast_on_load() {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    store
        .execute("old", register("old"), meta("test"))
        .await
        .unwrap();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         values ('Agent', 'old', 2, 'ProcessExited', '1.0', \
         '{\"ProcessExited\":{\"pid\":42,\"exit_code\":3,\"at\":\"2026-01-01T00:00:00Z\"}}', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let events = store.events("old").await.unwrap();
    match &events[1].payload {
        AgentEvent::ProcessExited {
            pid, code, signal, ..
        } => {
            assert_eq!((*pid, *code, *signal), (42, Some(3), None));
        }
        other => panic!("not upcast: {other:?}"),
    }
    db.cleanup().await;
}

/// The tables keep postgres-es's layout: its own repository reads our events.
#[tokio::test]
async fn postgres_es_reads_our_tables() {
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone());
    store
        .execute("compat", register("compat"), meta("alice"))
        .await
        .unwrap();
    store
        .execute("compat", record_error(1), meta("alice"))
        .await
        .unwrap();
    let repo = postgres_es::PostgresEventRepository::new(db.pool.clone());
    let events = repo.get_events::<Agent>("compat").await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "AgentRegistered");
    assert_eq!(events[1].sequence, 2);
    assert_eq!(events[1].metadata["actor"], "alice");
    db.cleanup().await;
}

/// `execute_all` commits the events of several commands in one transaction
/// (a supervisor's exit + restart facts): the rows share one transaction id;
/// a refused command commits the accepted ones before it and returns the
/// refusal; a refused first command commits nothing.
#[tokio::test]
async fn execute_all_commits_accepted_commands_together() {
    use opmas_domain::{AgentCommand, AgentError, ProcessIdentity};
    let db = TestDb::new().await;
    let store = AgentStore::new(db.pool.clone()).with_group_commit(8);
    store.execute("a", register("a"), meta("t")).await.unwrap();
    store
        .execute("a", AgentCommand::Start, meta("t"))
        .await
        .unwrap();
    let started = |pid: u32| AgentCommand::ReportProcessStarted {
        node: "n1".into(),
        identity: ProcessIdentity {
            pid,
            boot_id: "boot".into(),
            start_time_ticks: u64::from(pid),
        },
        at: chrono::Utc::now(),
    };
    let exited = |pid: u32| AgentCommand::ReportProcessExited {
        pid,
        code: Some(1),
        signal: None,
        at: chrono::Utc::now(),
        jitter_sample: 0.5,
    };
    store.execute("a", started(100), meta("s")).await.unwrap();
    let rows = || async {
        sqlx::query_as::<_, (i64, String, String)>(
            "select sequence, event_type, xmin::text from events where aggregate_id = 'a' order by sequence",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = rows().await.len();

    // Exit of 100 and start of 101, together.
    let (committed, refused) = store
        .execute_all("a", &[exited(100), started(101)], meta("s"))
        .await
        .unwrap();
    assert!(refused.is_none());
    assert_eq!(committed.len(), 2);
    assert!(matches!(
        committed[0].last().unwrap().payload,
        AgentEvent::ProcessExited { .. }
    ));
    assert!(matches!(
        committed[1].last().unwrap().payload,
        AgentEvent::ProcessStarted { .. }
    ));
    let after = rows().await;
    let new = &after[before..];
    assert_eq!(new.len(), committed.iter().map(Vec::len).sum::<usize>());
    assert!(
        new.iter().all(|(_, _, xmin)| *xmin == new[0].2),
        "one transaction: {new:?}"
    );

    // The exit of 101 is accepted; a second exit of 101 is stale (101 is
    // no longer the process): the refusal comes back, the exit is committed.
    let (committed, refused) = store
        .execute_all("a", &[exited(101), exited(101)], meta("s"))
        .await
        .unwrap();
    assert_eq!(committed.len(), 1, "{committed:?}");
    assert!(
        matches!(refused, Some(AgentError::StaleFact { .. })),
        "{refused:?}"
    );
    assert_eq!(rows().await.len(), after.len() + committed[0].len());
    let agent = store.load("a").await.unwrap().0;
    assert_eq!(agent.pid, None);

    // A refused first command: nothing is committed.
    let count = rows().await.len();
    let (committed, refused) = store
        .execute_all("a", &[exited(999), started(102)], meta("s"))
        .await
        .unwrap();
    assert!(committed.is_empty() && refused.is_some());
    assert_eq!(rows().await.len(), count);
    db.cleanup().await;
}
