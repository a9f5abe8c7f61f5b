//! [`AgentStore`]: runs commands against the `Agent` aggregate.
//!
//! The same load → handle → commit as `cqrs_es::CqrsFramework`, but returning
//! the committed envelopes (the API reports the new version) and with an error
//! type that says what the caller should do. No cqrs-es queries run here: the
//! outbox relay is the only publication path (queries run after commit and
//! are lost on a crash).

use std::collections::HashMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use opmas_domain::agent::{Agent, AgentCommand, AgentError};
use sqlx::PgPool;

use crate::PgEventStore;

/// Layout version of the `Agent` state in snapshots: bump it when a field of
/// `opmas_domain::Agent` is added, removed or changes meaning, and old
/// snapshots will be ignored and rebuilt from events.
pub const AGENT_SNAPSHOT_VERSION: u64 = 1;

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The aggregate refused the command (invalid transition, bad input...).
    #[error(transparent)]
    Rejected(AgentError),
    /// Another command on the same agent committed first: reload and retry.
    #[error("conflict: another command on this agent committed first")]
    Conflict,
    /// The event store is unreachable: retry later.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Stored events could not be read back (a bug or a missing upcaster).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AggregateError<AgentError>> for CommandError {
    fn from(err: AggregateError<AgentError>) -> Self {
        match err {
            AggregateError::UserError(e) => Self::Rejected(e),
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DatabaseConnectionError(e) => Self::Unavailable(e.to_string()),
            AggregateError::DeserializationError(e) => Self::Internal(e.to_string()),
            AggregateError::UnexpectedError(e) => Self::Internal(e.to_string()),
        }
    }
}

/// Command side of the `Agent` aggregate. Cheap to clone.
#[derive(Clone)]
pub struct AgentStore {
    store: PgEventStore<Agent>,
}

impl AgentStore {
    /// A store over `pool` with the domain's upcasters.
    pub fn new(pool: PgPool) -> Self {
        Self {
            store: PgEventStore::new(pool)
                .with_upcasters(opmas_domain::agent::upcasters())
                .with_snapshot_version(AGENT_SNAPSHOT_VERSION),
        }
    }

    /// Replaces the snapshot interval (0 = no snapshots; benchmarks compare).
    pub fn with_snapshot_every(self, every: usize) -> Self {
        Self {
            store: self.store.with_snapshot_every(every),
        }
    }

    /// The underlying event store.
    pub fn event_store(&self) -> &PgEventStore<Agent> {
        &self.store
    }

    /// Runs `command` on `agent_id`; `metadata` (actor, correlation id...) is
    /// stored with every resulting event. Returns the committed events (empty
    /// when the command was already satisfied).
    pub async fn execute(
        &self,
        agent_id: &str,
        command: AgentCommand,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<Agent>>, CommandError> {
        let mut context = self.store.load_aggregate(agent_id).await?;
        let sink = EventSink::<Agent>::default();
        context
            .aggregate
            .handle(command, &(), &sink)
            .await
            .map_err(CommandError::Rejected)?;
        let events = sink.collect().await;
        Ok(self.store.commit(events, context, metadata).await?)
    }

    /// Like [`AgentStore::execute`], retrying on [`CommandError::Conflict`]
    /// (for facts that must land, such as a supervisor's reports).
    pub async fn execute_with_retry(
        &self,
        agent_id: &str,
        command: AgentCommand,
        metadata: HashMap<String, String>,
        attempts: usize,
    ) -> Result<Vec<EventEnvelope<Agent>>, CommandError>
    where
        AgentCommand: Clone,
    {
        let mut last = CommandError::Conflict;
        for _ in 0..attempts.max(1) {
            match self.execute(agent_id, command.clone(), metadata.clone()).await {
                Err(CommandError::Conflict) => last = CommandError::Conflict,
                other => return other,
            }
        }
        Err(last)
    }

    /// Every event of an agent, upcast, in order.
    pub async fn events(&self, agent_id: &str) -> Result<Vec<EventEnvelope<Agent>>, CommandError> {
        Ok(self.store.load_events(agent_id).await?)
    }

    /// The agent's current state (snapshot + tail).
    pub async fn load(&self, agent_id: &str) -> Result<(Agent, usize), CommandError> {
        let context = self.store.load_aggregate(agent_id).await?;
        Ok((context.aggregate, context.current_sequence))
    }
}
