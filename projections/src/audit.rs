//! Audit and time travel: an agent's events with actor and reason, and its
//! state as of any past instant (folded from the event store with the
//! domain's `Agent::apply`).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use opmas_domain::Agent;
use serde::Serialize;
use sqlx::PgPool;

use crate::Error;
use crate::envelope::{COLUMNS, Envelope};

/// An agent's events committed in `[since, until)` (either bound optional),
/// upcast, in sequence order.
pub async fn events(
    pool: &PgPool,
    agent_id: &str,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Envelope>, Error> {
    let sql = format!(
        "select {COLUMNS} from events e where e.aggregate_type = 'Agent' and e.aggregate_id = $1 \
         and ($2::timestamptz is null or e.recorded_at >= $2) \
         and ($3::timestamptz is null or e.recorded_at < $3) order by e.sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(agent_id)
        .bind(since)
        .bind(until)
        .fetch_all(pool)
        .await?;
    rows.iter().map(Envelope::from_row).collect()
}

/// An agent's state at an instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsOf {
    pub agent: Agent,
    /// The last event applied (0: none yet).
    pub sequence: i64,
    /// When that event was committed.
    pub last_event_at: Option<DateTime<Utc>>,
}

/// The agent's state as of `at`: every event committed at or before `at`,
/// folded. [`Error::NotFound`] if the agent has no event at all.
pub async fn state_as_of(pool: &PgPool, agent_id: &str, at: DateTime<Utc>) -> Result<AsOf, Error> {
    let exists: bool = sqlx::query_scalar(
        "select exists(select 1 from events where aggregate_type = 'Agent' and aggregate_id = $1)",
    )
    .bind(agent_id)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Err(Error::NotFound(format!("agent `{agent_id}` has no events")));
    }
    let until = at + chrono::Duration::microseconds(1);
    let mut state = AsOf {
        agent: Agent::default(),
        sequence: 0,
        last_event_at: None,
    };
    for env in events(pool, agent_id, None, Some(until)).await? {
        state.sequence = env.sequence;
        state.last_event_at = Some(env.recorded_at);
        state.agent.apply(env.event);
    }
    Ok(state)
}
