//! [`AgentStore`]: runs commands against the `Agent` aggregate.
//!
//! The same load → handle → commit as `cqrs_es::CqrsFramework`, but returning
//! the committed envelopes (the API reports the new version) and with an error
//! type that says what the caller should do. No cqrs-es queries run here: the
//! outbox relay is the only publication path (queries run after commit and
//! are lost on a crash).

use std::collections::HashMap;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use lru::LruCache;
use opmas_domain::agent::{Agent, AgentCommand, AgentError};
use sqlx::PgPool;

use crate::PgEventStore;
use crate::notify::OutboxNotifier;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Layout version of the `Agent` state in snapshots: bump it when a field of
/// `opmas_domain::Agent` is added, removed or changes meaning, and old
/// snapshots will be ignored and rebuilt from events.
pub const AGENT_SNAPSHOT_VERSION: u64 = 3;

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

/// Agents kept in memory by default (a few KiB each).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Stale-cache conflicts retried inside [`AgentStore::execute`].
const STALE_RETRIES: usize = 3;

struct Cached {
    agent: Agent,
    sequence: usize,
    snapshot: Option<usize>,
}

/// Command side of the `Agent` aggregate. Cheap to clone (clones share the
/// cache and the notifier).
///
/// Recently used agents are kept in memory with their sequence, so a command
/// usually costs one statement (the commit) instead of a load and a commit.
/// The cache is never trusted blindly: the commit inserts at the next
/// sequence and the primary key refuses it if anyone else (another process)
/// wrote first; the entry is then dropped, the agent reloaded and the command
/// decided again on fresh state (see docs/adr/0003).
#[derive(Clone)]
pub struct AgentStore {
    store: PgEventStore<Agent>,
    cache: Option<Arc<Mutex<LruCache<String, Cached>>>>,
    notifier: Option<OutboxNotifier>,
}

impl AgentStore {
    /// A store over `pool` with the domain's upcasters and an aggregate cache.
    pub fn new(pool: PgPool) -> Self {
        Self {
            store: PgEventStore::new(pool)
                .with_upcasters(opmas_domain::agent::upcasters())
                .with_snapshot_version(AGENT_SNAPSHOT_VERSION),
            cache: NonZeroUsize::new(DEFAULT_CACHE_CAPACITY)
                .map(|n| Arc::new(Mutex::new(LruCache::new(n)))),
            notifier: None,
        }
    }

    /// Replaces the snapshot interval (0 = no snapshots; benchmarks compare).
    pub fn with_snapshot_every(self, every: usize) -> Self {
        Self {
            store: self.store.with_snapshot_every(every),
            ..self
        }
    }

    /// Writes concurrent commands' events together (group commit); `max_batch`
    /// caps the commands per statement. Needs a Tokio runtime.
    pub fn with_group_commit(self, max_batch: usize) -> Self {
        Self {
            store: self.store.with_group_commit(max_batch),
            ..self
        }
    }

    /// Sets the cache capacity in agents (0 disables the cache).
    pub fn with_cache_capacity(self, capacity: usize) -> Self {
        Self {
            cache: NonZeroUsize::new(capacity).map(|n| Arc::new(Mutex::new(LruCache::new(n)))),
            ..self
        }
    }

    /// Pokes `notifier` after every commit that wrote events.
    pub fn with_notifier(self, notifier: OutboxNotifier) -> Self {
        Self {
            notifier: Some(notifier),
            ..self
        }
    }

    /// The underlying event store.
    pub fn event_store(&self) -> &PgEventStore<Agent> {
        &self.store
    }

