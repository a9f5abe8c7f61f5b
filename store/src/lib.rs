//! The write side's durable parts: the Postgres event store (with snapshots,
//! so history length does not slow commands), the command executor for the
//! `Agent` aggregate, the transactional outbox relay that publishes every
//! committed event to JetStream exactly once, and the audit check that
//! compares the two.
//!
//! # Layout
//! - [`db`]: pool and migrations (`migrations/` at the workspace root).
//! - [`event_store`]: [`PgEventStore`], a `cqrs_es::EventStore`: one query to
//!   load (snapshot + tail), one statement to commit (events + snapshot).
//! - [`group_commit`]: concurrent commits in one statement.
//! - [`commands`]: [`AgentStore`], runs a command against the aggregate.
//! - [`stream`]: JetStream stream settings, subjects and message ids.
//! - [`notify`]: [`OutboxNotifier`], wakes relays after commits.
//! - [`relay`]: [`Relay`], outbox → `OPMAS_EVENTS`.
//! - [`verify`]: `opmas events verify`: store vs stream, and repair.
//! - [`error`]: the crate's [`Error`] type.

pub mod commands;
pub mod db;
pub mod error;
pub mod event_store;
pub mod group_commit;
pub mod leader;
pub mod notify;
pub mod relay;
pub mod stream;
pub mod verify;

pub use commands::{AgentStore, CommandError};
pub use error::Error;
pub use event_store::PgEventStore;
pub use notify::OutboxNotifier;
pub use relay::{Relay, RelayConfig};
pub use stream::{PackageEventSettings, StreamSettings, TelemetrySettings};
