//! Agent packages: a directory with an `agent.toml` manifest (and
//! optional `config/base.toml`, `config/<environment>.toml`, a JSON Schema
//! for the agent's config) that OPMAS discovers and registers as one or more
//! agents. The format is documented in `docs/packages.md`.
//!
//! # Layout
//! - [`manifest`]: the `agent.toml` format (serde types, durations, sizes).
//! - [`package`]: [`Package::load`]: read, confine, check, build specs.
//! - `build`: manifest → [`opmas_domain::AgentSpec`] with manifest-level checks.
//! - [`paths`]: confinement of paths to the package directory.
//! - [`config`]: the layered agent config, validated against its schema.
//! - [`order`]: start order from `requires`, cycles refused.
//! - [`discovery`]: [`Discovery`], the service that scans and watches roots
//!   (`find.rs`: the filesystem side, `plan.rs`: what to do per agent,
//!   `scan.rs`: the event-store side, `watch.rs`: which file changes matter).
//! - [`report`]: [`ScanReport`], what a scan found and did.
//! - [`error`]: [`Invalid`] (file, line, field, why), [`Cycle`], [`Error`].
//! - `spans`: byte spans of TOML fields as line numbers.

mod build;
pub mod config;
pub mod discovery;
pub mod error;
pub mod manifest;
pub mod order;
pub mod package;
pub mod paths;
pub mod report;
mod spans;

pub use discovery::Discovery;
pub use error::{Cycle, Error, Invalid};
pub use order::start_order;
pub use package::{Context, MANIFEST, Package};
pub use report::ScanReport;
