//! [`Envelope`]: one committed event as the projectors see it, decoded (and
//! upcast) from an `OPMAS_EVENTS` message or an `events` row.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use opmas_domain::AgentEvent;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::Error;

/// A committed event of one agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Envelope {
    pub agent_id: String,
    /// Per-agent sequence (1, 2, ...).
    pub sequence: i64,
    pub event: AgentEvent,
    /// The metadata map (`actor`, `correlation_id`, optional `reason`...).
    pub metadata: Value,
    /// When the event store committed it.
    pub recorded_at: DateTime<Utc>,
}

/// The columns [`Envelope::from_row`] reads, for `select` lists.
pub const COLUMNS: &str = "e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at";

fn upcasters() -> &'static [Box<dyn EventUpcaster>] {
    static UPCASTERS: OnceLock<Vec<Box<dyn EventUpcaster>>> = OnceLock::new();
    UPCASTERS.get_or_init(opmas_domain::upcasters)
}

impl Envelope {
    /// Decodes and upcasts one stored event.
    pub fn decode(
        agent_id: String,
        sequence: i64,
        event_type: String,
        event_version: String,
        payload: Value,
        metadata: Value,
        recorded_at: DateTime<Utc>,
    ) -> Result<Self, Error> {
        let mut serialized = SerializedEvent::new(
            agent_id.clone(),
            usize::try_from(sequence).unwrap_or_default(),
            "Agent".to_owned(),
            event_type,
            event_version,
            payload,
            Value::Null,
        );
        for upcaster in upcasters() {
            if upcaster.can_upcast(&serialized.event_type, &serialized.event_version) {
                serialized = upcaster.upcast(serialized);
            }
        }
        let event = serde_json::from_value(serialized.payload)
            .map_err(|e| Error::corrupt(format!("event {agent_id}:{sequence}: {e}")))?;
        Ok(Self {
            agent_id,
            sequence,
            event,
            metadata,
            recorded_at,
        })
    }

    /// Decodes a row selected with [`COLUMNS`].
    pub fn from_row(row: &PgRow) -> Result<Self, Error> {
        Self::decode(
            row.try_get("aggregate_id")?,
            row.try_get("sequence")?,
            row.try_get("event_type")?,
            row.try_get("event_version")?,
            row.try_get("payload")?,
            row.try_get("metadata")?,
            row.try_get("recorded_at")?,
        )
    }

    /// Decodes an `OPMAS_EVENTS` message body (docs/events.md).
    pub fn from_message(body: &[u8]) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        struct Body {
            aggregate_id: String,
            sequence: i64,
            event_type: String,
            event_version: String,
            payload: Value,
            metadata: Value,
            recorded_at: DateTime<Utc>,
        }
        let b: Body = serde_json::from_slice(body).map_err(Error::corrupt)?;
        Self::decode(
            b.aggregate_id,
            b.sequence,
            b.event_type,
            b.event_version,
            b.payload,
            b.metadata,
            b.recorded_at,
        )
    }

    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// Who caused the event (`unknown` if the metadata has no actor).
    pub fn actor(&self) -> &str {
        self.meta("actor").unwrap_or("unknown")
    }

    /// The `reason` the command's caller gave, if any.
    pub fn reason(&self) -> Option<&str> {
        self.meta("reason")
    }

    /// The request that caused it.
    pub fn correlation_id(&self) -> Option<&str> {
        self.meta("correlation_id")
    }
}

/// Loads an agent's events with `after < sequence < before`, upcast, in order.
pub async fn load_range(
    conn: &mut sqlx::PgConnection,
    agent_id: &str,
    after: i64,
    before: i64,
) -> Result<Vec<Envelope>, Error> {
    let sql = format!(
        "select {COLUMNS} from events e where e.aggregate_type = 'Agent' \
         and e.aggregate_id = $1 and e.sequence > $2 and e.sequence < $3 order by e.sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(agent_id)
        .bind(after)
        .bind(before)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(Envelope::from_row).collect()
}
