//! Group commit: the events of concurrent commands written in one statement.
//!
//! Each command still commits atomically and is answered only once its
//! events are durable; what is shared is the round trip and the WAL flush.
//! A [`Committer`] task takes whatever commits are queued while its previous
//! statement ran (up to a limit) and writes them together. If that statement
//! fails on a key conflict (some command lost an optimistic-concurrency race,
//! possibly against another command in the same batch), the batch is written
//! again one commit per statement, so only the losers see the conflict.

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// One command's events, ready to insert.
#[derive(Debug, Default)]
pub struct Pending {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequences: Vec<i64>,
    pub event_types: Vec<String>,
    pub event_versions: Vec<String>,
    pub payloads: Vec<String>,
    pub metadata: String,
    /// `(last_sequence, snapshot number, payload)` when a snapshot is due.
    pub snapshot: Option<(i64, i64, String)>,
}

const WRITE: &str = "
with ins as (
  insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
  select u.at, u.id, u.s, u.t, u.v, u.p::json, u.m::json
  from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
       as u(at, id, s, t, v, p, m)
  returning 1),
snap as (
  insert into snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
  select u.at, u.id, u.ls, u.cs, u.p::json
  from unnest($8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[]) as u(at, id, ls, cs, p)
  on conflict (aggregate_type, aggregate_id) do update
    set last_sequence = excluded.last_sequence,
        current_snapshot = excluded.current_snapshot,
        payload = excluded.payload
    where snapshots.last_sequence < excluded.last_sequence
  returning 1)
select (select count(*) from ins) as events, (select count(*) from snap) as snapshots";

/// The batch as columns, one array per `unnest` argument.
#[derive(Default)]
struct EventColumns<'a> {
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    sequences: Vec<i64>,
    event_types: Vec<&'a str>,
    versions: Vec<&'a str>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
}

#[derive(Default)]
struct SnapshotColumns<'a> {
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    last: Vec<i64>,
    numbers: Vec<i64>,
    payloads: Vec<&'a str>,
}

/// Writes `batch` in one statement (one transaction).
pub async fn write(pool: &PgPool, batch: &[&Pending]) -> Result<(), sqlx::Error> {
    let mut ev = EventColumns::default();
    let mut sn = SnapshotColumns::default();
    for p in batch {
        for i in 0..p.sequences.len() {
            ev.types.push(&p.aggregate_type);
            ev.ids.push(&p.aggregate_id);
            ev.sequences.push(p.sequences[i]);
            ev.event_types.push(&p.event_types[i]);
            ev.versions.push(&p.event_versions[i]);
            ev.payloads.push(&p.payloads[i]);
            ev.metadata.push(&p.metadata);
        }
        if let Some((last, number, payload)) = &p.snapshot {
            sn.types.push(&p.aggregate_type);
            sn.ids.push(&p.aggregate_id);
            sn.last.push(*last);
            sn.numbers.push(*number);
            sn.payloads.push(payload);
        }
    }
    sqlx::query(WRITE)
        .bind(ev.types)
        .bind(ev.ids)
        .bind(ev.sequences)
        .bind(ev.event_types)
        .bind(ev.versions)
        .bind(ev.payloads)
        .bind(ev.metadata)
        .bind(sn.types)
        .bind(sn.ids)
        .bind(sn.last)
        .bind(sn.numbers)
        .bind(sn.payloads)
        .execute(pool)
        .await?;
    Ok(())
}

/// A key conflict (23505), or one row upserted twice in a statement (21000).
pub fn is_conflict(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("23505") | Some("21000")))
}

type Job = (Pending, oneshot::Sender<Result<(), sqlx::Error>>);

/// Handle to the committer task; dropping every handle ends the task.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the committer task writing batches of up to `max_batch` commits.
    pub fn spawn(pool: PgPool, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(max_batch * 4);
        tokio::spawn(run(pool, rx, max_batch.max(1)));
        Self { tx }
    }

    /// Queues `pending` and waits until it is durable (or refused).
    pub async fn commit(&self, pending: Pending) -> Result<(), sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((pending, reply))
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let batch: Vec<&Pending> = jobs.iter().map(|(p, _)| p).collect();
        match write(&pool, &batch).await {
            Ok(()) => {
                for (_, reply) in jobs.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(err) if jobs.len() > 1 && is_conflict(&err) => {
                for (pending, reply) in jobs.drain(..) {
                    let _ = reply.send(write(&pool, &[&pending]).await);
                }
            }
            Err(err) => {
                let message = err.to_string();
                let mut first = Some(err);
                for (_, reply) in jobs.drain(..) {
                    let e = first
                        .take()
                        .unwrap_or_else(|| sqlx::Error::Protocol(message.clone()));
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}
