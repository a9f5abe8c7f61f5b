//! [`PgEventStore`]: a `cqrs_es::EventStore` over the postgres-es tables.
//!
//! postgres-es loads an aggregate with two queries and commits with one
//! statement per event inside a transaction, and without snapshots it replays
//! every event on every command. Here loading is one query (the snapshot and
//! the events after it) and committing is one statement (all events, plus the
//! snapshot when a multiple of `snapshot_every` is crossed), so a command costs
//! the same at an agent's 1st and 100,000th event; concurrent commits can share
//! that statement ([`crate::group_commit`]). See docs/adr/0002.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cqrs_es::persist::{EventStoreAggregateContext, EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, EventStore};
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::group_commit::{self, Committer, Pending};

/// Default number of events between two snapshots.
pub const DEFAULT_SNAPSHOT_EVERY: usize = 32;

/// Postgres event store with snapshots and upcasters.
pub struct PgEventStore<A> {
    pool: PgPool,
    snapshot_every: usize,
    snapshot_version: u64,
    committer: Option<Committer>,
    upcasters: Arc<Vec<Box<dyn EventUpcaster>>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for PgEventStore<A> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            snapshot_every: self.snapshot_every,
            snapshot_version: self.snapshot_version,
            committer: self.committer.clone(),
            upcasters: self.upcasters.clone(),
            _aggregate: PhantomData,
        }
    }
}

const LOAD: &str = "
with s as (select last_sequence, current_snapshot, payload
           from snapshots where aggregate_type = $1 and aggregate_id = $2)
select null::bigint as sequence, null::text as event_type, null::text as event_version,
       s.payload, s.last_sequence, s.current_snapshot
from s
union all
select e.sequence, e.event_type, e.event_version, e.payload, null, null
from events e
where e.aggregate_type = $1 and e.aggregate_id = $2
  and e.sequence > coalesce((select last_sequence from s), 0)
order by sequence nulls first";

const LOAD_ALL: &str = "
select sequence, event_type, event_version, payload, metadata
from events where aggregate_type = $1 and aggregate_id = $2 order by sequence";

impl<A: Aggregate> PgEventStore<A> {
    /// A store taking a snapshot every [`DEFAULT_SNAPSHOT_EVERY`] events.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            snapshot_version: 1,
            committer: None,
            upcasters: Arc::new(Vec::new()),
            _aggregate: PhantomData,
        }
    }

    /// Snapshot interval in events (`0` disables snapshots: full replay on load).
    pub fn with_snapshot_every(mut self, every: usize) -> Self {
        self.snapshot_every = every;
        self
    }

    /// Version of the aggregate's state layout. Snapshots are stored as
    /// `{"snapshot_version": n, "state": ...}`; one of another version is
    /// ignored (the aggregate is rebuilt from its events and snapshotted
    /// again), so bump it whenever the state's fields or meaning change.
    pub fn with_snapshot_version(mut self, version: u64) -> Self {
        self.snapshot_version = version;
        self
    }

    /// Writes concurrent commits together (group commit, see
    /// [`crate::group_commit`]); `max_batch` caps the commits per statement.
    /// Needs a Tokio runtime.
    pub fn with_group_commit(mut self, max_batch: usize) -> Self {
        self.committer = Some(Committer::spawn(self.pool.clone(), max_batch));
        self
    }

    /// Whether a commit moving the aggregate from sequence `last` to `next`
    /// writes a snapshot.
    pub fn snapshots_between(&self, last: usize, next: usize) -> bool {
        self.snapshot_every > 0 && next / self.snapshot_every > last / self.snapshot_every
    }

    fn read_snapshot(&self, payload: Value) -> Option<A> {
        let Value::Object(mut map) = payload else {
            return None;
        };
        if map.get("snapshot_version").and_then(Value::as_u64) != Some(self.snapshot_version) {
            return None;
        }
        serde_json::from_value(map.remove("state")?).ok()
    }

    /// Upcasters applied, in order, to every event read back.
    pub fn with_upcasters(mut self, upcasters: Vec<Box<dyn EventUpcaster>>) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// The pool this store writes to.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn decode(
        &self,
        aggregate_id: &str,
        sequence: i64,
        event_type: String,
        event_version: String,
        payload: Value,
        metadata: Value,
    ) -> Result<EventEnvelope<A>, AggregateError<A::Error>> {
        let mut event = SerializedEvent::new(
            aggregate_id.to_string(),
            usize::try_from(sequence).unwrap_or_default(),
            A::TYPE.to_string(),
            event_type,
            event_version,
            payload,
            metadata,
        );
        for upcaster in self.upcasters.iter() {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                event = upcaster.upcast(event);
            }
        }
        let payload = serde_json::from_value(event.payload).map_err(corrupt)?;
        let metadata = serde_json::from_value(event.metadata).unwrap_or_default();
        Ok(EventEnvelope {
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            payload,
            metadata,
        })
    }

    async fn replay_all(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let mut context = empty_context::<A>(aggregate_id);
        for envelope in self.load_events(aggregate_id).await? {
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }
}

