//! Read models built from the event log and the telemetry streams, the
//! projector service that keeps them current, `opmas replay` (rebuild and
//! atomic swap, with a checksum proof) and audit / time travel.
//!
//! Event-sourced models (`agent_status`, `agent_status_history`,
//! `agent_recovery_attempts`, `agent_errors`, `agent_error_groups`,
//! `agent_configs`) fold events with the domain's own `Agent::apply` and
//! share one checkpoint per agent (`agent_status.last_sequence`), written in
//! the same transaction as the rows: a redelivered event changes nothing, a
//! gap is filled from the Postgres event store. Telemetry models
//! (`agent_metric_samples`, `agent_metric_rollups`, `agent_logs`) are
//! checkpointed by stream sequence. See docs/projections.md.
//!
//! # Layout
//! - [`envelope`]: [`Envelope`], an event decoded and upcast from a stream
//!   message or an `events` row.
//! - [`rows`], [`fold`]: the rows each event causes ([`fold::Batch`]); pure.
//! - [`diff`]: config diffs and error fingerprints; pure.
//! - [`write`]: writes a batch into the live or the rebuild tables.
//! - [`consumer`]: the durable JetStream consumer loop, checkpoints, [`Lag`].
//! - [`events`]: the events sink (per-agent checkpoints, gap filling).
//! - [`telemetry`]: the metrics and logs sinks.
//! - [`maintenance`]: rollups and retention.
//! - [`search`]: log search and metric series queries.
//! - [`replay`], [`checksum`]: rebuild + swap; rebuilt-equals-live proof.
//! - [`audit`]: events of an agent with actor/reason; state as of an instant.
//! - [`service`]: [`Projector`], the role (`Config` + `run(cancel)`).
//! - [`error`]: the crate's [`Error`].

pub mod audit;
pub mod checksum;
pub mod consumer;
pub mod diff;
pub mod envelope;
pub mod error;
pub mod events;
pub mod fold;
pub mod maintenance;
pub mod replay;
pub mod rows;
pub mod search;
pub mod service;
pub mod telemetry;
pub mod write;

pub use consumer::{ConsumerLag, Lag};
pub use envelope::Envelope;
pub use error::Error;
pub use maintenance::Retention;
pub use service::{Config, Projector};
