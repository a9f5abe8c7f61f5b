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
        let tag = token(tag);
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
            duplicate_window: self.duplicate_window,
            ..file_stream(
                &self.name,
                &self.subject_prefix,
                self.replicas,
                self.max_age,
            )
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

/// `tag` made fit for stream names and subject tokens.
fn token(tag: &str) -> String {
    tag.replace(['.', '-', ' ', '*', '>'], "_")
}

/// A file-backed stream of the subjects under `prefix`.
fn file_stream(name: &str, prefix: &str, replicas: usize, max_age: Duration) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        num_replicas: replicas,
        max_age,
        storage: stream::StorageType::File,
        ..Default::default()
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

/// Settings of the telemetry streams `OPMAS_METRICS` and `OPMAS_LOGS`
/// (filled by supervisors, read by projections). Age- and size-limited: the
/// read models keep what must last.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// Metrics stream name (`OPMAS_METRICS`).
    pub metrics_stream: String,
    /// Metrics subject prefix: samples go to `<prefix>.<agent_id>`.
    pub metrics_prefix: String,
    /// Logs stream name (`OPMAS_LOGS`).
    pub logs_stream: String,
    /// Logs subject prefix: lines go to `<prefix>.<agent_id>.<level>`.
    pub logs_prefix: String,
    /// Max age of both streams.
    pub max_age: Duration,
    /// Max bytes of the logs stream (-1: unlimited).
    pub logs_max_bytes: i64,
    /// Replicas.
    pub replicas: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics_stream: "OPMAS_METRICS".into(),
            metrics_prefix: "opmas.metrics".into(),
            logs_stream: "OPMAS_LOGS".into(),
            logs_prefix: "opmas.logs".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            logs_max_bytes: 1024 * 1024 * 1024,
            replicas: 1,
        }
    }
}

impl TelemetrySettings {
    /// Settings with distinct names and prefixes, e.g. for one test.
    pub fn isolated(tag: &str) -> Self {
        let tag = token(tag);
        Self {
            metrics_stream: format!("OPMAS_METRICS_{}", tag.to_uppercase()),
            metrics_prefix: format!("opmas_{tag}.metrics"),
            logs_stream: format!("OPMAS_LOGS_{}", tag.to_uppercase()),
            logs_prefix: format!("opmas_{tag}.logs"),
            // JetStream reserves max_bytes up front: keep test streams small.
            logs_max_bytes: 64 * 1024 * 1024,
            ..Self::default()
        }
    }

    /// Subject of one metric sample.
    pub fn metrics_subject(&self, agent_id: &str) -> String {
        format!("{}.{agent_id}", self.metrics_prefix)
    }

    /// Subject of one log line.
    pub fn logs_subject(&self, agent_id: &str, level: &str) -> String {
        format!("{}.{agent_id}.{level}", self.logs_prefix)
    }

    /// Creates or updates both streams.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), Error> {
        for (name, prefix, max_bytes) in [
            (&self.metrics_stream, &self.metrics_prefix, -1),
            (&self.logs_stream, &self.logs_prefix, self.logs_max_bytes),
        ] {
            js.create_or_update_stream(stream::Config {
                max_bytes,
                ..file_stream(name, prefix, self.replicas, self.max_age)
            })
            .await
            .map_err(Error::nats)?;
        }
        Ok(())
    }
}

/// Settings of the `OPMAS_PACKAGES` stream: what package discovery reports
/// (`PackageInvalid` on `<prefix>.invalid`, `PackageValid` on
/// `<prefix>.valid`; docs/packages.md). Age-limited: the scan report and
/// the next start of discovery tell the current state again.
#[derive(Debug, Clone)]
pub struct PackageEventSettings {
    /// Stream name (`OPMAS_PACKAGES`).
    pub name: String,
    /// Subject prefix (`opmas.packages`).
    pub subject_prefix: String,
    /// Max age of messages.
    pub max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// Replicas.
    pub replicas: usize,
}

impl Default for PackageEventSettings {
    fn default() -> Self {
        Self {
            name: "OPMAS_PACKAGES".into(),
            subject_prefix: "opmas.packages".into(),
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

impl PackageEventSettings {
    /// Settings with a distinct name and prefix, e.g. for one test.
    pub fn isolated(tag: &str) -> Self {
        let tag = token(tag);
        Self {
            name: format!("OPMAS_PACKAGES_{}", tag.to_uppercase()),
            subject_prefix: format!("opmas_{tag}.packages"),
            ..Self::default()
        }
    }

    /// Subject of a message of `kind` (`invalid`, `valid`).
    pub fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.subject_prefix)
    }

    /// Creates the stream, or updates it to these settings.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), Error> {
        js.create_or_update_stream(stream::Config {
            duplicate_window: self.duplicate_window,
            ..file_stream(
                &self.name,
                &self.subject_prefix,
                self.replicas,
                self.max_age,
            )
        })
        .await
        .map_err(Error::nats)?;
        Ok(())
    }
}