fn empty_context<A: Aggregate>(aggregate_id: &str) -> EventStoreAggregateContext<A> {
    EventStoreAggregateContext {
        aggregate_id: aggregate_id.to_string(),
        aggregate: A::default(),
        current_sequence: 0,
        current_snapshot: None,
    }
}

fn corrupt<E: std::error::Error>(err: serde_json::Error) -> AggregateError<E> {
    AggregateError::DeserializationError(Box::new(err))
}

fn db<E: std::error::Error>(err: sqlx::Error) -> AggregateError<E> {
    if group_commit::is_conflict(&err) {
        return AggregateError::AggregateConflict;
    }
    AggregateError::DatabaseConnectionError(Box::new(err))
}

impl<A: Aggregate> EventStore<A> for PgEventStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let rows = sqlx::query(LOAD_ALL)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.into_iter()
            .map(|row| {
                self.decode(
                    aggregate_id,
                    row.get("sequence"),
                    row.get("event_type"),
                    row.get("event_version"),
                    row.get("payload"),
                    row.get("metadata"),
                )
            })
            .collect()
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        if self.snapshot_every == 0 {
            return self.replay_all(aggregate_id).await;
        }
        let rows = sqlx::query(LOAD)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut context = empty_context(aggregate_id);
        for row in rows {
            let sequence: Option<i64> = row.get("sequence");
            let payload: Value = row.get("payload");
            let Some(sequence) = sequence else {
                let Some(aggregate) = self.read_snapshot(payload) else {
                    // The aggregate's layout changed since the snapshot: rebuild it.
                    return self.replay_all(aggregate_id).await;
                };
                let last: i64 = row.get("last_sequence");
                let snap: i64 = row.get("current_snapshot");
                context.aggregate = aggregate;
                context.current_sequence = usize::try_from(last).unwrap_or_default();
                context.current_snapshot = usize::try_from(snap).ok();
                continue;
            };
            let envelope = self.decode(
                aggregate_id,
                sequence,
                row.get("event_type"),
                row.get("event_version"),
                payload,
                Value::Null,
            )?;
            context.current_sequence = envelope.sequence;
            context.aggregate.apply(envelope.payload);
        }
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let last = context.current_sequence;
        let next = last + events.len();
        let mut pending = Pending {
            aggregate_type: A::TYPE.to_string(),
            aggregate_id: context.aggregate_id.clone(),
            metadata: serde_json::to_string(&metadata).map_err(corrupt)?,
            ..Pending::default()
        };
        for (i, event) in events.iter().enumerate() {
            pending.sequences.push((last + i + 1) as i64);
            pending.event_types.push(event.event_type());
            pending.event_versions.push(event.event_version());
            pending
                .payloads
                .push(serde_json::to_string(event).map_err(corrupt)?);
        }
        if self.snapshots_between(last, next) {
            // cqrs-es 0.5's `EventSink::write` applies each event as the
            // command emits it: `context.aggregate` is already the state after
            // `events`, which is what the snapshot at `next` must hold.
            let snapshot = serde_json::to_string(&serde_json::json!({
                "snapshot_version": self.snapshot_version,
                "state": &context.aggregate,
            }))
            .map_err(corrupt)?;
            let number = context.current_snapshot.unwrap_or(0) + 1;
            pending.snapshot = Some((next as i64, number as i64, snapshot));
        }
        match &self.committer {
            Some(committer) => committer.commit(pending).await,
            None => group_commit::write(&self.pool, &[&pending]).await,
        }
        .map_err(db)?;
        Ok(events
            .into_iter()
            .zip(last + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect())
    }
}