    /// Runs `command` on `agent_id`; `metadata` (actor, correlation id...) is
    /// stored with every resulting event. Returns the committed events (empty
    /// when the command was already satisfied). A conflict with a concurrent
    /// writer is retried a few times on fresh state before it is returned.
    pub async fn execute(
        &self,
        agent_id: &str,
        command: AgentCommand,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<Agent>>, CommandError> {
        let (mut committed, refused) = self
            .execute_all(agent_id, std::slice::from_ref(&command), metadata)
            .await?;
        match refused {
            Some(err) => Err(CommandError::Rejected(err)),
            None => Ok(committed.pop().unwrap_or_default()),
        }
    }

    /// Runs `commands` on `agent_id` one after the other and commits all
    /// their events in one transaction (one round trip, one WAL flush: a
    /// supervisor reports an exit and the replacement's start together).
    /// Stops at the first command the aggregate refuses: the events of the
    /// commands before it are committed, and the refusal is returned beside
    /// them (the commands after it are not tried). Returns the committed
    /// events of each accepted command, in order.
    pub async fn execute_all(
        &self,
        agent_id: &str,
        commands: &[AgentCommand],
        metadata: HashMap<String, String>,
    ) -> Result<(Vec<Vec<EventEnvelope<Agent>>>, Option<AgentError>), CommandError> {
        for _ in 0..STALE_RETRIES {
            match self
                .execute_once_all(agent_id, commands, metadata.clone())
                .await
            {
                Err(CommandError::Conflict) => continue,
                other => return other,
            }
        }
        self.execute_once_all(agent_id, commands, metadata).await
    }

    async fn execute_once_all(
        &self,
        agent_id: &str,
        commands: &[AgentCommand],
        metadata: HashMap<String, String>,
    ) -> Result<(Vec<Vec<EventEnvelope<Agent>>>, Option<AgentError>), CommandError> {
        let (mut context, from_cache) = self.context(agent_id).await?;
        let (mut events, mut counts, mut refused) = (Vec::new(), Vec::new(), None);
        for command in commands {
            // `handle` may apply part of its events before it refuses: keep
            // the state after the accepted commands to go back to.
            let before = (!counts.is_empty()).then(|| context.aggregate.clone());
            let sink = EventSink::<Agent>::default();
            if let Err(err) = context.aggregate.handle(command.clone(), &(), &sink).await {
                if from_cache {
                    // Another process may have moved the agent on since it
                    // was cached: decide again on the stored state.
                    self.forget(agent_id);
                    return Err(CommandError::Conflict);
                }
                match before {
                    Some(state) => context.aggregate = state,
                    None => self.forget(agent_id),
                }
                refused = Some(err);
                break;
            }
            let emitted = sink.collect().await;
            counts.push(emitted.len());
            events.extend(emitted);
        }
        if events.is_empty() {
            return Ok((counts.iter().map(|_| Vec::new()).collect(), refused));
        }
        // The sinks applied the events: `context.aggregate` is the new state.
        let (last, next) = (
            context.current_sequence,
            context.current_sequence + events.len(),
        );
        let snapshot = match self.store.snapshots_between(last, next) {
            true => Some(context.current_snapshot.unwrap_or(0) + 1),
            false => context.current_snapshot,
        };
        let after = Cached {
            agent: context.aggregate.clone(),
            sequence: next,
            snapshot,
        };
        match self.store.commit(events, context, metadata).await {
            Ok(committed) => {
                self.remember(agent_id, after);
                if let Some(n) = &self.notifier {
                    n.poke();
                }
                let mut committed = committed.into_iter();
                let split = counts
                    .iter()
                    .map(|&n| committed.by_ref().take(n).collect())
                    .collect();
                Ok((split, refused))
            }
            Err(err) => {
                self.forget(agent_id);
                Err(err.into())
            }
        }
    }

    /// The agent to decide on, and whether it came from the cache (and so
    /// may be stale).
    async fn context(
        &self,
        agent_id: &str,
    ) -> Result<(EventStoreAggregateContext<Agent>, bool), CommandError> {
        if let Some(cache) = &self.cache
            && let Some(c) = lock(cache).get(agent_id)
        {
            let context = EventStoreAggregateContext {
                aggregate_id: agent_id.to_string(),
                aggregate: c.agent.clone(),
                current_sequence: c.sequence,
                current_snapshot: c.snapshot,
            };
            return Ok((context, true));
        }
        Ok((self.store.load_aggregate(agent_id).await?, false))
    }

    fn remember(&self, agent_id: &str, entry: Cached) {
        if let Some(cache) = &self.cache {
            lock(cache).put(agent_id.to_string(), entry);
        }
    }

    fn forget(&self, agent_id: &str) {
        if let Some(cache) = &self.cache {
            lock(cache).pop(agent_id);
        }
    }

    /// Like [`AgentStore::execute`], with more attempts on conflict (for
    /// facts that must land, such as a supervisor's reports).
    pub async fn execute_with_retry(
        &self,
        agent_id: &str,
        command: AgentCommand,
        metadata: HashMap<String, String>,
        attempts: usize,
    ) -> Result<Vec<EventEnvelope<Agent>>, CommandError> {
        let mut last = CommandError::Conflict;
        for _ in 0..attempts.max(1) {
            match self
                .execute(agent_id, command.clone(), metadata.clone())
                .await
            {
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

    /// Ids of every agent ever registered (deregistered ones included).
    pub async fn agent_ids(&self) -> Result<Vec<String>, CommandError> {
        sqlx::query_scalar(
            "select aggregate_id from events where aggregate_type = 'Agent' and sequence = 1 \
             order by aggregate_id",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| CommandError::Unavailable(e.to_string()))
    }

    /// The agent as this store last saw it (its cache; no database read).
    /// It may be stale if another process wrote since: good for guesses that
    /// a later command will confirm or refuse.
    pub fn cached(&self, agent_id: &str) -> Option<(Agent, usize)> {
        let cache = self.cache.as_ref()?;
        let mut cache = lock(cache);
        cache.get(agent_id).map(|c| (c.agent.clone(), c.sequence))
    }

    /// The agent's current state (snapshot + tail).
    pub async fn load(&self, agent_id: &str) -> Result<(Agent, usize), CommandError> {
        let context = self.store.load_aggregate(agent_id).await?;
        Ok((context.aggregate, context.current_sequence))
    }
}
