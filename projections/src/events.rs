//! The events projector: `OPMAS_EVENTS` → the event-sourced read models.
//!
//! Per batch, in one transaction: the agents' rows in `agent_status` are
//! locked (`for update`) and their folded state and checkpoint
//! (`last_sequence`) read; each event is then
//! - skipped if its sequence is at or below the checkpoint (a redelivery or
//!   a repair re-publication: read models unchanged);
//! - applied if it is the next one;
//! - if it is further ahead (a gap: a message lost or published out of
//!   order), the missing events are first loaded from the Postgres event
//!   store (the durable truth) and applied, so an agent's events are always
//!   applied in order and none is skipped.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use opmas_domain::Agent;
use sqlx::{PgConnection, Row};
use tracing::{debug, warn};

use crate::Error;
use crate::consumer::Sink;
use crate::envelope::{Envelope, load_range};
use crate::fold::Batch;
use crate::write::{Tables, write};

/// Writes `OPMAS_EVENTS` messages into the live read models.
#[derive(Debug, Clone, Default)]
pub struct EventsSink;

impl Sink for EventsSink {
    async fn write(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
        _after: u64,
    ) -> Result<(), Error> {
        let mut envelopes = Vec::with_capacity(messages.len());
        for msg in messages {
            match Envelope::from_message(&msg.payload) {
                Ok(env) => envelopes.push(env),
                // The next event of that agent fills the gap from Postgres.
                Err(err) => {
                    warn!(subject = %msg.subject, error = %err, "undecodable event skipped")
                }
            }
        }
        project(conn, &envelopes).await
    }
}

/// Applies `envelopes` (in order) to the live read models, inside the
/// caller's transaction, with the per-agent checkpoint rules above.
pub async fn project(conn: &mut PgConnection, envelopes: &[Envelope]) -> Result<(), Error> {
    let mut agents: Vec<&str> = envelopes.iter().map(|e| e.agent_id.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    let mut states = load_states(conn, &agents).await?;
    let mut batch = Batch::default();
    for env in envelopes {
        let (checkpoint, agent) = states
            .entry(env.agent_id.clone())
            .or_insert_with(|| (0, Agent::default()));
        if env.sequence <= *checkpoint {
            debug!(agent_id = %env.agent_id, sequence = env.sequence, "duplicate event ignored");
            continue;
        }
        if env.sequence > *checkpoint + 1 {
            let missing = load_range(conn, &env.agent_id, *checkpoint, env.sequence).await?;
            if missing.len() as i64 != env.sequence - *checkpoint - 1 {
                warn!(agent_id = %env.agent_id, sequence = env.sequence, checkpoint = *checkpoint,
                      "event store lacks events before this one; not applied");
                continue;
            }
            debug!(agent_id = %env.agent_id, filled = missing.len(), "gap filled from the event store");
            for m in &missing {
                batch.apply(agent, m);
            }
        }
        batch.apply(agent, env);
        *checkpoint = env.sequence;
    }
    write(conn, &Tables::live(), batch).await
}

/// Locks and reads the agents' checkpoint and folded state. A state that no
/// longer decodes (the `Agent` layout changed) is folded again from the
/// event store.
async fn load_states(
    conn: &mut PgConnection,
    agents: &[&str],
) -> Result<HashMap<String, (i64, Agent)>, Error> {
    let rows = sqlx::query(
        "select agent_id, last_sequence, state from agent_status \
         where agent_id = any($1) order by agent_id for update",
    )
    .bind(agents)
    .fetch_all(&mut *conn)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        let agent_id: String = row.try_get("agent_id")?;
        let sequence: i64 = row.try_get("last_sequence")?;
        let state: serde_json::Value = row.try_get("state")?;
        let agent = match serde_json::from_value::<Agent>(state) {
            Ok(agent) => agent,
            Err(err) => {
                warn!(agent_id = %agent_id, error = %err, "stored state unreadable; refolding");
                refold(conn, &agent_id, sequence).await?
            }
        };
        states.insert(agent_id, (sequence, agent));
    }
    Ok(states)
}

async fn refold(conn: &mut PgConnection, agent_id: &str, upto: i64) -> Result<Agent, Error> {
    let mut agent = Agent::default();
    for env in load_range(conn, agent_id, 0, upto + 1).await? {
        cqrs_es::Aggregate::apply(&mut agent, env.event);
    }
    Ok(agent)
}
