//! JetStream side of the event log: stream settings, subjects, message ids.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::Error;

/// Settings of the `OPMAS_EVENTS` stream. Tests use their own name and prefix
/// so that they can share one nats-server.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Stream name (`OPMAS_EVENTS`).
    pub name: String,
    /// Subject prefix; events go to `<prefix>.agent.<agent_id>.<EventType>`.
    pub subject_prefix: String,
    /// Replicas (1 on one node, 3 in a cluster).
    pub replicas: usize,
    /// Max age of messages; zero keeps them forever (Postgres holds all anyway).
    pub max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "OPMAS_EVENTS".into(),
            subject_prefix: "opmas.events".into(),
            replicas: 1,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl StreamSettings {
    /// Settings with a distinct name and prefix, e.g. for one test.
    pub fn isolated(tag: &str) -> Self {
        let tag = tag.replace(['.', '-', ' ', '*', '>'], "_");
        Self {
            name: format!("OPMAS_EVENTS_{}", tag.to_uppercase()),
            subject_prefix: format!("opmas_{tag}.events"),
            ..Self::default()
        }
    }

    /// Subject of one event.
    pub fn subject(&self, agent_id: &str, event_type: &str) -> String {
        format!("{}.agent.{agent_id}.{event_type}", self.subject_prefix)
    }

    /// Subject filter matching every event of one agent.
    pub fn agent_filter(&self, agent_id: &str) -> String {
        format!("{}.agent.{agent_id}.>", self.subject_prefix)
    }

    /// The stream configuration; `create_or_update` makes this idempotent.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Creates the stream, or updates it to these settings.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<stream::Stream, Error> {
        js.create_or_update_stream(self.config())
            .await
            .map_err(Error::nats)?;
        js.get_stream(&self.name).await.map_err(Error::nats)
    }
}

/// `Nats-Msg-Id` of an event: `<agent_id>:<sequence>` (dedupe key).
pub fn message_id(agent_id: &str, sequence: i64) -> String {
    format!("{agent_id}:{sequence}")
}

/// Header names carried by every event message (besides `Nats-Msg-Id`).
pub mod headers {
    /// The agent (aggregate) id.
    pub const AGENT_ID: &str = "Opmas-Agent-Id";
    /// The event's per-agent sequence.
    pub const SEQUENCE: &str = "Opmas-Sequence";
    /// The event type (also the last subject token).
    pub const EVENT_TYPE: &str = "Opmas-Event-Type";
    /// The event's schema version.
    pub const EVENT_VERSION: &str = "Opmas-Event-Version";
}
