//! Crash recovery and replay against the real Postgres and nats-server.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use opmas_store::AgentStore;
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

async fn fill(store: &AgentStore, agents: usize, per_agent: usize) {
    for a in 0..agents {
        let id = format!("agent-{a}");
        store.execute(&id, register(&id), meta("t")).await.unwrap();
        for n in 0..per_agent {
            let cmd = if n % 2 == 0 {
                record_error(n)
            } else {
                update_config(1 + n as u32 / 2, n)
            };
            store.execute(&id, cmd, meta("t")).await.unwrap();
        }
    }
}

/// The projector is killed while batches are in flight (its transaction
/// dies with it, its messages stay unacked), then started again on the
/// same durable consumer: the models equal a full rebuild, and a replay
/// (rebuild + swap) leaves them byte for byte the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_killed_mid_batch_then_restarted_equals_a_full_replay() {
    let (db, streams, cancel, relay) = relayed_thousand_events().await;

    let config = opmas_projections::Config {
        batch: 20,
        ..streams.config()
    };
    let first = streams.projector_elsewhere(&db, config.clone());
    let some = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from agent_status_history")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        n > 0
    })
    .await;
    assert!(some);
    first.kill();
    let partial: i64 =
        sqlx::query_scalar("select coalesce(sum(last_sequence), 0)::bigint from agent_status")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(partial < 1_000, "killed before the end ({partial} applied)");

    let second = streams.projector(&db, config, &cancel);
    wait_caught_up(&db.pool).await;
    assert_rebuild_equals_live(&db.pool).await;
    let before = live_checksums(&db.pool).await;
    assert_eq!((before[0].rows, before[3].rows), (40, 480), "{before:?}");
    let mut conn = db.pool.acquire().await.unwrap();
    let replayed = opmas_projections::replay::replay(&mut conn, |_| {})
        .await
        .unwrap();
    assert_eq!(replayed, 1_000);
    assert_eq!(live_checksums(&db.pool).await, before);

    finish(cancel, vec![relay, second], streams, db).await;
}

/// A projector that dies while idle leaves its pull request waiting on the
/// server (30 s, the client's default). New events must not go to that dead
/// request meanwhile (the server drops a request whose inbox lost its
/// interest; the next run then sees no gap and catches up at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_run_s_waiting_pull_request_does_not_hold_new_events() {
    let (db, streams, cancel, relay) = relayed_thousand_events().await;
    let config = streams.config();
    let first = streams.projector(&db, config.clone(), &cancel);
    wait_caught_up(&db.pool).await;
    // Idle now: its pull request waits for the next message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.abort();
    let _ = first.await;

    let second = streams.projector(&db, config, &cancel);
    let store = AgentStore::new(db.pool.clone());
    for n in 0..20 {
        let id = format!("agent-{}", n % 4);
        store
            .execute(&id, record_error(n), meta("t"))
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || caught_up(&db.pool)).await,
        "new events waited for the dead run's pull request"
    );
    finish(cancel, vec![relay, second], streams, db).await;
}

/// Readers poll the models while commands keep coming and two replays swap
/// the tables: no reader ever sees fewer agents or history rows than it saw
/// before (an empty or half-built table would show fewer). Afterwards the
/// projector keeps going on the swapped tables and they equal a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_while_writes_continue_never_shows_a_partial_table() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let cancel = CancellationToken::new();
    let relay = streams.relay(&db, &cancel);
    let projector = streams.projector(&db, streams.config(), &cancel);
    let store = AgentStore::new(db.pool.clone());
    fill(&store, 100, 20).await;
    wait_caught_up(&db.pool).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("agent-{}", n % 100);
                store
                    .execute(&id, record_error(n), meta("w"))
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (pool, stop, reads) = (db.pool.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let (mut agents_seen, mut history_seen, mut violations) = (0_i64, 0_i64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let (agents, history): (i64, i64) = sqlx::query_as(
                    "select (select count(*) from agent_status), (select count(*) from agent_status_history)",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                if agents < 100 || agents < agents_seen || history < history_seen {
                    violations.push((agents, history, agents_seen, history_seen));
                }
                (agents_seen, history_seen) = (agents, history);
                reads.fetch_add(1, Ordering::SeqCst);
            }
            violations
        }));
    }
    let mut conn = db.pool.acquire().await.unwrap();
    let reads_before = reads.load(Ordering::SeqCst);
    for _ in 0..2 {
        opmas_projections::replay::replay(&mut conn, |_| {})
            .await
            .unwrap();
    }
    let reads_during = reads.load(Ordering::SeqCst) - reads_before;
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    for r in readers {
        let violations = r.await.unwrap();
        assert!(
            violations.is_empty(),
            "readers saw partial tables: {violations:?}"
        );
    }
    assert!(
        reads_during > 0 && written > 0,
        "reads {reads_during}, writes {written}"
    );

    wait_caught_up(&db.pool).await;
    assert_rebuild_equals_live(&db.pool).await;
    let errors: i64 = sqlx::query_scalar("select count(*) from agent_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(errors, 1_000 + written as i64);
    finish(cancel, vec![relay, projector], streams, db).await;
}

/// A durable that holds deliveries nobody wrote (here fetched by hand and
/// dropped, as a run killed mid-batch leaves them; their redelivery is
/// minutes away) is replaced from the Postgres checkpoint when the
/// projector starts. Acking the later messages would otherwise ack those
/// too (one ack covers every earlier message), and they would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_holding_unwritten_deliveries_is_replaced_from_the_checkpoint() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let (db, streams, cancel, relay) = relayed_thousand_events().await;
    let config = opmas_projections::Config {
        ack_wait: Duration::from_secs(600),
        ..streams.config()
    };
    let name = format!("{}_events", config.consumer_prefix);
    let stream = streams.js().get_stream(&streams.events.name).await.unwrap();
    let durable = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: AckPolicy::All,
            ack_wait: config.ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut fetched = durable.fetch().max_messages(50).messages().await.unwrap();
    let mut dropped = 0;
    while let Some(msg) = fetched.next().await {
        msg.unwrap();
        dropped += 1;
    }
    assert_eq!(dropped, 50);
    assert_eq!(
        stream.consumer_info(&name).await.unwrap().num_ack_pending,
        50
    );

    let projector = streams.projector(&db, config, &cancel);
    wait_caught_up(&db.pool).await;
    assert_rebuild_equals_live(&db.pool).await;
    let history: i64 = sqlx::query_scalar("select count(*) from agent_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(history, 480, "every recorded error is projected");

    finish(cancel, vec![relay, projector], streams, db).await;
}

/// Two projectors on one database and one set of durables: one consumes,
/// the other stands by (an advisory lock per durable), so neither acks the
/// other's unwritten messages; when the active one stops, the other takes
/// over. The models equal a rebuild at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_projector_stands_by_and_takes_over() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let cancel = CancellationToken::new();
    let relay = streams.relay(&db, &cancel);
    let config = opmas_projections::Config {
        batch: 20,
        ..streams.config()
    };
    let (first_cancel, second_cancel) = (CancellationToken::new(), CancellationToken::new());
    let first = streams.projector(&db, config.clone(), &first_cancel);
    let store = AgentStore::new(db.pool.clone());
    fill(&store, 40, 12).await;
    wait_caught_up(&db.pool).await;
    // The first holds every durable; the second stands by while events flow.
    let second = streams.projector(&db, config, &second_cancel);
    fill_more(&store, 40, 6).await;
    wait_caught_up(&db.pool).await;
    assert_rebuild_equals_live(&db.pool).await;
    // Advisory locks held in this test's database: the relay's and one
    // per durable (events, metrics, logs), whichever projector holds it.
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database \
             where l.locktype = 'advisory' and l.granted and d.datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(held().await, 4);

    first_cancel.cancel();
    first.await.unwrap();
    fill_more(&store, 40, 6).await;
    wait_caught_up(&db.pool).await;
    assert_rebuild_equals_live(&db.pool).await;
    assert!(eventually(Duration::from_secs(10), || async { held().await == 4 }).await);
    let errors: i64 = sqlx::query_scalar("select count(*) from agent_errors")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        errors,
        40 * (6 + 6 + 6),
        "every recorded error is projected"
    );

    second_cancel.cancel();
    second.await.unwrap();
    finish(cancel, vec![relay], streams, db).await;
}

/// A test database and streams holding 1,000 events (40 agents), all
/// relayed to the stream; the relay keeps running.
async fn relayed_thousand_events() -> (TestDb, Streams, CancellationToken, JoinHandle<()>) {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let cancel = CancellationToken::new();
    let relay = streams.relay(&db, &cancel);
    let store = AgentStore::new(db.pool.clone());
    fill(&store, 40, 24).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            opmas_store::relay::backlog(&db.pool).await.unwrap() == 0
        })
        .await
    );
    (db, streams, cancel, relay)
}

/// Stops `tasks` (relay, projectors) and removes the test's streams and
/// database.
async fn finish(
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    streams: Streams,
    db: TestDb,
) {
    cancel.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    streams.cleanup().await;
    db.cleanup().await;
}

/// `errors` more errors for each of the first `agents` agents.
async fn fill_more(store: &AgentStore, agents: usize, errors: usize) {
    for n in 0..errors {
        for a in 0..agents {
            let id = format!("agent-{a}");
            store
                .execute(&id, record_error(1_000 + n), meta("t"))
                .await
                .unwrap();
        }
    }
}

/// A replay longer than one fetched batch, with an agent's events split
/// across the boundary (folding runs on while the previous batch is
/// written): the swapped-in models equal the live ones, indexes and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_across_batches_equals_the_live_models() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let cancel = CancellationToken::new();
    let relay = streams.relay(&db, &cancel);
    let projector = streams.projector(&db, streams.config(), &cancel);
    let store = AgentStore::new(db.pool.clone());
    fill(&store, 3, 2_100).await; // 6,303 events; batch 5,000 ends in agent-2
    const _: () = assert!(6_303 > opmas_projections::replay::BATCH_EVENTS);
    wait_caught_up(&db.pool).await;
    let before = live_checksums(&db.pool).await;
    // The replay drops the fresh tables' secondary indexes while it loads
    // them and builds them again: the swapped-in tables have them all.
    let indexes = || async {
        sqlx::query_as::<_, (String, String)>(
            "select indexname, indexdef from pg_indexes where tablename like 'agent_%' order by 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let indexes_before = indexes().await;
    assert!(indexes_before.len() > 10, "{indexes_before:?}");
    let mut conn = db.pool.acquire().await.unwrap();
    let replayed = opmas_projections::replay::replay(&mut conn, |_| {})
        .await
        .unwrap();
    assert_eq!(replayed, 6_303);
    assert_eq!(live_checksums(&db.pool).await, before);
    assert_eq!(indexes().await, indexes_before);
    assert_rebuild_equals_live(&db.pool).await;
    finish(cancel, vec![relay, projector], streams, db).await;
}
